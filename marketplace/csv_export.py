"""The one way Niche writes CSV for people to open: every text cell formula-neutralised.

A cell a spreadsheet would read as a formula (first non-blank character ``=``, ``+``,
``-``, ``@`` or their full-width forms, or a leading tab, CR or LF) gets a leading ``'``,
as OWASP advises; numbers stay numbers. tests/hostile_inputs/test_csv_exports.py fails
when product code writes CSV any other way (``csv.writer``/``DictWriter``, ``text/csv``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from django.http import HttpResponse

FORMULA_STARTS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
CONTROL_STARTS = ("\t", "\r", "\n")


def csv_safe_cell(value: Any) -> Any:
    """``value`` as a spreadsheet will show it, never evaluate it."""
    if not isinstance(value, str):
        return value
    if value.startswith(CONTROL_STARTS) or value.lstrip(" ").startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The CSV document (header first), every cell through ``csv_safe_cell``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([csv_safe_cell(cell) for cell in header])
    for row in rows:
        writer.writerow([csv_safe_cell(cell) for cell in row])
    return buffer.getvalue()


def csv_response(
    *, filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> HttpResponse:
    """An attachment download; the filename is reduced to safe ASCII."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in filename)
    response = HttpResponse(csv_text(header, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{safe.strip(".") or "export.csv"}"'
    return response
