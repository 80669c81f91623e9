"""Product code never unpickles a file, runs a model's remote code or lets transformers fall
back to pickled weights: an AST walk over every app package (not tests), which must catch
each planted example and pass each safe one."""

from pathlib import Path

import pytest

from tests.hostile_inputs.unsafe_calls import find_unsafe_calls

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = [
    "marketplace", "accounts", "training_worker", "listings", "billing", "serving", "evidence",
    "frontend",
    "bench",
]  # fmt: skip

PLANTED = {
    "torch-load": "import torch\ntorch.load('x.pt')",
    "torch-load-weights-only": "import torch\ntorch.load('x.pt', weights_only=True)",
    "torch-alias": "import torch as t\nt.load(f)",
    "torch-from-import": "from torch import load\nload(f)",
    "torch-serialization": "import torch.serialization\ntorch.serialization.load(f)",
    "pickle-load": "import pickle\npickle.load(open('f', 'rb'))",
    "pickle-loads": "import pickle\npickle.loads(b)",
    "pickle-alias": "import pickle as p\np.loads(b)",
    "pickle-from-import-renamed": "from pickle import loads as harmless\nharmless(b)",
    "pickle-unpickler": "import pickle\npickle.Unpickler(f).load()",
    "cpickle": "import _pickle\n_pickle.loads(b)",
    "dill": "import dill\ndill.load(f)",
    "joblib-load": "import joblib\njoblib.load('m.joblib')",
    "joblib-from-import": "from joblib import load\nload('m')",
    "numpy-allow-pickle": "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "numpy-allow-pickle-variable": "import numpy\nflag = True\nnumpy.load('a', allow_pickle=flag)",
    "pandas-read-pickle": "import pandas as pd\npd.read_pickle('f')",
    "marshal": "import marshal\nmarshal.loads(b)",
    "shelve": "import shelve\nshelve.open('db')",
    "trust-remote-code-keyword": "AutoModel.from_pretrained('x', trust_remote_code=True)",
    "trust-remote-code-variable": "f(trust_remote_code=setting)",
    "trust-remote-code-dict": "f(**{'trust_remote_code': True})",
    "from-pretrained-without-safetensors": "from transformers import AutoModelForCausalLM\n"
    "AutoModelForCausalLM.from_pretrained(path)",
    "from-pretrained-safetensors-false": "import transformers\n"
    "transformers.LlamaForCausalLM.from_pretrained(path, use_safetensors=False)",
    "from-pretrained-auto-model": "AutoModel.from_pretrained(path, revision='main')",
    "trust-remote-code-in-function": "def g():\n    from transformers import AutoModel\n"
    "    return AutoModel.from_pretrained(p, trust_remote_code=True)",
}
SAFE = {
    "trust-remote-code-false": "AutoModel.from_pretrained('x', use_safetensors=True, "
    "trust_remote_code=False)",
    "numpy-load-default": "import numpy as np\nnp.load('a.npy')",
    "numpy-load-no-pickle": "import numpy as np\nnp.load('a.npy', allow_pickle=False)",
    "json-loads": "import json\njson.loads(s)",
    "safetensors-load": "from safetensors.torch import load\nload(b)",
    "load-state-dict": "model.load_state_dict(state)",
    "pickle-dumps": "import pickle\npickle.dumps(x)",
    "method-named-load": "storage.load(name)",
    "from-pretrained-safetensors": "AutoModelForSequenceClassification.from_pretrained("
    "p, use_safetensors=True, trust_remote_code=False)",
    "from-pretrained-gguf": "AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)",
    "tokenizer-from-pretrained": "AutoTokenizer.from_pretrained(p)",
    "peft-from-pretrained": "PeftModel.from_pretrained(base, folder)",
}


@pytest.mark.parametrize("source", PLANTED.values(), ids=PLANTED.keys())
def test_walker_catches_planted_example(source):
    assert find_unsafe_calls(source), source


@pytest.mark.parametrize("source", SAFE.values(), ids=SAFE.keys())
def test_walker_passes_safe_example(source):
    assert find_unsafe_calls(source) == []


def product_files() -> list[Path]:
    return [
        path
        for package in PRODUCT_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if ".venv" not in path.parts
    ]


def test_product_code_never_unpickles_or_runs_remote_code():
    files = product_files()
    assert len(files) > 100  # the walk really covers the apps
    offences = [
        finding
        for path in files
        for finding in find_unsafe_calls(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert offences == []
