"""Alice, an expert, uploads datasets; each test is one upload and what the report tells her."""

import json

import pytest

from training_worker.ml.dataset_validation import ValidationLimits, validate_dataset


def csv_upload(rows: list[tuple[str, str]], header: str = "text,label") -> bytes:
    lines = [header] + [f"{text},{label}" for text, label in rows]
    return ("\n".join(lines) + "\n").encode()


def jsonl_upload(objects: list[object]) -> bytes:
    return "".join(json.dumps(obj) + "\n" for obj in objects).encode()


def reviews(n_positive: int = 6, n_negative: int = 6) -> list[tuple[str, str]]:
    positive = [(f"great product {i}", "positive") for i in range(n_positive)]
    negative = [(f"awful product {i}", "negative") for i in range(n_negative)]
    return positive + negative


def codes(issues: list[dict]) -> list[str]:
    return [issue["code"] for issue in issues]


def test_good_csv_is_valid_and_normalised_with_spreadsheet_row_numbers():
    # given alice's CSV of 6 positive and 6 negative reviews
    upload = csv_upload(reviews())

    # when it is validated without saying the task
    result = validate_dataset(upload, filename="reviews.csv")

    # then the task is inferred and every row is usable, numbered as in a spreadsheet
    assert result.ok is True
    assert result.task == "text-classification"
    assert result.format == "csv"
    assert result.rows[0] == {"row": 2, "text": "great product 0", "label": "positive"}
    assert result.rows[-1] == {"row": 13, "text": "awful product 5", "label": "negative"}
    assert result.report == {
        "format": "csv",
        "task": "text-classification",
        "encoding": "utf-8",
        "rows_total": 12,
        "rows_usable": 12,
        "errors": [],
        "warnings": [],
        "label_distribution": {"negative": 6, "positive": 6},
        "length_chars": {"p50": 15, "p95": 15, "max": 15},
        "columns": ["text", "label"],
    }
    json.dumps(result.report)  # the report is stored as JSON


def test_csv_with_bom_quoted_commas_crlf_and_extra_column_is_read_with_a_warning():
    upload = (
        "\ufeffText,Label,source\r\n"
        + "".join(f'"hello, world {i}",greeting,web\r\n' for i in range(5))
        + "".join(f'"bye\nnow {i}",farewell,web\r\n' for i in range(5))
    ).encode()

    result = validate_dataset(upload, filename="greetings.csv")

    assert result.ok is True
    assert result.rows[0] == {"row": 2, "text": "hello, world 0", "label": "greeting"}
    # a quoted newline spans two lines, so the next record starts two lines further down
    assert result.rows[5] == {"row": 7, "text": "bye\nnow 0", "label": "farewell"}
    assert result.rows[6]["row"] == 9
    assert result.report["columns"] == ["text", "label", "source"]
    assert result.report["warnings"] == [
        {
            "code": "extra_columns",
            "message": "These columns are not used and were ignored: source.",
            "rows": [],
            "count": 0,
            "columns": ["source"],
        }
    ]


def test_good_jsonl_classification_converts_numeric_labels_to_strings():
    objects = [{"text": f"ticket {i}", "label": i % 2} for i in range(10)]

    result = validate_dataset(jsonl_upload(objects), filename="tickets.jsonl")

    assert result.ok is True
    assert result.task == "text-classification"
    assert result.format == "jsonl"
    assert result.rows[:2] == [
        {"row": 1, "text": "ticket 0", "label": "0"},
        {"row": 2, "text": "ticket 1", "label": "1"},
    ]
    assert result.report["label_distribution"] == {"0": 5, "1": 5}


def test_good_jsonl_prompt_completion_is_generation():
    objects = [{"prompt": f"Q{i}?", "completion": f"A{i}."} for i in range(5)]

    result = validate_dataset(jsonl_upload(objects), filename="qa.jsonl")

    assert result.ok is True
    assert result.task == "text-generation"
    assert result.rows[0] == {"row": 1, "prompt": "Q0?", "completion": "A0."}
    assert result.report["label_distribution"] is None
    assert result.report["length_chars"] == {"p50": 6, "p95": 6, "max": 6}


