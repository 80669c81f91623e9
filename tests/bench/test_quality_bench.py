"""bench/quality.py and bench/corpora.py on tiny fixture data: no network, no training.

The table, the JSON and the parsers the bench relies on are checked here; the bench's
numbers themselves come from ``make bench`` (bench/results/quality.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import corpora  # noqa: E402
import quality  # noqa: E402

CLASSIFICATION_REPORT = {
    "task": "text-classification",
    "sealed_rows": 200,
    "metrics": {"accuracy": 0.9, "macro_f1": 0.88},
    "intervals": {"accuracy": [0.85, 0.94], "macro_f1": [0.8, 0.9]},
    "baselines": {
        "majority_class": {"accuracy": 0.6, "macro_f1": 0.37, "label": "ham"},
        "generalist_zero_shot": {
            "accuracy": 0.7,
            "macro_f1": 0.6,
            "method": "embedding_cosine_to_label_names",
        },
    },
}


def _record(report: dict, bench_baselines: dict) -> dict:
    return quality.summarise(
        corpus="tiny",
        task=report["task"],
        report=report,
        train_rows=800,
        train_seconds=12.34,
        wall_seconds=15.0,
        hyperparameters={"learning_rate": 0.001},
        bench_baselines=bench_baselines,
        load_average=[1.0, 2.0, 3.0],
    )


def test_wilson_interval_matches_the_textbook_value():
    assert quality.wilson_interval(50, 100) == [0.4038, 0.5962]
    assert quality.wilson_interval(0, 0) == [0.0, 1.0]
    low, high = quality.wilson_interval(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17


def test_summary_uses_report_intervals_and_the_bench_classic_when_the_report_has_none():
    classic = {
        "classic": {"score": 0.8, "interval": [0.74, 0.85], "method": "tfidf", "source": "bench"}
    }
    record = _record(CLASSIFICATION_REPORT, classic)
    assert record["default_job"] == {"score": 0.9, "interval": [0.85, 0.94]}
    assert record["lift_over_classic"] == pytest.approx(0.1)
    assert record["baselines"]["classic"]["source"] == "bench"
    majority = record["baselines"]["majority_class"]
    assert majority["score"] == 0.6
    assert majority["interval"] == quality.wilson_interval(120, 200)  # no interval in report


def test_summary_prefers_the_report_classic_over_the_bench_one():
    report = json.loads(json.dumps(CLASSIFICATION_REPORT))
    report["baselines"]["classic"] = {"accuracy": 0.95, "interval": [0.9, 0.98], "method": "x"}
    bench = {"classic": {"score": 0.1, "interval": [0.0, 0.2], "method": "y", "source": "bench"}}
    record = _record(report, bench)
    assert record["baselines"]["classic"]["score"] == 0.95
    assert record["lift_over_classic"] == pytest.approx(-0.05)


REPORT_V2 = {
    "version": 2,
    "task": "text-classification",
    "sealed_rows": 500,
    "metrics": {"accuracy": 0.9, "macro_f1": 0.88},
    "intervals": {"accuracy": [0.87, 0.93]},
    "baselines": {
        "majority_class": {
            "value": 0.6,
            "accuracy": 0.6,
            "ci_low": 0.56,
            "ci_high": 0.64,
            "rows": 500,
            "method": "always ham",
            "lift": None,
        },
        "generalist_embedding_zero_shot": {
            "value": 0.7,
            "ci_low": 0.66,
            "ci_high": 0.74,
            "rows": 500,
            "method": "embedding cosine",
        },
        "classic_tfidf_logreg": {
            "value": 0.85,
            "ci_low": 0.82,
            "ci_high": 0.88,
            "rows": 500,
            "method": "tfidf",
            "lift": {"delta": 0.05, "ci_low": 0.01},
        },
        "generalist_llm_zero_shot": {
            "value": 0.55,
            "ci_low": 0.48,
            "ci_high": 0.62,
            "rows": 200,
            "method": "SmolLM2 likelihood",
        },
    },
    "skipped_baselines": [],
}


def test_summary_reads_a_version_2_report():
    record = _record(REPORT_V2, {})
    baselines = record["baselines"]
    assert baselines["classic_tfidf_logreg"]["interval"] == [0.82, 0.88]
    assert baselines["classic_tfidf_logreg"]["lift"]["delta"] == 0.05
    assert baselines["generalist_llm_zero_shot"]["rows"] == 200
    assert record["lift_over_classic"] == pytest.approx(0.05)
    assert record["strongest_baseline"] == "classic_tfidf_logreg"
    row = quality.format_table([record]).splitlines()[2]
    assert "0.850 [0.820,0.880]" in row and "0.550 [0.480,0.620]" in row
    assert "0.700 [0.660,0.740]" in row and "0.600 [0.560,0.640]" in row


def test_a_blended_job_shows_its_weight_and_the_adapter_alone_beside_the_served_score():
    blended = {
        **REPORT_V2,
        "blend": {
            "weight": 0.25,
            "adapter_alone": {"accuracy": 0.636, "ci_low": 0.596, "ci_high": 0.676},
        },
    }
    record = _record(blended, {})
    assert record["blend_weight"] == 0.25
    assert record["adapter_alone"] == {"score": 0.636, "interval": [0.596, 0.676]}
    assert record["lift_over_classic"] == pytest.approx(0.05)  # the served blend's lift
    row = quality.format_table([record]).splitlines()[2]
    assert "0.900 [0.870,0.930]    0.25 0.636 [0.596,0.676]" in row

    alone = _record({**REPORT_V2, "blend": {"weight": 1.0, "reason": "x"}}, {})
    assert alone["adapter_alone"] is None
    assert " 1.00 -  " in quality.format_table([alone]).splitlines()[2]


def test_table_and_json_carry_every_column(tmp_path):
    classic = {
        "classic": {"score": 0.8, "interval": [0.74, 0.85], "method": "t", "source": "bench"}
    }
    generation = {
        "task": "text-generation",
        "sealed_rows": 50,
        "metrics": {"exact_match": 0.4, "base_exact_match": 0.0},
    }
    records = [_record(CLASSIFICATION_REPORT, classic), _record(generation, {})]
    table = quality.format_table(records)
    row = next(
        line for line in table.splitlines() if line.startswith("tiny") and "accuracy" in line
    )
    assert "0.900 [0.850,0.940]" in row  # default job
    assert "0.800 [0.740,0.850]" in row  # classic
    assert "0.700 [" in row  # embedding generalist
    assert "0.600 [" in row  # majority
    assert "+0.100" in row and "12.3" in row
    gen_row = next(line for line in table.splitlines() if "exact_match" in line)
    assert "0.400 [" in gen_row and "0.000 [" in gen_row  # adapter vs un-adapted base
    assert "beats classic on 1/1 corpora, mean lift +10.00 points" in table

    path = tmp_path / "quality.json"
    quality.write_results(records, path, {"quick": True})
    written = json.loads(path.read_text())
    assert written["meta"] == {"quick": True}
    assert [r["task"] for r in written["corpora"]] == ["text-classification", "text-generation"]


def test_runs_of_one_corpus_on_other_splits_count_once_by_their_mean_lift():
    def run(corpus: str, split: int, lift: float) -> dict:
        score = 0.8 + lift
        report = CLASSIFICATION_REPORT | {"metrics": {"accuracy": score, "macro_f1": score}}
        classic = {"classic": {"score": 0.8, "interval": [0.7, 0.9], "method": "t"}}
        return _record(report, classic) | {"corpus": corpus, "split_seed": split, "job_seed": 0}

    records = [run("a", 1, 0.04), run("a", 2, -0.02), run("b", 1, -0.01), run("b", 2, -0.01)]
    table = quality.format_table(records)
    # a: mean +1 point (beats), b: mean -1 point; together 0.00
    assert "beats classic on 1/2 corpora (mean over 2 runs each), mean lift +0.00 points" in table
    rows = [line.split() for line in table.splitlines() if line.startswith(("a ", "b "))]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("a", "1", "0"),
        ("a", "2", "0"),
        ("b", "1", "0"),
        ("b", "2", "0"),
    ]


def test_classic_baselines_learn_tiny_data():
    train = [{"text": f"great lovely {i}", "label": "pos"} for i in range(10)]
    train += [{"text": f"awful dreadful {i}", "label": "neg"} for i in range(10)]
    test = [{"text": "lovely great", "label": "pos"}, {"text": "dreadful", "label": "neg"}]
    assert quality.classic_classifier_predictions(train, test) == ["pos", "neg"]
    pairs = [{"prompt": "cat", "completion": "K AE T"}, {"prompt": "dog", "completion": "D AO G"}]
    test_prompts = [{"prompt": "cats"}, {"prompt": "dogs"}]
    assert quality.classic_retrieval_completions(pairs, test_prompts) == ["K AE T", "D AO G"]


def test_split_upload_validates_and_seals_disjoint_rows():
    rows = [
        {"text": f"row number {i} about {'cats' if i % 2 else 'dogs'}", "label": str(i % 2)}
        for i in range(40)
    ]
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    train, sealed, labels = quality.split_upload(raw, "tiny.jsonl", "text-classification", 8)
    assert labels == ["0", "1"]
    assert len(sealed) == 8 and len(train) == 32
    assert not {r["text"] for r in train} & {r["text"] for r in sealed}


def test_another_split_seed_seals_other_rows_of_the_same_size_and_balance():
    rows = [{"text": f"row {i}", "label": str(i % 2)} for i in range(80)]
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    _, sealed_default, _ = quality.split_upload(raw, "tiny.jsonl", "text-classification", 16)
    _, sealed_other, _ = quality.split_upload(
        raw, "tiny.jsonl", "text-classification", 16, split_seed=quality.SPLIT_SEED + 1
    )
    assert len(sealed_other) == len(sealed_default) == 16
    assert sorted(r["label"] for r in sealed_other) == sorted(r["label"] for r in sealed_default)
    assert {r["text"] for r in sealed_other} != {r["text"] for r in sealed_default}


def test_corpus_parsers_on_fixture_packages(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "words.json").write_text('[["good",3],["meh",0],["bad",-2]]')
    assert corpora._afinn_rows(tmp_path) == [
        {"text": "good", "label": "positive"},
        {"text": "bad", "label": "negative"},
    ]
    (data / "dict.txt").write_text("CAT  K AE1 T\nCAT(1)  K AA1 T\nA.  EY1\nDOG  D AO1 G\n")
    assert corpora._cmudict_rows(tmp_path) == [
        {"prompt": "cat", "completion": "K AE T"},
        {"prompt": "dog", "completion": "D AO G"},
    ]
    speech = {"year": 1990, "party": "Republican", "text": ("Word " * 30 + "end. ") * 3}
    (data / "1990_x_r.json").write_text(json.dumps(speech))
    old = {"year": 1850, "party": "Whig", "text": "Ignored. " * 20}
    (data / "1850_y_w.json").write_text(json.dumps(old))
    passages = corpora._sotu_rows(tmp_path)
    assert [p["label"] for p in passages] == ["republican"]  # 2 x 31 words, then a remainder
    assert len(passages[0]["text"].split()) >= 50


def test_email_text_keeps_subject_and_strips_html():
    raw = (
        "From: a@b.c\nSubject: Cheap pills\nContent-Type: text/html\n\n"
        "<html><style>p{}</style><p>Buy&nbsp;now</p></html>\n"
    )
    text = corpora._email_text(raw)
    assert text.startswith("Subject: Cheap pills\n")
    assert "Buy now" in text and "<p>" not in text and "p{}" not in text


def test_dedupe_keeps_one_exact_copy_and_drops_ambiguous_near_duplicates():
    rows = [
        {"text": "Hello, world", "label": "a"},
        {"text": "Hello, world", "label": "a"},
        {"text": "hello world!", "label": "a"},
        {"text": "Same text", "label": "a"},
        {"text": "same text", "label": "b"},
        {"text": "other", "label": "b"},
    ]
    assert corpora._dedupe(rows, "text") == [{"text": "other", "label": "b"}]


def test_merge_combines_parallel_result_files(tmp_path, monkeypatch, capsys):
    first, second, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "quality.json"
    quality.write_results([_record(REPORT_V2, {})], first, {"cpu_count": 2})
    quality.write_results([_record(CLASSIFICATION_REPORT, {})], second, {"cpu_count": 2})
    monkeypatch.setattr(
        sys, "argv", ["quality.py", "--merge", str(first), str(second), "--out", str(out)]
    )
    quality.main()
    merged = json.loads(out.read_text())
    assert len(merged["corpora"]) == 2 and len(merged["meta"]["runs"]) == 2
    assert "0.900 [0.870,0.930]" in capsys.readouterr().out
