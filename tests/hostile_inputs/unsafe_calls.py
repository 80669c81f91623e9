"""An AST walk that finds calls which unpickle or run remote code, through any import alias.

Flags: ``pickle``/``_pickle``/``cPickle``/``dill``/``cloudpickle`` ``load``/``loads``/
``Unpickler``, ``joblib.load``, ``torch.load`` (also ``torch.serialization.load``),
``pandas.read_pickle``, ``marshal.load(s)``, ``shelve.open``, ``numpy.load`` unless
``allow_pickle`` is literally False or absent, and ``trust_remote_code`` given any value
but a literal False (as a keyword or a dict literal key, e.g. ``**{"trust_remote_code": x}``).
A transformers model's ``from_pretrained`` (``AutoModel*``, ``*For*``, ``*Model``; peft's
``PeftModel`` excepted: its folder passes safe_weights first) must say
``use_safetensors=True`` (or load a ``gguf_file``), so it can never fall back to a ``.bin``.
"""

from __future__ import annotations

import ast
import re

UNPICKLING_CALLS = {
    *(f"{module}.{name}" for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
      for name in ("load", "loads", "Unpickler")),
    "joblib.load",
    "torch.load",
    "torch.serialization.load",
    "pandas.read_pickle",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
}  # fmt: skip
NUMPY_LOAD = "numpy.load"
TRANSFORMERS_MODEL = re.compile(r"^(AutoModel\w*|\w+For\w+|\w+Model)$")
NOT_WEIGHTS_LOADERS = {"PeftModel"}


def _is_literal_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


class _Walker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> dotted origin
        self.findings: list[tuple[int, str]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            for alias in node.names:
                self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        if name in UNPICKLING_CALLS:
            self.findings.append((node.lineno, f"calls {name}"))
        if name == NUMPY_LOAD:
            for keyword in node.keywords:
                if keyword.arg == "allow_pickle" and not _is_literal_false(keyword.value):
                    self.findings.append((node.lineno, "calls numpy.load(allow_pickle=...)"))
                if keyword.arg is None:  # **kwargs could carry allow_pickle=True
                    self.findings.append((node.lineno, "calls numpy.load(**kwargs)"))
        for keyword in node.keywords:
            if keyword.arg == "trust_remote_code" and not _is_literal_false(keyword.value):
                self.findings.append((node.lineno, "passes trust_remote_code"))
        if isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
            owner = (self.dotted(node.func.value) or "").rsplit(".", 1)[-1]
            if TRANSFORMERS_MODEL.match(owner) and owner not in NOT_WEIGHTS_LOADERS:
                safe = any(
                    (k.arg == "use_safetensors" and isinstance(k.value, ast.Constant)
                     and k.value.value is True) or k.arg == "gguf_file"
                    for k in node.keywords
                )  # fmt: skip
                if not safe:
                    self.findings.append(
                        (node.lineno, f"{owner}.from_pretrained without use_safetensors=True")
                    )
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if (
                isinstance(key, ast.Constant)
                and key.value == "trust_remote_code"
                and not _is_literal_false(value)
            ):
                self.findings.append((node.lineno, "sets trust_remote_code in a dict"))
        self.generic_visit(node)


def find_unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """``["<filename>:<line>: <what>"]`` for each unpickling or remote-code call."""
    walker = _Walker()
    walker.visit(ast.parse(source, filename=filename))
    return [f"{filename}:{line}: {what}" for line, what in walker.findings]