def test_chat_messages_become_prompt_and_last_assistant_completion():
    conversation = {
        "messages": [
            {"role": "system", "content": "You are a tax adviser."},
            {"role": "user", "content": "Is VAT due?"},
            {"role": "assistant", "content": "Which country?"},
            {"role": "user", "content": "France."},
            {"role": "assistant", "content": "Yes, at 20%."},
        ]
    }

    result = validate_dataset(jsonl_upload([conversation]), filename="chat.jsonl")

    assert result.task == "text-generation"
    assert result.rows == [
        {
            "row": 1,
            "prompt": "system: You are a tax adviser.\nuser: Is VAT due?\n"
            "assistant: Which country?\nuser: France.\nassistant:",
            "completion": "Yes, at 20%.",
        }
    ]
    assert result.report["columns"] == ["messages"]


def test_conversation_without_assistant_reply_is_an_empty_row():
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": "hello"},
            ]
        }
        for i in range(5)
    ] + [{"messages": [{"role": "user", "content": "anyone?"}]}]

    result = validate_dataset(jsonl_upload(chats), filename="chat.jsonl")

    assert result.ok is True
    assert len(result.rows) == 5
    assert result.report["warnings"][0]["code"] == "empty_rows"
    assert result.report["warnings"][0]["rows"] == [6]


def test_bad_utf8_reports_the_exact_byte_offset_and_line():
    # given a Latin-1 "é" (0xE9) on line 3, after a BOM
    upload = b"\xef\xbb\xbftext,label\ngood,a\ncaf\xe9,b\n"

    result = validate_dataset(upload, filename="latin1.csv")

    # 3 (BOM) + 11 ("text,label\n") + 7 ("good,a\n") + 3 ("caf") = 24
    assert result.ok is False
    assert result.report["errors"] == [
        {
            "code": "invalid_encoding",
            "message": "The file is not valid UTF-8: byte 24 (line 3) starts an invalid "
            "sequence. Save the file as UTF-8 and upload it again.",
            "rows": [3],
            "count": 1,
            "byte_offset": 24,
            "line": 3,
        }
    ]
    assert result.rows == []


def test_csv_missing_label_column_is_fatal_and_names_it():
    upload = b"text,category\nhello,a\n"

    result = validate_dataset(upload, filename="data.csv", task="text-classification")

    assert result.ok is False
    assert result.report["errors"] == [
        {
            "code": "missing_column",
            "message": 'The column "label" is required for text-classification.',
            "rows": [],
            "count": 0,
            "column": "label",
        }
    ]


def test_jsonl_rows_missing_a_key_are_listed():
    objects = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)] + [{"text": "x"}]

    result = validate_dataset(jsonl_upload(objects), filename="data.jsonl")

    assert codes(result.report["errors"]) == ["missing_column"]
    assert result.report["errors"][0]["rows"] == [11]
    assert result.report["errors"][0]["column"] == "label"


def test_label_with_a_single_row_cannot_be_sealed():
    upload = csv_upload([*reviews(), ("meh product", "neutral")])

    result = validate_dataset(upload, filename="reviews.csv")

    assert result.ok is False
    assert result.report["errors"] == [
        {
            "code": "label_too_rare",
            "message": "Each label needs at least 2 rows (one for training, one for the sealed "
            "test split); these have 1: neutral.",
            "rows": [14],
            "count": 1,
            "labels": ["neutral"],
        }
    ]


@pytest.mark.parametrize("upload", [b"", b"   \n\n", b"\xef\xbb\xbf"])
def test_empty_file_is_fatal(upload):
    result = validate_dataset(upload, filename="empty.csv")

    assert result.ok is False
    assert codes(result.report["errors"]) == ["empty_file"]
    assert result.report["rows_total"] == 0


def test_header_without_rows_is_an_empty_file():
    result = validate_dataset(b"text,label\n", filename="empty.csv")

    assert codes(result.report["errors"]) == ["empty_file"]
    assert result.report["errors"][0]["message"] == "The file has a header but no data rows."


