"""The loader every export bundle ships as ``load.py`` (see billing.export_bundle).

``load.py`` runs on the licensee's machine with nothing of Niche installed: the standard
library, torch, transformers, peft, scikit-learn, safetensors and numpy (cryptography only
to verify the signature). It imports nothing from this project, so it is kept as a plain
file and shipped byte for byte; tests run it in a virtual environment of PyPI packages only.
"""

from pathlib import Path

LOADER_FILENAME = "load.py"
LOADER_PATH = Path(__file__).resolve().parent / LOADER_FILENAME


def loader_source() -> bytes:
    """The bytes shipped as ``load.py`` in every bundle."""
    return LOADER_PATH.read_bytes()
