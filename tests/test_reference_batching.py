"""The batched transformers reference gives the same records as one prompt at a time: left
padding, masks and position ids change nothing in float32, and one bad prompt fails alone."""
import pytest

from llm_parity.records import Generation
from llm_parity.reference import TransformersRunner, batch_size_for, length_batches, run_reference
from llm_parity.suite import load_suite_source, render_suite

pytestmark = pytest.mark.integration

TOP_LOGPROBS = 5
TOLERANCE = 1e-5
# Smaller than the suite, so there are several batches and the last one is partial.
BATCH_SIZE = 5


@pytest.fixture(scope="module")
def suite(tiny_model_dir):
    return render_suite(load_suite_source(), tiny_model_dir, default_max_tokens=48)


@pytest.fixture(scope="module")
def runner(tiny_model_dir, suite):
    with TransformersRunner(tiny_model_dir, dtype="float32", stop_ids=suite["stop_ids"]) as runner:
        yield runner


@pytest.fixture(scope="module")
def one_at_a_time(runner, suite):
    return run_reference(runner, suite, top_logprobs=TOP_LOGPROBS, log=lambda line: None, batch_size=1)


def assert_same_generation(batched: Generation, alone: Generation) -> None:
    batched, alone = batched.to_json(), alone.to_json()
    assert batched["id"] == alone["id"]
    for key in ("prompt_ids", "output_ids", "text", "finish_reason", "usage", "error"):
        assert batched[key] == alone[key], (alone["id"], key)
    assert batched["logprobs"] == pytest.approx(alone["logprobs"], abs=TOLERANCE, rel=0)
    assert len(batched["top_logprobs"]) == len(alone["top_logprobs"])
    for top_batched, top_alone in zip(batched["top_logprobs"], alone["top_logprobs"]):
        assert [token for token, _ in top_batched] == [token for token, _ in top_alone]


def test_batched_generations_and_perplexity_equal_one_at_a_time(runner, suite, one_at_a_time):
    lengths = [len(prompt["prompt_ids"]) for prompt in suite["prompts"]]
    batches = length_batches(lengths, BATCH_SIZE)
    assert any(len({lengths[i] for i in batch}) > 1 for batch in batches)  # padding happens
    lines = []
    generations, perplexity = run_reference(runner, suite, top_logprobs=TOP_LOGPROBS, log=lines.append,
                                            batch_size=BATCH_SIZE)
    alone_generations, alone_perplexity = one_at_a_time
    assert [g.id for g in generations] == [p["id"] for p in suite["prompts"]]
    for batched, alone in zip(generations, alone_generations, strict=True):
        assert_same_generation(batched, alone)
    assert {g.finish_reason for g in generations} == {"stop", "length"}  # rows stop at different steps
    assert [p.id for p in perplexity] == [p["id"] for p in suite["passages"]]
    for batched, alone in zip(perplexity, alone_perplexity, strict=True):
        assert batched.logprobs == pytest.approx(alone.logprobs, abs=TOLERANCE, rel=0)
        assert batched.perplexity == pytest.approx(alone.perplexity, abs=TOLERANCE, rel=0)
    assert f"reference: {len(suite['prompts'])} prompts in batches of up to " in "\n".join(lines)


def test_memory_sized_batches_equal_one_at_a_time(runner, suite, one_at_a_time):
    assert runner.prompt_batch_size(suite["prompts"]) > 1  # a 2-layer model fits many prompts in memory
    generations, _ = run_reference(runner, suite, top_logprobs=TOP_LOGPROBS, log=lambda line: None)
    for batched, alone in zip(generations, one_at_a_time[0], strict=True):
        assert_same_generation(batched, alone)


