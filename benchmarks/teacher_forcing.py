"""What teacher forcing adds to a run: both sides of the tiny model's run with it (reference, target
scoring the reference's answers, the reference reloaded to score the target's) against the same two
sides without it (each side alone in its own folder, so neither sees the other's answers).

One vLLM server is started first and shared by every run, so the ratio covers the work of the
sides (queries, the reference's model load, decoding, scoring), not the server's start, which a
real run pays once either way.

    python benchmarks/teacher_forcing.py [--rounds N] [--profile tiny-llama] [--dtype float32]

Needs the installed environment (make setup) and builds the tiny model first if it is missing."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from llm_parity import PROJECT_ROOT, pipeline
from llm_parity.backend import SideSetup
from llm_parity.download import resolve_model
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.results import RunDir, read_json
from llm_parity.serve import VllmServer, spec_from_profile

QUIET = lambda _: None  # noqa: E731


def fresh_run(root: Path, name: str, prepared: RunDir) -> tuple[RunDir, dict, dict]:
    """A results folder holding only the prepared suite and manifest."""
    run = RunDir(root / name)
    (run.root / "model").mkdir(parents=True)
    run.suite.write_bytes(prepared.suite.read_bytes())
    run.manifest.write_bytes(prepared.manifest.read_bytes())
    return run, read_json(run.suite, "suite"), read_json(run.manifest, "manifest")


def timed(step) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def sides(root: Path, name: str, prepared: RunDir, profile, model_dir: Path, server, *, teacher_forcing: bool) -> float:
    """Seconds for both sides: in one folder with teacher forcing, each in a folder of its own without."""
    def setup(run, suite, **extra):
        return SideSetup(profile=profile, model_dir=model_dir, suite=suite, run=run, log=QUIET, **extra)

    run, suite, manifest = fresh_run(root, f"{name}-a", prepared)
    other, other_suite, _ = (run, suite, manifest) if teacher_forcing else fresh_run(root, f"{name}-b", prepared)
    seconds = timed(lambda: pipeline.run_side("reference", setup(run, suite), manifest))
    seconds += timed(lambda: pipeline.run_side("target", setup(other, other_suite, running=server), manifest))
    if teacher_forcing:
        seconds += timed(lambda: pipeline.cross_score_side("reference", setup(run, suite), manifest))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each measurement (default 3)")
    parser.add_argument("--profile", default=DEMO_PROFILE, help=f"a tiny model's profile (default {DEMO_PROFILE})")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the profile's)")
    args = parser.parse_args()
    profile = load_profile(args.profile).with_serve(dtype=args.dtype)
    model_dir, origin = resolve_model(profile, log=QUIET)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = RunDir(root / "prepared")
        pipeline.prepare(prepared, profile, model_dir, origin)
        server = VllmServer(spec_from_profile(profile, model_dir), log_path=root / "server.log",
                            cache_dir=PROJECT_ROOT / ".cache")
        with server:
            without, with_ = [], []
            for round_ in range(args.rounds):
                without.append(sides(root, f"without{round_}", prepared, profile, model_dir, server, teacher_forcing=False))
                with_.append(sides(root, f"with{round_}", prepared, profile, model_dir, server, teacher_forcing=True))
                print(f"round {round_ + 1}: both sides without teacher forcing {without[-1]:.1f} s, "
                      f"with it {with_[-1]:.1f} s", flush=True)
    ratio = statistics.median(with_) / statistics.median(without)
    print(f"median ({profile.name}, {profile.dtype}): without {statistics.median(without):.1f} s, "
          f"with {statistics.median(with_):.1f} s; ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