def test_malformed_json_line_is_fatal_with_its_line_number():
    objects = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)]
    lines = jsonl_upload(objects).decode().splitlines()
    lines.insert(3, '{"text": "broken", "label": ')
    lines.insert(6, "")  # blank lines are skipped but still counted
    lines.insert(7, '["not", "an", "object"]')

    result = validate_dataset("\n".join(lines).encode(), filename="data.jsonl")

    assert result.ok is False
    [malformed] = result.report["errors"]
    assert malformed["code"] == "malformed_row"
    assert malformed["rows"] == [4, 8]
    assert malformed["count"] == 2
    assert malformed["message"].startswith(
        "Some rows could not be parsed; row 4: it is not valid JSON"
    )
    assert result.report["rows_total"] == 12
    assert result.report["rows_usable"] == 10


def test_csv_row_with_an_unquoted_comma_is_malformed():
    upload = csv_upload([*reviews(), ("hello, world", "positive")])

    result = validate_dataset(upload, filename="reviews.csv")

    assert result.report["errors"] == [
        {
            "code": "malformed_row",
            "message": "Some rows could not be parsed; row 14: it has 3 fields but the header "
            "has 2 (an unquoted delimiter inside a value?).",
            "rows": [14],
            "count": 1,
        }
    ]


def test_duplicates_are_dropped_and_conflicting_labels_reported():
    rows = [*reviews(), ("great product 0", "positive"), ("awful product 1", "positive")]

    result = validate_dataset(csv_upload(rows), filename="reviews.csv")

    assert result.ok is True
    assert result.report["rows_total"] == 14
    assert result.report["rows_usable"] == 13
    assert result.report["warnings"] == [
        {
            "code": "duplicate_rows",
            "message": "Exact repeats of an earlier row were excluded; the first copy is kept.",
            "rows": [14],
            "count": 1,
        },
        {
            "code": "conflicting_labels",
            "message": "The same text appears with different labels; these rows were kept, but "
            "the model cannot learn both answers.",
            "rows": [9, 15],
            "count": 2,
        },
    ]
    assert result.report["label_distribution"] == {"positive": 7, "negative": 6}


def test_near_duplicates_are_kept_and_reported_for_the_sealed_split():
    # mallory pads her file with near-copies of a review, hoping one lands in the sealed set
    rows = [*reviews(), ("GREAT product 0!", "positive"), ("great   product 0.", "positive")]

    result = validate_dataset(csv_upload(rows), filename="reviews.csv")

    assert result.ok is True
    assert result.report["rows_usable"] == 14
    assert result.report["warnings"] == [
        {
            "code": "near_duplicate_rows",
            "message": "Rows that repeat an earlier text apart from case, spacing or punctuation "
            "were kept; each such group is placed wholly on one side of the sealed test split.",
            "rows": [14, 15],
            "count": 2,
        }
    ]


def test_overlong_and_empty_rows_are_excluded_with_warnings():
    rows = [*reviews(), ("x" * 51, "positive"), ("", "negative"), ("no label", " ")]

    result = validate_dataset(
        csv_upload(rows), filename="reviews.csv", limits=ValidationLimits(max_chars_per_row=50)
    )

    assert result.ok is True
    assert [row["row"] for row in result.rows] == list(range(2, 14))
    assert result.report["warnings"] == [
        {
            "code": "empty_rows",
            "message": "Rows with a blank text or label were excluded.",
            "rows": [15, 16],
            "count": 2,
        },
        {
            "code": "overlong_rows",
            "message": "Rows longer than 50 characters were excluded.",
            "rows": [14],
            "count": 1,
        },
    ]


def test_example_rows_stop_at_ten_but_the_count_is_complete():
    rows = reviews() + [("", "positive")] * 15

    result = validate_dataset(csv_upload(rows), filename="reviews.csv")

    [empty] = result.report["warnings"]
    assert empty["rows"] == list(range(14, 24))
    assert empty["count"] == 15


