"""The configuration matrix's wall time against doing it by hand: `inv matrix` over N variants (one
reference, one rendered suite, N servers, the report) against N single `inv target` runs of the
same profile, each into a fresh run (its own suite rendering, model hashing and server).

    python benchmarks/matrix_wall.py [--variants base,eager,...] [--profile tiny-llama] [--results DIR]

Prints each variant's own side time (from its provenance) and the two wall times. Needs the
installed environment (make setup); a server start takes most of a minute on a small CPU."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_parity import PROJECT_ROOT
from llm_parity.matrix import Variant
from llm_parity.profiles import DEMO_PROFILE
from llm_parity.results import RunDir, read_json


def timed_task(*args: str) -> tuple[float, int]:
    """Seconds an invoke task took, and its exit code."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: a verdict that failed, still a finished run
        sys.exit(f"inv {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.monotonic() - started, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=DEMO_PROFILE, help=f"profile (default {DEMO_PROFILE})")
    parser.add_argument("--variants", help="comma-separated variants (default: all of the profile's)")
    parser.add_argument("--results", help="keep the results here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(args.results or Path(tmp) / "results")
        chosen = ["--variants", args.variants] if args.variants else []
        matrix_s, code = timed_task("matrix", "--profile", args.profile, "--run", "matrix", "--results", str(results),
                                    "--lang", "en", *chosen)
        run = RunDir(results / "matrix")
        doc = read_json(run.matrix, "matrix")
        ran = [entry for entry in doc["variants"] if entry["status"] == "ran"]
        for entry in doc["variants"]:
            side = Variant(entry["name"], entry["definition"]).results(run)
            took = read_json(side.provenance("target"), "provenance")["duration_s"] if entry["status"] == "ran" else None
            print(f"{entry['name']:<20} {entry['status']:<14} {entry['verdict']:<8} "
                  f"{'' if took is None else f'{took:.1f} s side'}  {'; '.join(entry['differs_from_base'])}", flush=True)
        print(f"inv matrix: {matrix_s:.1f} s for {len(doc['variants'])} variants ({len(ran)} ran), verdict "
              f"{doc['verdict']} (exit {code})", flush=True)
        singles = []
        for index in range(len(ran)):
            seconds, _ = timed_task("target", "--profile", args.profile, "--run", f"single-{index}", "--results", str(results))
            singles.append(seconds)
            print(f"inv target #{index + 1}: {seconds:.1f} s", flush=True)
    total = sum(singles)
    print(f"{len(singles)} single inv target runs: {total:.1f} s in all; inv matrix: {matrix_s:.1f} s "
          f"(also the reference and the report); ratio {matrix_s / total:.2f}x")


if __name__ == "__main__":
    main()