def test_position_ids_count_only_real_tokens(runner, suite):
    """RoPE only sees position differences, so shifted positions would pass the test above by
    float luck; the positions themselves must ignore the padding."""
    short, long = sorted(suite["prompts"][:2], key=lambda prompt: len(prompt["prompt_ids"]))
    n_short, n_long = len(short["prompt_ids"]), len(long["prompt_ids"])
    assert n_short < n_long
    seen = []
    hook = runner.model.model.rotary_emb.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].tolist()), with_kwargs=True)
    try:
        runner.generate_batch([{**short, "max_tokens": 2}, {**long, "max_tokens": 2}], top_logprobs=TOP_LOGPROBS)
    finally:
        hook.remove()
    *prefill, decode = seen
    assert prefill == [[list(range(n_short))], [list(range(n_long))]]  # each prompt prefilled alone
    assert decode == [[n_short], [n_long]]


def test_finished_rows_leave_the_batch(runner, suite):
    prompts = [{**prompt, "max_tokens": max_tokens} for prompt, max_tokens in zip(suite["prompts"][:3], (2, 7, 4))]
    rows_per_call = []
    hook = runner.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_per_call.append(len(kwargs["input_ids"])), with_kwargs=True)
    try:
        records = runner.generate_batch(prompts, top_logprobs=TOP_LOGPROBS)
    finally:
        hook.remove()
    lengths = [len(record.output_ids) for record in records]
    assert len(set(lengths)) > 1
    decode_calls = rows_per_call[len(prompts):]  # after one prefill per prompt
    assert decode_calls == [sum(length > step for length in lengths) for step in range(1, max(lengths))]
    for record, prompt in zip(records, prompts, strict=True):
        assert_same_generation(record, runner.generate(prompt, top_logprobs=TOP_LOGPROBS))


def test_one_bad_prompt_fails_alone(runner, suite, one_at_a_time):
    vocab_size = runner.model.config.vocab_size
    bad = {**suite["prompts"][1], "prompt_ids": suite["prompts"][1]["prompt_ids"] + [vocab_size + 7]}
    broken = {**suite, "prompts": [suite["prompts"][0], bad, suite["prompts"][2]], "passages": []}
    generations, perplexity = run_reference(runner, broken, top_logprobs=TOP_LOGPROBS, log=lambda line: None,
                                            batch_size=3)
    assert "outside the model's vocabulary" in generations[1].error
    assert generations[1].output_ids == [] and generations[1].finish_reason is None
    assert_same_generation(generations[0], one_at_a_time[0][0])
    assert_same_generation(generations[2], one_at_a_time[0][2])
    assert perplexity == []


def test_batch_size_grows_with_the_budget_never_zero_and_capped():
    per_sequence = 1000
    sizes = [batch_size_for(budget, per_sequence, 64) for budget in (0, 999, 1000, 5_500, 40_000, 10**9)]
    assert sizes == [1, 1, 1, 5, 40, 64]
    assert batch_size_for(10**9, per_sequence, 0) == 1


def test_length_batches_group_similar_lengths_cap_the_size_and_limit_padding():
    lengths = [30, 244, 18, 40, 33, 22, 41]

    def batched(size: int, padding_limit: int | None = None) -> list[list[int]]:
        return [[lengths[i] for i in batch] for batch in length_batches(lengths, size, padding_limit)]

    assert batched(3) == [[18, 22, 30], [33, 40, 41], [244]]
    assert batched(10) == [[18, 22, 30, 33, 40, 41, 244]]
    # 244 would pad the six rows before it by 203 tokens each.
    assert batched(10, padding_limit=6 * 203 - 1) == [[18, 22, 30, 33, 40, 41], [244]]
    assert batched(10, padding_limit=6 * 203) == [[18, 22, 30, 33, 40, 41, 244]]
    # 22 pads 18 by 4, 30 pads both by 8 each.
    assert batched(10, padding_limit=15) == [[18, 22], [30, 33, 40, 41], [244]]
    shortest_first = sorted(range(len(lengths)), key=lengths.__getitem__)
    assert length_batches(lengths, 1) == [[i] for i in shortest_first]
    assert length_batches([], 4) == []


def test_sequence_bytes_come_from_the_model_config(runner):
    config = runner.model.config
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4  # float32
    assert runner.sequence_bytes(101, logit_rows=1) - runner.sequence_bytes(100, logit_rows=1) == kv_per_token
    assert runner.sequence_bytes(100, logit_rows=2) - runner.sequence_bytes(100, logit_rows=1) >= config.vocab_size * 4
    assert 1 <= runner.forward_batch_size([50] * 3) <= 3


