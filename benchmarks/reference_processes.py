"""Wall time of the reference in one process against N processes (`--processes N`, accelerate
launch) on the tiny model, and whether their records are the same bytes.

Both run the same suite through the transformers backend with the same batch size and the same
torch threads per process (the cores divided by N, one process or N), one after the other,
alternating for `--rounds`. Each time is split into loading (for N processes: starting them
through accelerate launch, each importing torch and loading its copy) and the work itself.

    python benchmarks/reference_processes.py [--processes 2] [--batch-size 4] [--prompts 14] [--max-tokens 48]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from llm_parity.backend import SideSetup
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.reference import Placement, TransformersBackend
from llm_parity.results import RunDir, canonical_bytes
from llm_parity.tiny_model import build_tiny_model
from reference_batching import benchmark_suite

TOP_LOGPROBS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="reference processes (default 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per batch, in both runs (default 4)")
    parser.add_argument("--prompts", type=int, default=None,
                        help="how many prompts, the default suite's repeated as needed (default: the suite's 14)")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per prompt (default 48, the demo's)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of both runs (default 1)")
    return parser.parse_args(argv)


def timed(setup: SideSetup) -> tuple[float, float, bytes]:
    """Seconds to open the backend, seconds of generation and scoring, and the records as canonical JSON."""
    suite, records = setup.suite, []
    started = time.perf_counter()
    with TransformersBackend.open(setup) as backend:
        loaded = time.perf_counter()
        backend.generate(suite["prompts"], top_logprobs=TOP_LOGPROBS, on_record=records.append)
        backend.score(suite["passages"], on_record=records.append)
        done = time.perf_counter()
    return loaded - started, done - loaded, canonical_bytes(sorted((r.to_json() for r in records), key=lambda r: r["id"]))


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    threads = max(1, len(os.sched_getaffinity(0)) // args.processes)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    model_dir = build_tiny_model(log=lambda line: None)
    suite = benchmark_suite(model_dir, max_tokens=args.max_tokens, prompts=args.prompts)
    print(f"tiny model, {len(suite['prompts'])} prompts of up to {args.max_tokens} tokens, {len(suite['passages'])} "
          f"passages, batches of {args.batch_size}, torch threads per process: {os.environ['OMP_NUM_THREADS']}",
          flush=True)
    runs = {"1 process": Placement(batch_size=args.batch_size),
            f"{args.processes} processes": Placement(processes=args.processes, batch_size=args.batch_size)}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            outputs = {}
            for name, placement in runs.items():
                setup = SideSetup(profile=load_profile(DEMO_PROFILE), model_dir=model_dir, suite=suite,
                                  run=RunDir(Path(tmp)), log=lambda line: None, options={"placement": placement})
                load_s, work_s, outputs[name] = timed(setup)
                print(f"round {round_ + 1}: {name}: {load_s + work_s:.1f} s ({load_s:.1f} s loading, {work_s:.1f} s "
                      f"generating and scoring)", flush=True)
            print(f"round {round_ + 1}: records byte-identical: {len(set(outputs.values())) == 1}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