def test_task_mismatch_is_fatal():
    objects = [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(5)]

    result = validate_dataset(
        jsonl_upload(objects), filename="qa.jsonl", task="text-classification"
    )

    assert result.ok is False
    assert result.task is None
    assert result.report["errors"] == [
        {
            "code": "task_mismatch",
            "message": "The dataset was uploaded for text-classification, but its columns "
            "(completion, prompt) are those of text-generation.",
            "rows": [],
            "count": 0,
            "expected_task": "text-classification",
            "inferred_task": "text-generation",
        }
    ]


@pytest.mark.parametrize(
    ("upload", "filename", "expected_task", "expected_format"),
    [
        (b"text,label\n" + b"a,x\n" * 2, "upload.csv", "text-classification", "csv"),
        (b"prompt,completion\nq,a\n", "upload.csv", "text-generation", "csv"),
        (b'{"text": "a", "label": "x"}\n', "upload.jsonl", "text-classification", "jsonl"),
        (b'{"prompt": "q", "completion": "a"}\n', "upload", "text-generation", "jsonl"),
        (b'{"messages": []}\n', "upload.json", "text-generation", "jsonl"),
        (b'[{"text": "a", "label": "x"}]', "upload.json", "text-classification", "json"),
        (b"text\tlabel\na\tx\n", "upload.txt", "text-classification", "csv"),
    ],
)
def test_task_and_format_are_inferred(upload, filename, expected_task, expected_format):
    result = validate_dataset(upload, filename=filename)

    assert (result.task, result.format) == (expected_task, expected_format)


def test_non_string_values_are_fatal_but_numbers_are_labels():
    objects = [{"text": f"t{i}", "label": 1.5 if i % 2 else "b"} for i in range(10)]
    objects += [{"text": 42, "label": "b"}, {"text": "t", "label": True}]

    result = validate_dataset(jsonl_upload(objects), filename="data.jsonl")

    assert result.report["errors"] == [
        {
            "code": "invalid_value",
            "message": 'Some rows have a value that is not a string; row 11: "text" is a int.',
            "rows": [11, 12],
            "count": 2,
        }
    ]
    assert result.report["label_distribution"] == {"1.5": 5, "b": 5}


def test_too_few_rows_and_labels_are_fatal():
    upload = csv_upload([("only one label", "a"), ("still one label", "a")])

    result = validate_dataset(upload, filename="tiny.csv")

    assert codes(result.report["errors"]) == ["too_few_labels", "too_few_rows"]
    assert result.report["errors"][1]["message"] == (
        "The dataset has 2 usable rows; text-classification needs at least 10."
    )


def test_too_many_rows_is_fatal():
    upload = csv_upload(reviews())

    result = validate_dataset(upload, filename="r.csv", limits=ValidationLimits(max_rows=11))

    assert codes(result.report["errors"]) == ["too_many_rows"]
    assert result.report["errors"][0]["message"] == (
        "The dataset has 12 usable rows; the limit is 11."
    )


def test_unknown_task_is_reported_not_raised():
    result = validate_dataset(csv_upload(reviews()), filename="r.csv", task="image-generation")

    assert result.ok is False
    assert codes(result.report["errors"]) == ["unknown_task"]


@pytest.mark.parametrize(
    ("upload", "filename"),
    [
        (b"\x00\x01\x02", "x.bin"),
        (b'"unterminated,quote\n' + b"a" * 200_000, "x.csv"),
        (b"text,text\na,b\n", "x.csv"),
        (b"{not json", "x.json"),
        (b'{"messages": "hello"}\n', "x.jsonl"),
        (b"[1, 2]", "x.json"),
        (b"42", "x.json"),
        (b"\xff\xfe\x00t", "x.csv"),
    ],
)
def test_hostile_uploads_never_raise(upload, filename):
    # mallory uploads junk; the validator answers with a report, never a traceback
    result = validate_dataset(upload, filename=filename)

    assert result.ok is False
    assert result.report["errors"]
    json.dumps(result.report)
