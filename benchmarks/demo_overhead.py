"""The pipeline's own overhead: `inv demo` end to end against a bare `vllm serve` start-to-healthy
of the same model, measured side by side in one run. Goal: demo ≤ 1.5 × bare start.

    python benchmarks/demo_overhead.py [--rounds N]

Needs the installed environment (make setup) and builds the tiny model first if it is missing."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_parity import PROJECT_ROOT
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.serve import VllmServer, spec_from_profile
from llm_parity.tiny_model import build_tiny_model

GOAL = 1.5


def bare_start(model_dir: Path, workdir: Path) -> float:
    """Seconds from launching `vllm serve` with the demo's flags to a healthy /health."""
    server = VllmServer(spec_from_profile(load_profile(DEMO_PROFILE), model_dir), log_path=workdir / "bare.log",
                        cache_dir=PROJECT_ROOT / ".cache")
    started = time.monotonic()
    with server:
        return time.monotonic() - started


def demo_run(workdir: Path) -> float:
    """Seconds for the whole demo: prepare, serve, query, reference, compare, report."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "invoke", "demo", "--results", str(workdir / "results")], cwd=PROJECT_ROOT,
                   check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each measurement (default 2)")
    args = parser.parse_args()
    model_dir = build_tiny_model(log=lambda _: None)
    bare, demo = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            bare.append(bare_start(model_dir, Path(tmp)))
            demo.append(demo_run(Path(tmp)))
            print(f"round {round_ + 1}: bare vllm serve to healthy {bare[-1]:.1f} s, inv demo {demo[-1]:.1f} s", flush=True)
    ratio = statistics.median(demo) / statistics.median(bare)
    print(f"median: bare {statistics.median(bare):.1f} s, demo {statistics.median(demo):.1f} s; "
          f"ratio {ratio:.2f}x (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
