"""The demo pipeline run by `make demo`: every stage that exists, on recipes/tiny.yaml.

Each step is an `llmtrain` command, printed before it runs; the first failure stops the demo.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "tiny.yaml")

STEPS: list[list[str]] = [
    ["config", "check", RECIPE],
]


def main() -> None:
    start = time.perf_counter()
    for step in STEPS:
        print(f"\n$ llmtrain {shlex.join(step)}", flush=True)
        result = subprocess.run([sys.executable, "-m", "llmtrain", *step], cwd=REPO)
        if result.returncode != 0:
            sys.exit(f"demo: `llmtrain {shlex.join(step)}` failed (exit {result.returncode})")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
