"""How long does the compare step take on a large run? Builds, in memory, a suite of 10,000 prompts
and both sides' generation and perplexity documents (64 output tokens per prompt, top-5 at every
position, bf16-sized logprob noise, a few greedy splits within each other's top-k), then times
llm_parity.compare.compare_runs on them. Goal: at most 5 s.

    python benchmarks/compare_10k.py [--records 10000] [--output-len 64] [--splits 20]
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np

from llm_parity.compare import compare_runs
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.records import Generation, PassageScore, decoding_of, generations_doc, perplexity_doc, sort_top_k
from llm_parity.results import schema_tag, validate
from llm_parity.suite import suite_hash

GOAL_S = 5.0
VOCAB = 128_000
TOP_K = 5
PROMPT_LEN = 48
PASSAGES = 4
PASSAGE_LEN = 256
NOISE = 1e-3  # |Δ logprob| between the sides, well inside the bf16 threshold
MODEL_SHA = "b" * 64
SPLIT_AT = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="generation records per side (default 10000)")
    parser.add_argument("--output-len", type=int, default=64, help="output tokens per record (default 64)")
    parser.add_argument("--splits", type=int, default=20, help="records whose sides split within top-k (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def single(value: float) -> float:
    """`value` as the nearest float32: real logprobs come out of float32 arithmetic on both sides."""
    return float(np.float32(value))


def top_k(pairs) -> list[list]:
    return sort_top_k([(token, single(value)) for token, value in pairs], TOP_K)


def top_k_at(rng: random.Random, chosen: int) -> list[list]:
    """One position's top-k, the chosen token first, the runners-up 0.5 to 4 nats below it."""
    best = -rng.uniform(0.01, 1.0)
    others = [token for token in rng.sample(range(VOCAB), TOP_K) if token != chosen][:TOP_K - 1]
    return top_k([(chosen, best), *((token, best - rng.uniform(0.5, 4.0)) for token in others)])


def generation(prompt: dict, top: list[list[list]], *, chat: bool) -> Generation:
    """A generation record whose output is the best token of each position of `top`."""
    output_ids = [position[0][0] for position in top]
    return Generation(id=prompt["id"], prompt_ids=list(prompt["prompt_ids"]), output_ids=output_ids,
                      text=" ".join(f"w{token}" for token in output_ids), logprobs=[position[0][1] for position in top],
                      top_logprobs=top, finish_reason="length", prompt_tokens=len(prompt["prompt_ids"]),
                      completion_tokens=len(output_ids), chat_prompt_ids=list(prompt["prompt_ids"]) if chat else None)


def noisy(rng: random.Random, top: list[list]) -> list[list]:
    return top_k([(token, value + rng.uniform(-NOISE, NOISE)) for token, value in top])


def split(rng: random.Random, target_top: list[list[list]], output_len: int) -> list[list[list]]:
    """The reference's top-k for a record that splits at SPLIT_AT: a near-tie that the two sides
    rank the other way round, then a continuation of its own."""
    tie = target_top[SPLIT_AT]
    first, second = tie[0], tie[1]
    tie[1] = [second[0], single(first[1] - 0.004)]  # target: a 0.004-nat margin
    reference_tie = top_k([(second[0], first[1]), (first[0], first[1] - 0.003), *map(tuple, tie[2:])])
    return ([noisy(rng, top) for top in target_top[:SPLIT_AT]] + [reference_tie]
            + [top_k_at(rng, rng.randrange(VOCAB)) for _ in range(SPLIT_AT + 1, output_len)])


def synthetic_suite(rng: random.Random, records: int, output_len: int) -> dict:
    """A rendered suite of `records` prompts of random ids and PASSAGES passages, hashed as a run hashes it."""
    prompts = [{"id": f"p{index:05d}", "kind": "synthetic",
                "messages": [{"role": "user", "content": f"prompt {index}"}],
                "prompt_ids": [rng.randrange(VOCAB) for _ in range(PROMPT_LEN)], "max_tokens": output_len}
               for index in range(records)]
    passages = [{"id": f"passage{index}", "text": f"passage {index}",
                 "ids": [rng.randrange(VOCAB) for _ in range(PASSAGE_LEN)]} for index in range(PASSAGES)]
    stop_ids = [128001, 128009]
    return {"schema": schema_tag("suite"), "name": f"synthetic-{records}", "sha256": suite_hash(prompts, passages, stop_ids),
            "source_sha256": "c" * 64, "tokenizer_sha256": "d" * 64, "stop_ids": stop_ids,
            "prompts": prompts, "passages": passages}


