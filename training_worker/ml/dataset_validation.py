"""Parse and validate an expert's uploaded dataset into normalised training rows.

``validate_dataset`` never raises on bad user input: every problem becomes an issue in the
report, ``{"code", "message", "rows", "count", ...details}``, listed under ``errors`` (the
dataset is invalid) or ``warnings`` (the affected rows were dropped or merely reported).

Row numbers are the 1-based line of the file on which a record starts: in a CSV the header
is line 1, so the first data row is row 2 (as in a spreadsheet); in JSONL, blank lines
still count, so a row number is what an editor shows. Pure Python: no Django, no torch.
"""

import csv
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from training_worker.ml.sealed_split import near_duplicate_key

TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
TASKS = (TEXT_CLASSIFICATION, TEXT_GENERATION)

REQUIRED_COLUMNS = {
    TEXT_CLASSIFICATION: ("text", "label"),
    TEXT_GENERATION: ("prompt", "completion"),
}
MESSAGES_COLUMN = "messages"
DEFAULT_MIN_ROWS = {TEXT_CLASSIFICATION: 10, TEXT_GENERATION: 5}
EXAMPLE_ROWS_PER_ISSUE = 10
MAX_COLUMNS = 1_000

UTF8_BOM = b"\xef\xbb\xbf"
# Accepted and decoded; UTF-32's BOM starts like UTF-16 LE's and then fails on its NULs.
UTF16_BOMS = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}

# Issues appear in the report in this order, whatever order the rows raised them in.
ISSUE_ORDER = (
    "unknown_task",
    "invalid_encoding",
    "empty_file",
    "duplicate_column",
    "too_many_columns",
    "missing_column",
    "task_mismatch",
    "malformed_row",
    "invalid_value",
    "extra_columns",
    "empty_rows",
    "overlong_rows",
    "duplicate_rows",
    "near_duplicate_rows",
    "conflicting_labels",
    "label_too_rare",
    "too_few_labels",
    "too_few_rows",
    "too_many_rows",
)


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds a dataset must respect; ``min_rows=None`` means 10 for classification, 5 for
    generation. Raises ``ValueError`` naming the field when a bound is not positive."""

    max_chars_per_row: int = 20_000
    max_rows: int = 200_000
    min_rows: int | None = None

    def __post_init__(self) -> None:
        if self.max_chars_per_row < 1:
            raise ValueError(f"max_chars_per_row must be >= 1, got {self.max_chars_per_row}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.min_rows is not None and not 1 <= self.min_rows <= self.max_rows:
            raise ValueError(f"min_rows must be in [1, max_rows], got {self.min_rows}")

    def min_rows_for(self, task: str) -> int:
        """The fewest usable rows a dataset for ``task`` may have."""
        return self.min_rows if self.min_rows is not None else DEFAULT_MIN_ROWS[task]


DEFAULT_LIMITS = ValidationLimits()


@dataclass
class ValidationResult:
    """Outcome of ``validate_dataset``.

    ``ok`` is true exactly when ``report["errors"]`` is empty. ``rows`` are the usable rows in
    file order (``{"row", "text", "label"}`` or ``{"row", "prompt", "completion"}``); they
    are filled even when ``ok`` is false so a caller can show what would have been kept.
    """

    ok: bool
    task: str | None
    format: str | None
    rows: list[dict[str, Any]]
    report: dict[str, Any]


@dataclass
class _Issue:
    """One report entry; per-row issues accumulate example rows and a count."""

    code: str
    fatal: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)
    count: int = 0

    def note_row(self, row: int) -> None:
        self.count += 1
        if len(self.rows) < EXAMPLE_ROWS_PER_ISSUE:
            self.rows.append(row)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "rows": list(self.rows),
            "count": self.count,
            **self.details,
        }


class _IssueLog:
    """Collects issues keyed by code (and a detail such as the column), in a stable order."""

    def __init__(self) -> None:
        self._issues: dict[tuple[str, str], _Issue] = {}

    def add(self, code: str, message: str, *, fatal: bool, **details: Any) -> _Issue:
        issue = _Issue(code=code, fatal=fatal, message=message, details=details)
        self._issues[(code, str(details.get("column", "")))] = issue
        return issue

    def row_issue(
        self, code: str, row: int, message: str, *, fatal: bool, key: str = "", **details: Any
    ) -> None:
        """Note ``row`` under ``code``; the first row's ``message`` describes the issue."""
        issue = self._issues.get((code, key))
        if issue is None:
            issue = _Issue(code=code, fatal=fatal, message=message, details=details)
            self._issues[(code, key)] = issue
        issue.note_row(row)

    def has_errors(self) -> bool:
        return any(issue.fatal for issue in self._issues.values())

    def finish(self, fatal: bool) -> list[dict[str, Any]]:
        chosen = [issue for issue in self._issues.values() if issue.fatal == fatal]
        chosen.sort(key=lambda issue: ISSUE_ORDER.index(issue.code))
        return [issue.as_dict() for issue in chosen]


