"""Run every benchmark in bench/ in turn (each prints its own side-by-side ratios)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = 0
    for script in sorted(HERE.glob("*.py")):
        if script.name == Path(__file__).name:
            continue
        print(f"== {script.name}", flush=True)
        failed |= subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode
    sys.exit(1 if failed else 0)
