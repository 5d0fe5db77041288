"""Is our benchmark client fast enough? Our run_bench and vLLM's own `vllm bench serve` against the
same server at the same concurrency, input and output lengths; prints both output-token
throughputs and their ratio (goal: ours / vllm >= 0.95), plus both sides' median latencies.

Repeats alternate the two clients so that drift in the machine's load hits both alike; each
repeat draws fresh random prompts on both sides, so neither gains from the prefix cache.

    python benchmarks/bench_client.py                      # starts vLLM on the tiny model
    python benchmarks/bench_client.py --server-url http://127.0.0.1:8000 --model NAME --tokenizer DIR
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from llm_parity import PROJECT_ROOT
from llm_parity.bench import run_bench, synthetic_prompts
from llm_parity.serve import VllmServer, launcher, spec_from_profile

GOAL = 0.95
LATENCIES = ("ttft", "tpot", "itl", "e2el")  # compared by their medians, in ms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-url", help="a running server; without it, vLLM is started on the tiny model")
    parser.add_argument("--model", help="served model name (default: the tiny model's, or the server's first model)")
    parser.add_argument("--tokenizer", type=Path, help="model folder for the tokenizer (default: the tiny model)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    parser.add_argument("--num-prompts", type=int, default=64, help="measured requests per client run (default 64)")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--output-len", type=int, default=64, help="output tokens, EOS ignored (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each client (default 3)")
    parser.add_argument("--result-dir", type=Path, help="where vLLM's result files and the server log go "
                                                        "(default: a temporary folder)")
    return parser.parse_args(argv)


def first_served_model(url: str, api_key: str | None) -> str:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return requests.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]


def ours(args: argparse.Namespace, url: str, model: str, vocab_size: int, seed: int) -> dict:
    """One run of our client: its level summary."""
    prompts = synthetic_prompts(args.num_prompts + 1, args.input_len, vocab_size=vocab_size, seed=seed)
    doc = run_bench(url, model, prompts=prompts, output_len=args.output_len, concurrencies=(args.concurrency,),
                    requests_per_level=args.num_prompts, api_key=args.api_key)
    summary = doc["levels"][0]["summary"]
    if summary["failed"]:
        sys.exit(f"our client: {summary['failed']} requests failed")
    return {"output_throughput": summary["output_throughput"],
            **{name: summary[f"{name}_ms"]["median"] for name in LATENCIES}}


def vllms(args: argparse.Namespace, url: str, model: str, tokenizer: Path, result_dir: Path, seed: int) -> dict:
    """One run of `vllm bench serve`, greedy with one warm-up like ours: its result file's numbers."""
    filename = f"vllm-bench-{seed}.json"
    argv = launcher() + [
        "bench", "serve", "--backend", "vllm", "--base-url", url, "--model", model, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
        "--max-concurrency", str(args.concurrency), "--num-warmups", "1", "--ignore-eos", "--seed", str(seed),
        "--temperature", "0",  # its default is the server's sampling (temperature 1): slower steps than ours
        "--disable-tqdm", "--save-result", "--result-dir", str(result_dir), "--result-filename", filename,
        "--percentile-metrics", ",".join(LATENCIES),
    ]
    env = {**os.environ, **({"OPENAI_API_KEY": args.api_key} if args.api_key else {})}
    print(f"vllm bench serve: seed {seed}", file=sys.stderr, flush=True)
    log_path = result_dir / f"vllm-bench-{seed}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=900, check=False).returncode
    if code != 0:
        sys.exit(f"vllm bench serve exited with {code}; see {log_path}")
    result = json.loads((result_dir / filename).read_text(encoding="utf-8"))
    if result["completed"] != args.num_prompts:
        sys.exit(f"vllm bench serve: {args.num_prompts - result['completed']} requests failed; see {log_path}")
    return {"output_throughput": result["output_throughput"],
            **{name: result[f"median_{name}_ms"] for name in LATENCIES}}


def compare_clients(args: argparse.Namespace, url: str, model: str, tokenizer: Path, result_dir: Path) -> float:
    """Alternate the two clients `repeats` times; print the medians; return the throughput ratio."""
    from transformers import AutoTokenizer

    vocab_size = AutoTokenizer.from_pretrained(tokenizer).vocab_size  # without the added special tokens
    runs = {"ours": [], "vllm": []}
    for repeat in range(args.repeats):
        runs["ours"].append(ours(args, url, model, vocab_size, seed=2 * repeat))
        runs["vllm"].append(vllms(args, url, model, tokenizer, result_dir, seed=2 * repeat + 1))
    medians = {client: {key: statistics.median(run[key] for run in client_runs) for key in client_runs[0]}
               for client, client_runs in runs.items()}
    print(f"concurrency {args.concurrency}, {args.num_prompts} requests, {args.input_len} in / {args.output_len} out "
          f"tokens, median of {args.repeats} alternating runs each")
    print(f"{'':24}{'ours':>12}{'vllm bench':>12}")
    for key in ("output_throughput", *LATENCIES):
        label = "output tok/s" if key == "output_throughput" else f"median {key.upper()} ms"
        print(f"{label:24}{medians['ours'][key]:12.2f}{medians['vllm'][key]:12.2f}")
    print("output tok/s per run:  ours " + ", ".join(f"{run['output_throughput']:.1f}" for run in runs["ours"])
          + "; vllm " + ", ".join(f"{run['output_throughput']:.1f}" for run in runs["vllm"]))
    return medians["ours"]["output_throughput"] / medians["vllm"]["output_throughput"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        result_dir = args.result_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-client-")))
        result_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = args.tokenizer
        if tokenizer is None:
            from llm_parity.tiny_model import build_tiny_model

            tokenizer = build_tiny_model(log=lambda message: print(message, file=sys.stderr))
        if args.server_url:
            url, model = args.server_url.rstrip("/"), args.model or first_served_model(args.server_url, args.api_key)
        else:
            from llm_parity.profiles import DEMO_PROFILE, load_profile

            spec = spec_from_profile(load_profile(DEMO_PROFILE), tokenizer, api_key=args.api_key)
            print("starting vLLM on the tiny model ...", file=sys.stderr, flush=True)
            server = stack.enter_context(VllmServer(spec, log_path=result_dir / "server.log",
                                                    cache_dir=PROJECT_ROOT / ".cache", health_timeout_s=900))
            url, model = server.url, args.model or spec.served_name
        ratio = compare_clients(args, url, model, tokenizer, result_dir)
    print(f"ratio ours/vllm: {ratio:.3f} (goal >= {GOAL}): {'met' if ratio >= GOAL else 'NOT met'}")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