@dataclass
class _Record:
    """One parsed record of the file: ``fields`` or, when it could not be parsed, ``error``."""

    row: int
    fields: dict[str, Any] | None = None
    error: str | None = None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _encoding_error(issues: _IssueLog, message: str, *, line: int, **details: Any) -> None:
    issues.add("invalid_encoding", message, fatal=True, line=line, **details).note_row(line)


def _decode(raw: bytes, issues: _IssueLog) -> tuple[str | None, str]:
    """``(text, encoding)``: UTF-8 (a BOM is skipped) or UTF-16 with its BOM. Anything else
    (Latin-1 or cp1252 saved as if UTF-8, invalid bytes mid-file, UTF-16/32 without a BOM,
    binary) is an ``invalid_encoding`` error naming the line; ``text`` is None then."""
    encoding = "utf-8"
    start = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    for bom, codec in UTF16_BOMS.items():
        if raw.startswith(bom):
            encoding, start = codec, len(bom)
    try:
        text = str(memoryview(raw)[start:], encoding)
    except UnicodeDecodeError as error:
        byte_offset = start + error.start
        line = raw[start:byte_offset].decode(encoding, errors="replace").count("\n") + 1
        _encoding_error(
            issues,
            f"The file is not valid {encoding.upper()}: byte {byte_offset} (line {line}) starts "
            "an invalid sequence. Save the file as UTF-8 and upload it again.",
            line=line,
            byte_offset=byte_offset,
        )
        return None, encoding
    nul = text.find("\x00")
    if nul != -1:
        line = text.count("\n", 0, nul) + 1
        _encoding_error(
            issues,
            f"Line {line} holds a NUL character: the file is binary, or UTF-16/UTF-32 without "
            "a byte-order mark. Save the file as UTF-8 and upload it again.",
            line=line,
        )
        return None, encoding
    return text, encoding


