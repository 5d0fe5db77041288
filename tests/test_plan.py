"""The memory plan: parameter count and KV cache of the seed's KoLlama-3-8B config checked against
hand-computed values, per-card splits, fit against a card, the schema, the Markdown, config errors."""
import json

import pytest

from llm_parity.plan import GIB, load_config, plan_memory, render_plan
from llm_parity.results import validate

# KoLlama-3-8B-Instruct's config.json (Llama-3-8B's architecture), the fields the plan reads.
KOLLAMA = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": False, "attention_bias": False,
           "mlp_bias": False, "torch_dtype": "bfloat16"}

# By hand: embeddings; per layer q,o (4096x4096) + k,v (4096x1024) + gate,up,down (4096x14336)
# + two RMSNorms; final norm; untied lm_head.
EMBEDDINGS = 128256 * 4096
PER_LAYER = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096
KOLLAMA_PARAMS = EMBEDDINGS + 32 * PER_LAYER + 4096 + 128256 * 4096
KV_PER_TOKEN = 2 * 32 * 8 * 128 * 2


def test_seed_config_parameters_and_weights():
    plan = plan_memory(KOLLAMA)
    assert KOLLAMA_PARAMS == 8_030_261_248
    assert plan["parameters"] == KOLLAMA_PARAMS
    assert plan["weights_bytes"] == KOLLAMA_PARAMS * 2
    assert plan["weights_bytes"] == pytest.approx(16.06e9, rel=1e-3)


def test_seed_config_kv_cache():
    plan = plan_memory(KOLLAMA, max_model_len=8192, max_num_seqs=16)
    assert plan["kv_bytes_per_token"] == KV_PER_TOKEN == 131072
    assert plan["kv_bytes_total"] == 131072 * 8192 * 16


def test_tensor_parallel_two_halves_weights_and_kv_per_card():
    one, two = plan_memory(KOLLAMA)["per_card"]
    assert (one["tensor_parallel_size"], two["tensor_parallel_size"]) == (1, 2)
    assert two["weights_bytes"] * 2 == one["weights_bytes"]
    assert two["kv_bytes"] * 2 == one["kv_bytes"]
    assert one["total_bytes"] == one["weights_bytes"] + one["kv_bytes"] + 2 * GIB


def test_fits_on_64_gib_card_at_tp_1_and_2():
    plan = plan_memory(KOLLAMA)
    for card in plan["per_card"]:
        assert card["fits"]
        assert card["budget_bytes"] == int(64 * GIB * 0.9)
        assert card["headroom_bytes"] == card["budget_bytes"] - card["total_bytes"] > 0


def test_does_not_fit_on_16_gib_card_at_tp_1():
    one = plan_memory(KOLLAMA, card_memory_bytes=16 * GIB, tensor_parallel_sizes=(1,))["per_card"][0]
    assert not one["fits"]
    assert one["headroom_bytes"] < 0


def test_document_is_valid_against_its_schema():
    plan = plan_memory(KOLLAMA)
    validate(plan, "plan", "plan.json")
    assert plan["schema"] == "llm-parity/plan/v1"
    json.dumps(plan, allow_nan=False)


def test_render_mentions_kv_per_token_and_every_tp():
    text = render_plan(plan_memory(KOLLAMA))
    assert "128.00 KiB" in text
    assert "| TP=1 bfloat16 |" in text and "| TP=2 bfloat16 |" in text
    assert "16.00 GiB" in text  # KV cache at 8192 x 16


def test_tied_embeddings_drop_lm_head():
    tied = plan_memory({**KOLLAMA, "tie_word_embeddings": True})
    assert tied["parameters"] == KOLLAMA_PARAMS - 128256 * 4096


def test_defaults_kv_heads_and_head_dim():
    config = {key: value for key, value in KOLLAMA.items() if key != "num_key_value_heads"}
    plan = plan_memory(config)
    assert plan["config"]["num_key_value_heads"] == 32
    assert plan["config"]["head_dim"] == 128
    assert plan["kv_bytes_per_token"] == 4 * KV_PER_TOKEN


def test_float32_doubles_weights():
    assert plan_memory(KOLLAMA, dtype="float32")["weights_bytes"] == KOLLAMA_PARAMS * 4
    with pytest.raises(ValueError, match="int8"):
        plan_memory(KOLLAMA, dtype="int8")


def test_load_config_from_folder_or_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(KOLLAMA), encoding="utf-8")
    assert load_config(str(tmp_path)) == KOLLAMA
    assert load_config(str(tmp_path / "config.json")) == KOLLAMA


def test_load_config_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError) as missing:
        load_config(str(tmp_path))
    assert str(tmp_path / "config.json") in str(missing.value)

    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in KOLLAMA.items() if k != "hidden_size"}), encoding="utf-8")
    with pytest.raises(ValueError) as lacking:
        load_config(str(path))
    message = str(lacking.value)
    assert str(path) in message and "hidden_size" in message and "\n" not in message