def random_model(folder, tiny_model_dir, model_class, config):
    """A random-weight model of another architecture saved with the tiny model's tokenizer."""
    import shutil

    import torch

    from llm_parity.suite import TOKENIZER_FILES

    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copyfile(tiny_model_dir / name, folder / name)
    return folder


def mistral_with_a_sliding_window():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM, MistralConfig(vocab_size=128256, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=16)


def lfm2_with_recurrent_state():
    from transformers import Lfm2Config, Lfm2ForCausalLM

    return Lfm2ForCausalLM, Lfm2Config(vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       layer_types=["conv", "full_attention"])


@pytest.mark.parametrize(("architecture", "joins_rows", "drops_rows"),
                         [(mistral_with_a_sliding_window, False, True), (lfm2_with_recurrent_state, False, False)])
def test_caches_that_cannot_be_joined_still_batch_to_the_same_records(tmp_path, tiny_model_dir, suite, architecture,
                                                                     joins_rows, drops_rows):
    """A sliding-window cache keeps only its window and recurrent state has no positions, so
    neither can be left-padded after the fact: such models take one padded batch prefill, and
    finished rows leave the batch only where every cache layer can drop them."""
    folder = random_model(tmp_path, tiny_model_dir, *architecture())
    prompts = [{**prompt, "max_tokens": max_tokens} for prompt, max_tokens in zip(suite["prompts"][:4], (3, 24, 9, 16))]
    n_tokens = [len(prompt["prompt_ids"]) for prompt in prompts]
    assert len(set(n_tokens)) > 1 and max(n_tokens) > 16  # padded, and longer than the window
    with TransformersRunner(folder, dtype="float32", stop_ids=suite["stop_ids"]) as runner:
        assert (runner._joins_rows, runner._drops_rows) == (joins_rows, drops_rows)
        batched = runner.generate_batch(prompts, top_logprobs=TOP_LOGPROBS)
        for record, prompt in zip(batched, prompts, strict=True):
            assert_same_generation(record, runner.generate(prompt, top_logprobs=TOP_LOGPROBS))
    assert len({len(record.output_ids) for record in batched}) > 1  # rows finished at different steps


def test_padded_prefill_positions_count_only_real_tokens(tmp_path, tiny_model_dir, suite):
    folder = random_model(tmp_path, tiny_model_dir, *mistral_with_a_sliding_window())
    short, long = sorted(suite["prompts"][:2], key=lambda prompt: len(prompt["prompt_ids"]))
    n_short, n_long = len(short["prompt_ids"]), len(long["prompt_ids"])
    seen = []
    with TransformersRunner(folder, dtype="float32", stop_ids=suite["stop_ids"]) as runner:
        hook = runner.model.model.rotary_emb.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["position_ids"].tolist()), with_kwargs=True)
        runner.generate_batch([{**short, "max_tokens": 2}, {**long, "max_tokens": 2}], top_logprobs=TOP_LOGPROBS)
        hook.remove()
    prefill, decode = seen
    assert prefill[0][n_long - n_short:] == list(range(n_short)) and prefill[1] == list(range(n_long))
    assert decode == [[n_short], [n_long]]


def test_llama_caches_are_joined_and_drop_rows(runner):
    assert (runner._joins_rows, runner._drops_rows) == (True, True)


def test_one_prompt_equals_transformers_generate(runner, suite):
    """An independent check of prefill, cache joining and decoding: transformers' own greedy generate."""
    import torch

    prompt = {**suite["prompts"][2], "max_tokens": 12}
    ours = runner.generate(prompt, top_logprobs=TOP_LOGPROBS)
    with torch.inference_mode():
        theirs = runner.model.generate(torch.tensor([prompt["prompt_ids"]]), do_sample=False, max_new_tokens=12,
                                       eos_token_id=sorted(runner.stop_ids), pad_token_id=0)
    assert ours.output_ids == theirs[0, len(prompt["prompt_ids"]):].tolist()
