"""Memory a vLLM deployment needs, from a model's config.json alone: weights, the KV cache at
max-model-len × max-num-seqs (the seed's memory table left it out), and whether that fits a card
at each tensor-parallel size."""
from __future__ import annotations

import json
from pathlib import Path

from llm_parity.results import schema_tag

GIB = 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Ascend 910B: 64 GB of HBM, taken as 64 GiB (what the driver reports as the card's total).
ASCEND_910B_BYTES = 64 * GIB
# Per card, outside weights and KV cache: activations of vLLM's profiling forward pass, compiled
# graphs, the communication and runtime buffers. A rule of thumb for an 8B model, not a measurement.
DEFAULT_OVERHEAD_BYTES = 2 * GIB


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _fields(config: dict) -> dict:
    """The config fields the plan uses, with Llama's defaults filled in; ValueError names a missing one."""
    for name in REQUIRED_FIELDS:
        value = config.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config field {name}: missing or not a positive integer (found {value!r})")
    fields = {name: config[name] for name in REQUIRED_FIELDS}
    fields["num_key_value_heads"] = config.get("num_key_value_heads") or config["num_attention_heads"]
    fields["head_dim"] = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    fields["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", False))
    fields["attention_bias"] = bool(config.get("attention_bias", False))
    fields["mlp_bias"] = bool(config.get("mlp_bias", False))
    return fields


def parameter_count(fields: dict) -> int:
    """Parameters of a Llama-style decoder (embeddings, attention, gated MLP, RMSNorms, lm_head)."""
    hidden, inter = fields["hidden_size"], fields["intermediate_size"]
    q_width = fields["num_attention_heads"] * fields["head_dim"]
    kv_width = fields["num_key_value_heads"] * fields["head_dim"]
    attention = hidden * q_width + 2 * hidden * kv_width + q_width * hidden
    if fields["attention_bias"]:
        attention += q_width + 2 * kv_width + hidden
    mlp = 3 * hidden * inter + (2 * inter + hidden if fields["mlp_bias"] else 0)
    layer = attention + mlp + 2 * hidden
    embeddings = fields["vocab_size"] * hidden
    lm_head = 0 if fields["tie_word_embeddings"] else embeddings
    return embeddings + fields["num_hidden_layers"] * layer + hidden + lm_head


def kv_bytes_per_token(fields: dict, dtype_bytes: int, kv_heads: int | None = None) -> int:
    """K and V, every layer, `kv_heads` heads (default: all of them)."""
    heads = fields["num_key_value_heads"] if kv_heads is None else kv_heads
    return 2 * fields["num_hidden_layers"] * heads * fields["head_dim"] * dtype_bytes


def plan_memory(config: dict, *, dtype: str = "bfloat16", max_model_len: int = 8192, max_num_seqs: int = 16,
                card_memory_bytes: int = ASCEND_910B_BYTES, gpu_memory_utilization: float = 0.9,
                overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
                tensor_parallel_sizes: tuple[int, ...] = (1, 2)) -> dict:
    """The plan document (schemas/plan.schema.json) for serving `config` with these vLLM flags.

    The KV cache is the worst case: every one of `max_num_seqs` sequences at `max_model_len`.
    A card's budget is `card_memory_bytes * gpu_memory_utilization`, as vLLM computes it."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    fields = _fields(config)
    width = DTYPE_BYTES[dtype]
    params = parameter_count(fields)
    tokens = max_model_len * max_num_seqs
    budget = int(card_memory_bytes * gpu_memory_utilization)
    per_card = []
    for tp in tensor_parallel_sizes:
        # KV heads are split across cards; vLLM replicates them when there are fewer heads than cards.
        kv_heads = _ceil_div(fields["num_key_value_heads"], tp)
        weights = _ceil_div(params * width, tp)
        kv = kv_bytes_per_token(fields, width, kv_heads) * tokens
        total = weights + kv + overhead_bytes
        per_card.append({"tensor_parallel_size": tp, "weights_bytes": weights, "kv_bytes": kv,
                         "overhead_bytes": overhead_bytes, "total_bytes": total, "budget_bytes": budget,
                         "headroom_bytes": budget - total, "fits": total <= budget})
    return {
        "schema": schema_tag("plan"),
        "inputs": {"dtype": dtype, "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
                   "card_memory_bytes": card_memory_bytes, "gpu_memory_utilization": gpu_memory_utilization,
                   "overhead_bytes": overhead_bytes},
        "config": fields,
        "parameters": params,
        "weights_bytes": params * width,
        "kv_bytes_per_token": kv_bytes_per_token(fields, width),
        "kv_bytes_total": kv_bytes_per_token(fields, width) * tokens,
        "per_card": per_card,
        "notes": [
            "Weights and KV cache are split evenly across cards (KV heads are replicated when fewer than cards); "
            "in practice embeddings and norms are replicated, so per-card needs are a lower bound.",
            f"KV cache is the worst case: {max_num_seqs} sequences × {max_model_len} tokens, all full.",
            f"overhead_bytes ({overhead_bytes / GIB:.2f} GiB per card) covers activations, compiled graphs "
            "and runtime buffers: an estimate, not a measurement.",
            f"Budget per card: {card_memory_bytes / GIB:.2f} GiB × gpu_memory_utilization {gpu_memory_utilization}"
            + (" (Ascend 910B: 64 GB taken as 64 GiB)." if card_memory_bytes == ASCEND_910B_BYTES else "."),
        ],
    }


def load_config(model: str) -> dict:
    """config.json of a model folder, or the file itself; ValueError names the path and the field."""
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})".replace("\n", " ")) from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    try:
        _fields(config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return config


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def render_plan(plan: dict) -> str:
    """A Markdown table (config | weights | KV cache | HBM need | fits) and the KV cache per token."""
    inputs = plan["inputs"]
    lines = ["| config | weights | KV cache | HBM need | fits (budget, headroom) |", "|---|---|---|---|---|"]
    for card in plan["per_card"]:
        tp = card["tensor_parallel_size"]
        per = "/card" if tp > 1 else ""
        fits = "yes" if card["fits"] else "no"
        lines.append(f"| TP={tp} {inputs['dtype']} | {_gib(card['weights_bytes'])}{per} | {_gib(card['kv_bytes'])}{per} "
                     f"| {_gib(card['total_bytes'])}{per} | {fits} ({_gib(card['budget_bytes'])}, "
                     f"{_gib(card['headroom_bytes'])}) |")
    lines += ["", f"{plan['parameters']:,} parameters, {plan['weights_bytes'] / 1e9:.2f} GB of weights; KV cache {plan['kv_bytes_per_token'] / 1024:.2f} KiB per token, "
              f"{_gib(plan['kv_bytes_total'])} at max-model-len {inputs['max_model_len']} × "
              f"max-num-seqs {inputs['max_num_seqs']}.", ""]
    lines += [f"- {note}" for note in plan["notes"]]
    return "\n".join(lines) + "\n"
