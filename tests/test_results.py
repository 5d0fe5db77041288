"""Results files: schema validation on write and read, one-line errors naming file and field,
atomic writes, run names that cannot escape the results root, hashes taken in the background."""
import json

import pytest

from llm_parity.profiles import load_profile
from llm_parity.records import Generation, decoding_of, generations_doc
from llm_parity.results import (ResultFileError, RunDir, hashing_in_background, read_json, sha256_file, write_json,
                                write_text_atomic)
from llm_parity.suite import load_suite_source

SUITE = {"sha256": "a" * 64}


def valid_generations():
    record = Generation(id="p1", prompt_ids=[1, 2], output_ids=[3], text="x", logprobs=[-0.5],
                        top_logprobs=[[[3, -0.5], [4, -1.5]]], finish_reason="length", prompt_tokens=2, completion_tokens=1)
    return generations_doc("target", SUITE, "b" * 64, decoding_of({"top_logprobs": 2}, "float32"), [record])


def one_line_error(path, name=None):
    with pytest.raises(ResultFileError) as caught:
        read_json(path, name)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_round_trip_is_canonical_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "target" / "generations.json"
    write_json(path, valid_generations(), "generations")
    first = path.read_bytes()
    assert read_json(path) == valid_generations()
    write_json(path, read_json(path), "generations")
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["generations.json"]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["records"][0].pop("output_ids"), "records[0]"),
    (lambda d: d["records"][0].__setitem__("output_ids", ["x"]), "records[0].output_ids[0]"),
    (lambda d: d.__setitem__("suite_sha256", "not-a-hash"), "suite_sha256"),
    (lambda d: d["decoding"].__setitem__("temperature", 0.7), "decoding.temperature"),
    (lambda d: d.__setitem__("side", "npu"), "side"),
    (lambda d: d["records"][0]["top_logprobs"][0].__setitem__(0, [3]), "records[0].top_logprobs[0][0]"),
])
def test_invalid_files_are_rejected_naming_file_and_field(tmp_path, mutate, field):
    doc = valid_generations()
    mutate(doc)
    path = tmp_path / "generations.json"
    path.write_text(json.dumps(doc))
    assert f"field {field}" in one_line_error(path, "generations")


def test_invalid_documents_are_refused_on_write_and_nothing_is_overwritten(tmp_path):
    path = tmp_path / "generations.json"
    write_json(path, valid_generations(), "generations")
    before = path.read_bytes()
    doc = valid_generations()
    doc["records"][0]["usage"]["completion_tokens"] = -1
    with pytest.raises(ResultFileError, match="usage.completion_tokens"):
        write_json(path, doc, "generations")
    assert path.read_bytes() == before


def test_truncated_foreign_and_mislabelled_files(tmp_path):
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(valid_generations())[:50])
    assert "not valid JSON" in one_line_error(truncated)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"choices": []}))
    assert "field schema" in one_line_error(foreign)
    mislabelled = tmp_path / "mislabelled.json"
    mislabelled.write_text(json.dumps(valid_generations()))
    assert "expected 'llm-parity/perplexity/v1'" in one_line_error(mislabelled, "perplexity")
    assert "file not found" in one_line_error(tmp_path / "absent.json")


def test_shipped_profiles_and_suite_validate():
    assert load_profile("kollama-3-8b-instruct").serve["max_model_len"] == 8192
    assert load_profile("tiny-llama").thresholds("float32")["token_match"] == "exact"
    suite = load_suite_source()
    ids = [p["id"] for p in suite["prompts"]]
    assert len(ids) == len(set(ids)) >= 12
    contents = [m["content"] for p in suite["prompts"] for m in p["messages"]]
    assert "안녕하세요, 자기소개 해주세요." in contents and "1+1等于几?请用中文回答。" in contents


def test_bad_profile_names_file_and_field(tmp_path):
    profile = json.loads(load_profile("tiny-llama").path.read_text())
    profile["serve"]["max_num_seqs"] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(profile))
    with pytest.raises(ResultFileError, match=r"bad\.json: field serve\.max_num_seqs"):
        load_profile(str(path))


@pytest.mark.parametrize("name", ["..", "../x", "/abs", ".hidden", "", "a/b"])
def test_run_names_cannot_escape_the_results_root(tmp_path, name):
    with pytest.raises(ValueError):
        RunDir.under(tmp_path, name)


def test_background_hashes_are_of_the_bytes_there_when_asked(tmp_path):
    kept, replaced, missing, other = (tmp_path / name for name in ("kept", "replaced", "missing", "other"))
    for path in (kept, replaced, other):
        path.write_text(f"{path.name} before")
    with hashing_in_background([kept, replaced, missing]) as hashes:
        assert hashes.sha256(replaced) == sha256_file(replaced)  # waits for the background to reach it
        write_text_atomic(replaced, "replaced after it was hashed")
        missing.write_text("there only now")
        other.write_text("never handed to the background")
        assert [hashes.sha256(path) for path in (kept, replaced, missing, other)] == [
            sha256_file(path) for path in (kept, replaced, missing, other)]
