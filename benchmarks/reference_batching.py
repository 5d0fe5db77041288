"""Wall time of the transformers reference one prompt at a time against memory-sized batches.

The model is a Llama-3-shaped decoder with random weights, big enough (about 90M parameters,
the real 128,256-token vocabulary) that the model's work, not Python, dominates; it borrows the
tiny model's tokenizer, so the default suite renders exactly as in the demo. Both runs go in
the same process on the same machine, one after the other, at each answer length: prefill and
perplexity cost the same either way, so the longer the answers, the more batching saves.
Random weights never pick EOS, so every answer runs to max_tokens.

    python benchmarks/reference_batching.py [--max-tokens 32,256] [--prompts 14] [--device cpu]
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from llm_parity.records import Generation
from llm_parity.reference import TransformersRunner, run_reference
from llm_parity.suite import TOKENIZER_FILES, load_suite_source, render_suite
from llm_parity.tiny_model import build_tiny_model

ARCHITECTURE = {
    "vocab_size": 128256,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}
GOAL = 5.0
TOP_LOGPROBS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=_lengths, default=[32, 256],
                        help="new tokens per prompt, comma-separated for several runs "
                             "(default 32,256: short answers, and the KoLlama profile's max_tokens)")
    parser.add_argument("--prompts", type=int, default=None,
                        help="how many prompts, the default suite's repeated as needed (default: the suite's 14)")
    parser.add_argument("--device", default="cpu", help="torch device for the reference (default cpu; cuda works)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice); 1 is steadier on a busy machine")
    return parser.parse_args(argv)


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, not {text!r}") from None
    if any(length < 1 for length in lengths):
        raise argparse.ArgumentTypeError(f"every length must be at least 1: {text!r}")
    return lengths


def build_model(folder: Path) -> int:
    """A random-weight Llama saved to `folder` with the tiny model's tokenizer; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = build_tiny_model(log=lambda line: None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**ARCHITECTURE))
    model.save_pretrained(folder)
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (tiny / name).is_file():
            shutil.copyfile(tiny / name, folder / name)
    return sum(parameter.numel() for parameter in model.parameters())


def benchmark_suite(model_dir: Path, *, max_tokens: int, prompts: int | None) -> dict:
    """The default suite rendered for `model_dir`, its prompts cut or repeated to `prompts`."""
    suite = render_suite(load_suite_source(), model_dir, default_max_tokens=max_tokens)
    count = prompts or len(suite["prompts"])
    cycled = itertools.islice(itertools.cycle(suite["prompts"]), count)
    return {**suite, "prompts": [{**prompt, "id": f"{prompt['id']}-{i}"} for i, prompt in enumerate(cycled)]}


def timed(runner: TransformersRunner, suite: dict, batch_size: int) -> tuple[float, list[Generation]]:
    started = time.perf_counter()
    generations, _perplexity = run_reference(runner, suite, top_logprobs=TOP_LOGPROBS, log=lambda line: None,
                                             batch_size=batch_size)
    return time.perf_counter() - started, generations


def compare_at(runner: TransformersRunner, model_dir: Path, *, max_tokens: int, prompts: int | None) -> float:
    """Both runs at one answer length; prints and returns the speed-up."""
    suite = benchmark_suite(model_dir, max_tokens=max_tokens, prompts=prompts)
    chosen = runner.prompt_batch_size(suite["prompts"])
    one_s, one = timed(runner, suite, 1)
    batched_s, batched = timed(runner, suite, chosen)
    identical = sum(a.output_ids == b.output_ids for a, b in zip(one, batched))
    ratio = one_s / batched_s
    print(f"max_tokens {max_tokens}, {len(suite['prompts'])} prompts, {len(suite['passages'])} passages: "
          f"one at a time {one_s:.2f} s, batches of up to {chosen} {batched_s:.2f} s: "
          f"{ratio:.2f}x (goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'not met'}); "
          f"identical outputs {identical}/{len(one)}", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        parameters = build_model(model_dir)
        print(f"model: {parameters / 1e6:.0f}M parameters, float32, {args.device}, {torch.get_num_threads()} threads",
              flush=True)
        stop_ids = render_suite(load_suite_source(), model_dir, default_max_tokens=1)["stop_ids"]
        with TransformersRunner(model_dir, dtype="float32", device=args.device, stop_ids=stop_ids) as runner:
            for max_tokens in args.max_tokens:
                compare_at(runner, model_dir, max_tokens=max_tokens, prompts=args.prompts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
