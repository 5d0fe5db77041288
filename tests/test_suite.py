"""Suites: the rendered suite keeps the chat template's text beside its ids."""
import pytest

from llm_parity.suite import load_suite_source, render_suite, suite_hash


@pytest.fixture(scope="module")
def default_suite(tiny_model_dir) -> dict:
    return render_suite(load_suite_source(), tiny_model_dir, default_max_tokens=8)


def test_prompt_text_is_the_chat_templates_output_and_is_hashed(tiny_model_dir, default_suite):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    suite = default_suite
    for prompt in suite["prompts"]:
        assert prompt["prompt_text"] == tokenizer.apply_chat_template(prompt["messages"], tokenize=False,
                                                                      add_generation_prompt=True)
        assert tokenizer.decode(prompt["prompt_ids"]) == prompt["prompt_text"]
    edited = [{**suite["prompts"][0], "prompt_text": suite["prompts"][0]["prompt_text"] + " "}, *suite["prompts"][1:]]
    assert suite_hash(edited, suite["passages"], suite["stop_ids"]) != suite["sha256"]
