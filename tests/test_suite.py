"""Suites: the JSON suite file and the JSONL chat-request format load to the same source, bad
lines are refused by line number, --limit cuts and re-hashes, and the rendered suite keeps the
chat template's text beside its ids."""
import json
from pathlib import Path

import pytest

from llm_parity.results import ResultFileError, read_json, schema_tag, validate
from llm_parity.suite import DEFAULT_SUITE, load_suite_source, render_suite, suite_hash

GREETING = [{"role": "user", "content": "안녕하세요"}]
WITH_SYSTEM = [{"role": "system", "content": "짧게 대답하세요."}, {"role": "user", "content": "1+1은?"}]
REQUESTS = [
    {"id": "q1", "messages": GREETING},
    {"id": "q2", "kind": "system", "max_tokens": 5, "messages": WITH_SYSTEM},
    {"id": "q3", "messages": [*GREETING, {"role": "assistant", "content": "네"}, {"role": "user", "content": "또"}]},
]


def write_jsonl(folder: Path, lines: list, name: str = "mine.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def refusal(path: Path, **kwargs) -> str:
    with pytest.raises(ResultFileError) as caught:
        load_suite_source(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_jsonl_becomes_a_valid_suite_source_named_after_the_file(tmp_path):
    source = load_suite_source(write_jsonl(tmp_path, [REQUESTS[0], "\n", "  \n", *REQUESTS[1:]]))
    validate(source, "suite-source", "loaded")
    assert source["name"] == "mine" and source["passages"] == []
    assert [(p["id"], p["kind"], p.get("max_tokens")) for p in source["prompts"]] == [
        ("q1", "custom", None), ("q2", "system", 5), ("q3", "custom", None)]


def test_jsonl_renders_to_the_same_ids_as_the_json_format(tmp_path, tiny_model_dir):
    as_jsonl = load_suite_source(write_jsonl(tmp_path, REQUESTS))
    as_json = tmp_path / "mine.json"
    as_json.write_text(json.dumps({"schema": schema_tag("suite-source"), "name": "mine", "passages": [],
                                   "prompts": as_jsonl["prompts"]}, ensure_ascii=False))
    from_jsonl = render_suite(as_jsonl, tiny_model_dir, default_max_tokens=8)
    from_json = render_suite(load_suite_source(as_json), tiny_model_dir, default_max_tokens=8)
    validate(from_jsonl, "suite", "rendered")
    assert from_jsonl["name"] == "mine" and "limit" not in from_jsonl
    assert [p["prompt_ids"] for p in from_jsonl["prompts"]] == [p["prompt_ids"] for p in from_json["prompts"]]
    assert all(p["prompt_ids"] and "render_error" not in p for p in from_jsonl["prompts"])
    assert [p["max_tokens"] for p in from_jsonl["prompts"]] == [8, 5, 8]
    assert from_jsonl["sha256"] == from_json["sha256"] and from_jsonl["source_sha256"] == from_json["source_sha256"]


def test_both_hashes_cover_a_jsonl_suites_text(tmp_path, tiny_model_dir):
    edited = [{**REQUESTS[0], "messages": [{"role": "user", "content": "안녕히 가세요"}]}, *REQUESTS[1:]]
    first = render_suite(load_suite_source(write_jsonl(tmp_path, REQUESTS, "a.jsonl")), tiny_model_dir, default_max_tokens=8)
    second = render_suite(load_suite_source(write_jsonl(tmp_path, edited, "b.jsonl")), tiny_model_dir, default_max_tokens=8)
    assert first["source_sha256"] != second["source_sha256"] and first["sha256"] != second["sha256"]


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


def test_limit_keeps_the_first_prompts_and_every_passage_and_hashes_differently(tiny_model_dir, default_suite):
    whole = default_suite
    cut = render_suite(load_suite_source(DEFAULT_SUITE, limit=3), tiny_model_dir, default_max_tokens=8)
    validate(cut, "suite", "rendered")
    assert cut["limit"] == 3 and cut["name"] == whole["name"]
    assert cut["prompts"] == whole["prompts"][:3] and cut["passages"] == whole["passages"]
    assert cut["sha256"] != whole["sha256"] and cut["source_sha256"] != whole["source_sha256"]


def test_a_limit_that_cuts_nothing_is_the_whole_suite(tmp_path):
    path = write_jsonl(tmp_path, REQUESTS)
    assert load_suite_source(path, limit=len(REQUESTS)) == load_suite_source(path)
    assert [p["id"] for p in load_suite_source(path, limit=1)["prompts"]] == ["q1"]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_refused(limit):
    with pytest.raises(ValueError, match="limit must be at least 1"):
        load_suite_source(DEFAULT_SUITE, limit=limit)


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_jsonl(tmp_path, [REQUESTS[0], "\n", REQUESTS[1], {**REQUESTS[2], "id": "q1"}])
    assert refusal(path) == 'line 4: duplicate id "q1" (first on line 1)'


def test_malformed_line_is_named(tmp_path):
    path = write_jsonl(tmp_path, [REQUESTS[0], '{"id": "q2", "messages": []\n'])
    assert refusal(path).startswith("line 2: not JSON (Expecting ',' delimiter at column")


def test_text_that_is_not_utf8_is_named_by_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_bytes(json.dumps(REQUESTS[0]).encode() + b'\n{"id": "\xff"}\n')
    assert refusal(path).startswith("line 2: not UTF-8")


@pytest.mark.parametrize(("line", "expected"), [
    ({"id": "q2"}, "line 2: field (top level): 'messages' is a required property"),
    ({"id": "q2", "messages": [{"role": "bot", "content": "hi"}]}, "line 2: field messages[0].role: 'bot' is not one of"),
    ({"id": "q2", "messages": [{"role": "user"}]}, "line 2: field messages[0]: 'content' is a required property"),
    ({"id": "q2", "messages": GREETING, "temperature": 0.7}, "line 2: field (top level): Additional properties"),
    ({"id": "q2", "messages": GREETING, "max_tokens": 0}, "line 2: field max_tokens: 0 is less than the minimum"),
    (["q2"], "line 2: field (top level): ['q2'] is not of type 'object'"),
])
def test_a_bad_request_is_named_by_line_and_field(tmp_path, line, expected):
    assert refusal(write_jsonl(tmp_path, [REQUESTS[0], line])).startswith(expected)


@pytest.mark.parametrize("unsafe", ["../x", "a/b", "a\\b", ".hidden", "", "a b", "x" * 65])
def test_an_id_that_is_unsafe_in_a_file_name_is_refused(tmp_path, unsafe):
    assert refusal(write_jsonl(tmp_path, [{"id": unsafe, "messages": GREETING}])).startswith("line 1: field id: ")


def test_a_file_with_no_requests_is_refused(tmp_path):
    assert refusal(write_jsonl(tmp_path, ["\n", "   \n"])) == "no prompts: every line is blank"


def suite_file(tmp_path: Path, **changes) -> Path:
    doc = {**read_json(DEFAULT_SUITE, "suite-source"), **changes}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path


def test_json_suite_with_a_duplicate_prompt_id_is_refused_naming_both(tmp_path):
    prompts = read_json(DEFAULT_SUITE, "suite-source")["prompts"]
    path = suite_file(tmp_path, prompts=[*prompts, {**prompts[2], "kind": "again"}])
    assert refusal(path) == f'field prompts[{len(prompts)}].id: duplicate id "{prompts[2]["id"]}" (first at prompts[2])'


def test_json_suite_with_a_duplicate_passage_id_is_refused(tmp_path):
    passages = read_json(DEFAULT_SUITE, "suite-source")["passages"]
    path = suite_file(tmp_path, passages=[*passages, passages[0]])
    assert refusal(path) == f'field passages[{len(passages)}].id: duplicate id "{passages[0]["id"]}" (first at passages[0])'


def test_json_suite_may_not_carry_its_own_limit(tmp_path):
    assert refusal(suite_file(tmp_path, limit=2)).startswith("field limit: ")


def test_unsafe_id_in_a_json_suite_is_refused(tmp_path):
    prompts = read_json(DEFAULT_SUITE, "suite-source")["prompts"]
    assert refusal(suite_file(tmp_path, prompts=[{**prompts[0], "id": "a/b"}])).startswith("field prompts[0].id: ")
