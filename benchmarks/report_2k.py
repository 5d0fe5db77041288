"""Does the report stay readable at thousands of prompts? Builds the synthetic run of
compare_10k.py (64 output tokens, top-5, a split within top-k every 20 prompts) at 200 and at
2,000 prompts, compares each, then times build_report and both renderers and prints the size of
every page. Goal: report.md and report.html at 2,000 prompts at most 5 % larger than at 200, and
all pages rendered in at most 1 s.

    python benchmarks/report_2k.py [--records 2000] [--output-len 64]
"""
from __future__ import annotations

import argparse
import sys
import time

from compare_10k import build_run

from llm_parity.compare import compare_runs
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.report import build_report
from llm_parity.report.html import html_pages
from llm_parity.report.markdown import markdown_pages

GOAL_S = 1.0
GOAL_GROWTH = 1.05
FRONT_PAGES = ("report.md", "report.html")
PROVENANCE = {side: {"backend": backend, "device": "cpu", "packages": {}, "notes": [],
                     "hardware": {"cpu": "synthetic", "accelerator": None},
                     "image": {"reference": None, "digest": None, "pinned": False}}
              for side, backend in (("target", "vllm-http"), ("reference", "transformers"))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000, help="prompts of the large run (default 2000); "
                                                                   "the small one has a tenth")
    parser.add_argument("--output-len", type=int, default=64, help="output tokens per record (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def rendered(records: int, args: argparse.Namespace) -> tuple[dict[str, int], float]:
    """Each page's size in bytes and the seconds build_report and both renderers took."""
    run_args = argparse.Namespace(records=records, output_len=args.output_len, splits=records // 20, seed=args.seed)
    run = build_run(run_args)
    profile = load_profile(DEMO_PROFILE)
    result = compare_runs(**run, thresholds=profile.thresholds("bfloat16"), profile=profile.name)
    started = time.perf_counter()
    report = build_report(result, PROVENANCE, suite=run["suite"])
    pages = markdown_pages(report) | html_pages(report, result)
    seconds = time.perf_counter() - started
    return {name: len(text.encode("utf-8")) for name, text in pages.items()}, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    small, _ = rendered(args.records // 10, args)
    large, seconds = rendered(args.records, args)
    for name, size in large.items():
        print(f"{name}: {size:,} bytes at {args.records} prompts, {small.get(name, 0):,} at {args.records // 10}")
    growth = max(large[name] / small[name] for name in FRONT_PAGES)
    met = growth <= GOAL_GROWTH and seconds <= GOAL_S
    print(f"front pages {growth:.3f}x (goal <= {GOAL_GROWTH}x); rendered in {seconds:.2f} s (goal <= {GOAL_S:g} s): "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