def _lines(text: str) -> Iterator[str]:
    """The text's lines with their endings, split on "\\n" only, without copying the text
    (``io.StringIO`` would hold a second, wider copy of a 50 MB upload)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end == -1:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def _detect_format(filename: str, text: str) -> str:
    lowered = filename.lower()
    if lowered.endswith((".csv", ".tsv")):
        return "csv"
    if lowered.endswith(".jsonl"):
        return "jsonl"
    first_char = next((char for char in text if not char.isspace()), "")
    if first_char == "[":
        return "json"
    if first_char == "{" or lowered.endswith(".json"):
        return "jsonl"
    return "csv"


def _csv_delimiter(header_line: str) -> str:
    for candidate in (",", "\t", ";"):
        if candidate in header_line:
            return candidate
    return ","


def _is_blank_record(values: list[str]) -> bool:
    return not values or (len(values) == 1 and not values[0].strip())


def _read_csv(text: str, issues: _IssueLog) -> tuple[list[str], Iterator[_Record]] | None:
    """Return the header's column names and a lazy stream of records, or None when the
    header itself is unusable (the issue is logged)."""
    header_line = next((line for line in _lines(text) if line.strip()), "")
    reader = csv.reader(_lines(text), delimiter=_csv_delimiter(header_line))
    header: list[str] = []
    try:
        while _is_blank_record(header):
            header = next(reader)
    except (csv.Error, StopIteration) as error:
        issues.add(
            "malformed_row", f"The CSV header could not be read: {error}.", fatal=True
        ).note_row(reader.line_num)
        return None
    if len(header) > MAX_COLUMNS:  # the columns go into the report: keep it small
        issues.add(
            "too_many_columns",
            f"The CSV header has {len(header):,} columns; at most {MAX_COLUMNS} are read.",
            fatal=True,
        ).note_row(reader.line_num)
        return None
    columns = [name.strip().lstrip("\ufeff").lower() for name in header]
    counts = Counter(columns)  # not columns.count per column: quadratic in a hostile header
    repeated = sorted(name for name, count in counts.items() if count > 1 and name)
    if repeated:
        issues.add(
            "duplicate_column",
            f"The CSV header names {', '.join(repeated)} more than once; "
            "keep one column of each name.",
            fatal=True,
            columns=repeated,
        ).note_row(reader.line_num)
        return None

    def records() -> Iterator[_Record]:
        previous_line = reader.line_num
        while True:
            row = previous_line + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                previous_line = reader.line_num
                yield _Record(row=row, error=str(error))
                continue
            previous_line = reader.line_num
            if _is_blank_record(values):
                continue
            if len(values) != len(columns):
                yield _Record(
                    row=row,
                    error=f"it has {_plural(len(values), 'field')} but the header has "
                    f"{len(columns)} (an unquoted delimiter inside a value?)",
                )
                continue
            yield _Record(row=row, fields=dict(zip(columns, values, strict=True)))

    return columns, records()


def _read_json_lines(text: str) -> Iterator[_Record]:
    for row, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            yield _Record(row=row, error=f"it is not valid JSON ({error})")
            continue
        except RecursionError:  # "[[[[..." thousands deep: a parser bomb, not data
            yield _Record(row=row, error="its JSON nests too deeply")
            continue
        if isinstance(value, dict):
            yield _Record(row=row, fields=value)
        else:
            yield _Record(row=row, error=f"it is a JSON {type(value).__name__}, not an object")


def _read_json_array(text: str, issues: _IssueLog) -> Iterator[_Record] | None:
    """A ``.json`` file holding one array of objects; row numbers are 1-based positions."""
    try:
        values = json.loads(text)
    except ValueError as error:
        issues.add(
            "malformed_row",
            f"The file is not valid JSON ({error}); upload one JSON object per line (JSONL).",
            fatal=True,
        ).note_row(getattr(error, "lineno", 1))
        return None
    except RecursionError:  # "[[[[..." thousands deep: a parser bomb, not data
        issues.add("malformed_row", "The JSON file nests too deeply.", fatal=True).note_row(1)
        return None
    if not isinstance(values, list):
        issues.add(
            "malformed_row", "The JSON file must hold a list of objects.", fatal=True
        ).note_row(1)
        return None
    return (
        _Record(row=position, fields=value)
        if isinstance(value, dict)
        else _Record(row=position, error=f"it is a JSON {type(value).__name__}, not an object")
        for position, value in enumerate(values, start=1)
    )


def _task_for_columns(columns: set[str]) -> str | None:
    if {"text", "label"} <= columns:
        return TEXT_CLASSIFICATION
    if {"prompt", "completion"} <= columns or MESSAGES_COLUMN in columns:
        return TEXT_GENERATION
    return None


def _resolve_task(columns: set[str], requested: str | None, issues: _IssueLog) -> str | None:
    """The task the rows will be read as, or None when the rows cannot be read (logged)."""
    inferred = _task_for_columns(columns)
    if requested is not None and inferred is not None and inferred != requested:
        issues.add(
            "task_mismatch",
            f"The dataset was uploaded for {requested}, but its columns "
            f"({', '.join(sorted(columns))}) are those of {inferred}.",
            fatal=True,
            expected_task=requested,
            inferred_task=inferred,
        )
        return None
    task = requested or inferred
    if task is None:
        issues.add(
            "missing_column",
            "The data needs the columns text and label (classification), prompt and "
            f"completion (generation) or messages (chat); found: {', '.join(sorted(columns))}.",
            fatal=True,
            column="text",
        )
        return None
    if inferred is None:
        for name in REQUIRED_COLUMNS[task]:
            if name not in columns:
                issues.add(
                    "missing_column",
                    f'The column "{name}" is required for {task}.',
                    fatal=True,
                    column=name,
                )
        return None
    return task


def _text_value(value: Any, name: str, row: int, issues: _IssueLog) -> str | None:
    """The value as a string; None for null or when it is not a string (logged)."""
    if value is None or isinstance(value, str):
        return value
    issues.row_issue(
        "invalid_value",
        row,
        f'Some rows have a value that is not a string; row {row}: "{name}" is a '
        f"{type(value).__name__}.",
        fatal=True,
    )
    return None


def _label_value(value: Any, row: int, issues: _IssueLog) -> str | None:
    if isinstance(value, bool):  # before int: True is an int in Python, but not a label
        return _text_value(value, "label", row, issues)
    if isinstance(value, int | float):
        return str(value)
    value = _text_value(value, "label", row, issues)
    return None if value is None else value.strip()


def _render_messages(messages: Any, row: int, issues: _IssueLog) -> tuple[str, str] | None:
    """Chat messages as (prompt, completion): the last assistant message is the completion;
    the messages before it become ``"role: content"`` lines ending in ``"assistant:"``.
    Messages after the last assistant message carry nothing to learn and are dropped."""
    shape_ok = isinstance(messages, list) and all(
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
        for message in messages
    )
    if not shape_ok:
        issues.row_issue(
            "invalid_value",
            row,
            f'Some rows have malformed "messages"; row {row}: it must be a list of objects '
            'with string "role" and "content".',
            fatal=True,
        )
        return None
    assistant_positions = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_positions:
        return "", ""
    last = assistant_positions[-1]
    lines = [f"{message['role']}: {message['content']}" for message in messages[:last]]
    lines.append("assistant:")
    return "\n".join(lines), messages[last]["content"]


def _normalise(
    record: _Record, task: str, issues: _IssueLog
) -> tuple[str | None, str | None] | None:
    """The record's two values (text/label or prompt/completion); None when it is unusable
    for a fatal reason (logged). A None value inside the pair means blank."""
    fields = record.fields
    assert fields is not None
    if task == TEXT_GENERATION and MESSAGES_COLUMN in fields and "prompt" not in fields:
        return _render_messages(fields[MESSAGES_COLUMN], record.row, issues)
    first_name, second_name = REQUIRED_COLUMNS[task]
    missing = [name for name in (first_name, second_name) if name not in fields]
    for name in missing:
        issues.row_issue(
            "missing_column",
            record.row,
            f'Some rows lack the key "{name}", which {task} requires.',
            fatal=True,
            key=name,
            column=name,
        )
    if missing:
        return None
    first = _text_value(fields[first_name], first_name, record.row, issues)
    if task == TEXT_CLASSIFICATION:
        second = _label_value(fields[second_name], record.row, issues)
    else:
        second = _text_value(fields[second_name], second_name, record.row, issues)
    if (first is None and fields[first_name] is not None) or (
        second is None and fields[second_name] is not None
    ):
        return None  # a non-string value, already logged
    return first, second


def _percentile(sorted_values: list[int], fraction: float) -> int | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def validate_dataset(
    raw: bytes,
    *,
    filename: str,
    task: str | None = None,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> ValidationResult:
    """Validate an uploaded dataset and normalise its usable rows.

    Guarantees: never raises on bad file content or an unknown ``task`` (each problem is an
    issue in ``report``); ``ok`` is true exactly when there are no errors; ``report`` is
    JSON-serialisable; ``rows`` keep file order and drop empty, overlong and repeated rows.
    Reads the decoded text line by line, so memory is a few times the file's size.
    """
    issues = _IssueLog()
    data_format: str | None = None
    resolved_task: str | None = None
    columns: list[str] = []
    usable_rows: list[dict[str, Any]] = []
    rows_total = 0
    lengths: list[int] = []
    encoding = "utf-8"

    def result() -> ValidationResult:
        lengths.sort()
        label_distribution = None
        if resolved_task == TEXT_CLASSIFICATION:
            counts = Counter(row["label"] for row in usable_rows)
            label_distribution = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        errors = issues.finish(fatal=True)
        report = {
            "format": data_format,
            "task": resolved_task,
            "encoding": encoding,
            "rows_total": rows_total,
            "rows_usable": len(usable_rows),
            "errors": errors,
            "warnings": issues.finish(fatal=False),
            "label_distribution": label_distribution,
            "length_chars": {
                "p50": _percentile(lengths, 0.50),
                "p95": _percentile(lengths, 0.95),
                "max": lengths[-1] if lengths else None,
            },
            "columns": columns,
        }
        return ValidationResult(
            ok=not errors,
            task=resolved_task,
            format=data_format,
            rows=usable_rows,
            report=report,
        )

    if task is not None and task not in TASKS:
        issues.add(
            "unknown_task",
            f"The task must be one of {', '.join(TASKS)}; got {task!r}.",
            fatal=True,
        )
        return result()
    text, encoding = _decode(raw, issues)
    if text is None:
        return result()
    if not text.strip():
        issues.add("empty_file", "The file is empty.", fatal=True)
        return result()

    data_format = _detect_format(filename, text)
    records: Iterator[_Record] | None
    if data_format == "csv":
        header_and_records = _read_csv(text, issues)
        if header_and_records is None:
            return result()
        columns, records = header_and_records
        resolved_task = _resolve_task(set(columns), task, issues)
        if resolved_task is None:
            return result()
    elif data_format == "json":
        records = _read_json_array(text, issues)
    else:
        records = _read_json_lines(text)
    if records is None:
        return result()

    seen_columns: dict[str, None] = dict.fromkeys(columns)
    task_undecidable = False
    seen_pairs: set[tuple[str, str]] = set()
    seen_inputs: set[str] = set()
    seen_near_keys: set[str] = set()
    first_label_by_text: dict[str, str] = {}
    conflicting_texts: set[str] = set()
    for record in records:
        rows_total += 1
        if record.fields is None:
            issues.row_issue(
                "malformed_row",
                record.row,
                f"Some rows could not be parsed; row {record.row}: {record.error}.",
                fatal=True,
            )
            continue
        if data_format != "csv":
            seen_columns.update(dict.fromkeys(record.fields))
            if resolved_task is None and not task_undecidable:
                # JSON rows decide the task by the first object's keys.
                resolved_task = _resolve_task(set(record.fields), task, issues)
                task_undecidable = resolved_task is None
        if resolved_task is None:
            continue

        values = _normalise(record, resolved_task, issues)
        if values is None:
            continue
        first, second = values
        if not first or not first.strip() or not second or not second.strip():
            issues.row_issue(
                "empty_rows",
                record.row,
                "Rows with a blank "
                + " or ".join(REQUIRED_COLUMNS[resolved_task])
                + " were excluded.",
                fatal=False,
            )
            continue
        length = len(first) if resolved_task == TEXT_CLASSIFICATION else len(first) + len(second)
        if length > limits.max_chars_per_row:
            issues.row_issue(
                "overlong_rows",
                record.row,
                f"Rows longer than {limits.max_chars_per_row} characters were excluded.",
                fatal=False,
            )
            continue
        if (first, second) in seen_pairs:
            issues.row_issue(
                "duplicate_rows",
                record.row,
                "Exact repeats of an earlier row were excluded; the first copy is kept.",
                fatal=False,
            )
            continue
        seen_pairs.add((first, second))
        near_key = near_duplicate_key(first)
        if near_key in seen_near_keys and first not in seen_inputs:
            issues.row_issue(
                "near_duplicate_rows",
                record.row,
                "Rows that repeat an earlier "
                + REQUIRED_COLUMNS[resolved_task][0]
                + " apart from case, spacing or punctuation were kept; each such group is "
                "placed wholly on one side of the sealed test split.",
                fatal=False,
            )
        seen_near_keys.add(near_key)
        seen_inputs.add(first)
        if resolved_task == TEXT_CLASSIFICATION:
            first_label = first_label_by_text.setdefault(first, second)
            if first_label != second:
                conflicting_texts.add(first)
            usable_rows.append({"row": record.row, "text": first, "label": second})
        else:
            usable_rows.append({"row": record.row, "prompt": first, "completion": second})
        lengths.append(length)
    columns = list(seen_columns)

    for row in usable_rows:
        if row.get("text") in conflicting_texts:
            issues.row_issue(
                "conflicting_labels",
                row["row"],
                "The same text appears with different labels; these rows were kept, but the "
                "model cannot learn both answers.",
                fatal=False,
            )
    if resolved_task is not None:
        _check_columns_and_counts(resolved_task, columns, usable_rows, rows_total, limits, issues)
    return result()


def _check_columns_and_counts(
    task: str,
    columns: list[str],
    usable_rows: list[dict[str, Any]],
    rows_total: int,
    limits: ValidationLimits,
    issues: _IssueLog,
) -> None:
    known = set(REQUIRED_COLUMNS[task])
    if task == TEXT_GENERATION:
        known.add(MESSAGES_COLUMN)
    extra = [name for name in columns if name not in known]
    if extra:
        issues.add(
            "extra_columns",
            f"These columns are not used and were ignored: {', '.join(extra)}.",
            fatal=False,
            columns=extra,
        )
    if rows_total == 0:
        issues.add("empty_file", "The file has a header but no data rows.", fatal=True)
        return
    usable = len(usable_rows)
    min_rows = limits.min_rows_for(task)
    if usable < min_rows:
        issues.add(
            "too_few_rows",
            f"The dataset has {_plural(usable, 'usable row')}; {task} needs at least {min_rows}.",
            fatal=True,
        )
    if usable > limits.max_rows:
        issues.add(
            "too_many_rows",
            f"The dataset has {usable} usable rows; the limit is {limits.max_rows}.",
            fatal=True,
        )
    if task != TEXT_CLASSIFICATION or usable == 0:
        return
    counts = Counter(row["label"] for row in usable_rows)
    rare = sorted(label for label, count in counts.items() if count < 2)
    if rare:
        issue = issues.add(
            "label_too_rare",
            f"Each label needs at least 2 rows (one for training, one for the sealed test "
            f"split); these have 1: {', '.join(rare)}.",
            fatal=True,
            labels=rare,
        )
        rare_set = set(rare)
        for row in usable_rows:
            if row["label"] in rare_set:
                issue.note_row(row["row"])
    if len(counts) < 2:
        issues.add(
            "too_few_labels",
            f"Classification needs at least 2 distinct labels; found {len(counts)}.",
            fatal=True,
            labels=sorted(counts),
        )