def record_pair(rng: random.Random, prompt: dict, output_len: int, *, splits: bool) -> tuple[Generation, Generation]:
    """The target's and the reference's record of one prompt: the same answer with logprob noise, or
    with `splits`, answers that split within each other's top-k at SPLIT_AT."""
    top = [top_k_at(rng, rng.randrange(VOCAB)) for _ in range(output_len)]
    if splits and output_len > SPLIT_AT:
        reference_top = split(rng, top, output_len)
    else:
        reference_top = [noisy(rng, position) for position in top]
    return generation(prompt, top, chat=True), generation(prompt, reference_top, chat=False)


def splits_here(index: int, records: int, splits: int) -> bool:
    """Whether record `index` is one of the `splits` spread evenly over `records`."""
    return bool(splits) and index % max(1, records // splits) == 0


def passage_scores(rng: random.Random, passages: list[dict]) -> dict[str, list[PassageScore]]:
    """Each side's scores of the passages, the reference's with logprob noise."""
    scores = {"target": [], "reference": []}
    for passage in passages:
        logprobs = [single(-rng.uniform(0.5, 5.0)) for _ in passage["ids"][1:]]
        scores["target"].append(PassageScore(id=passage["id"], logprobs=logprobs))
        scores["reference"].append(PassageScore(id=passage["id"], logprobs=[single(v + rng.uniform(-NOISE, NOISE))
                                                                             for v in logprobs]))
    return scores


def build_run(args: argparse.Namespace) -> dict:
    """The keyword arguments of compare_runs for a synthetic run of `args.records` prompts."""
    rng = random.Random(args.seed)
    suite = synthetic_suite(rng, args.records, args.output_len)
    pairs = [record_pair(rng, prompt, args.output_len, splits=splits_here(index, args.records, args.splits))
             for index, prompt in enumerate(suite["prompts"])]
    decoding = decoding_of({"top_logprobs": TOP_K}, "bfloat16")
    ppl = passage_scores(rng, suite["passages"])
    return {
        "suite": suite,
        "target": generations_doc("target", suite, MODEL_SHA, decoding, [target for target, _ in pairs]),
        "reference": generations_doc("reference", suite, MODEL_SHA, decoding, [reference for _, reference in pairs]),
        "target_ppl": perplexity_doc("target", suite, MODEL_SHA, ppl["target"]),
        "reference_ppl": perplexity_doc("reference", suite, MODEL_SHA, ppl["reference"]),
    }


def check_shapes(run: dict) -> None:
    """The documents are valid files of their kinds (checked on a slice: the whole is slow to validate)."""
    for key, name in (("suite", "suite"), ("target", "generations"), ("reference", "generations"),
                      ("target_ppl", "perplexity"), ("reference_ppl", "perplexity")):
        doc = run[key]
        items = "prompts" if name == "suite" else "records"
        validate({**doc, items: doc[items][:50]}, name, f"synthetic {key}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    run = build_run(args)
    check_shapes(run)
    print(f"built {args.records} records per side ({args.output_len} tokens, top-{TOP_K}) "
          f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    profile = load_profile(DEMO_PROFILE)
    started = time.perf_counter()
    result = compare_runs(**run, thresholds=profile.thresholds("bfloat16"), profile=profile.name)
    seconds = time.perf_counter() - started
    summary = result["summary"]
    print(f"compare_runs on {summary['prompts']} prompts: {seconds:.2f} s (goal <= {GOAL_S:g} s): "
          f"{'met' if seconds <= GOAL_S else 'NOT met'}")
    print(f"verdict {result['verdict']}: {summary['identical']} identical, {summary['split_within_top_k']} split "
          f"within top-k, {summary['split_outside_top_k']} outside, {summary['compared_tokens']} tokens compared")
    return 0 if seconds <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
