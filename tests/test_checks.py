"""audit on a results folder written by hand with the project's own writers: no model, no server.
Each test breaks the folder the way tests/test_audit_integration.py does and reads the structured problem."""
import json
import re

import pytest
from test_compare import EOS, STRICT, record

from llm_parity.audit import AUDIT_CHECKS, audit_run, summary, write_audit
from llm_parity.compare import compare_runs
from llm_parity.results import sha256_file, write_sums
from llm_parity.provenance import collect
from llm_parity.records import SIDES, Generation, PassageScore, decoding_of, generations_doc, perplexity_doc
from llm_parity.results import ResultFileError, RunDir, read_json, schema_tag, sha256_of, validate, write_json
from llm_parity.suite import suite_hash
from llm_parity.record_files import header_line, read_records, write_records

PROMPT_IDS = [1, 2, 3]
DECODING = decoding_of({"top_logprobs": 2}, "float32")
PASSAGE = {"id": "x", "logprobs": [-1.0, -2.0], "perplexity": 4.48, "error": None}


def suite_doc() -> dict:
    prompts = [{"id": "p1", "kind": "chat", "messages": [{"role": "user", "content": "hi"}],
                "prompt_ids": PROMPT_IDS, "max_tokens": 4}]
    passages = [{"id": "x", "text": "a b", "ids": [1, 4, 5]}]
    return {"schema": schema_tag("suite"), "name": "hand-made", "sha256": suite_hash(prompts, passages, [EOS]),
            "source_sha256": "c" * 64, "tokenizer_sha256": "d" * 64, "stop_ids": [EOS], "prompts": prompts,
            "passages": passages}


def manifest_doc() -> dict:
    files = [{"path": "model.safetensors", "size": 3, "sha256": "e" * 64}]
    return {"schema": schema_tag("manifest"), "source": "local", "repo_id": "hand-made", "revision": None,
            "resolved_revision": None, "created": "2025-01-01T00:00:00+00:00", "files": files, "sha256": sha256_of(files)}


def write_run(run: RunDir, *, target_ids=(5, 6, EOS), reference_ids=(5, 6, EOS)) -> None:
    """A complete results folder, compare.json and SHA256SUMS included, as the pipeline leaves one."""
    suite, manifest = suite_doc(), manifest_doc()
    write_json(run.suite, suite, "suite")
    write_json(run.manifest, manifest, "manifest")
    chat_ids = {"target": {"chat_prompt_ids": PROMPT_IDS}, "reference": {}}
    for side, ids in (("target", target_ids), ("reference", reference_ids)):
        generation = Generation.from_json({**record(list(ids), prompt=PROMPT_IDS), **chat_ids[side]})
        write_records(run.generations(side), generations_doc(side, suite, manifest["sha256"], DECODING, [generation]), "generations")
        write_records(run.perplexity(side), perplexity_doc(side, suite, manifest["sha256"], [PassageScore.from_json(PASSAGE)]),
                   "perplexity")
        write_json(run.provenance(side), collect(
            side=side, backend="vllm-http" if side == "target" else "transformers", backend_label=side,
            profile={"name": "hand-made", "sha256": "f" * 64}, model_path="model",
            manifest_sha256=manifest["sha256"], suite_sha256=suite["sha256"], decoding=DECODING, device="cpu",
            duration_s=0.0), "provenance")
    recompare(run)


def recompare(run: RunDir) -> None:
    """compare.json and SHA256SUMS written afresh from the raw files, as `inv compare` does."""
    docs = {(side, kind): read_records(getattr(run, kind)(side), kind) for side in SIDES for kind in ("generations", "perplexity")}
    result = compare_runs(suite=read_json(run.suite, "suite"), target=docs["target", "generations"],
                          reference=docs["reference", "generations"], target_ppl=docs["target", "perplexity"],
                          reference_ppl=docs["reference", "perplexity"], thresholds=STRICT, profile="test")
    write_json(run.compare, result, "compare")
    write_sums(run)


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    write_run(run)
    return run


def problems_of(run, check: str) -> list:
    return [p for p in audit_run(run).structured_problems if p.check == check]


def test_a_fresh_folder_passes_every_check(run):
    result = audit_run(run)
    assert result.ok, result.problems
    assert [check.check for check in result.checks] == [name for name, _ in AUDIT_CHECKS]
    assert "ok: verdict recomputed from raw records: pass" in summary(result)


def test_any_folder_path_can_be_audited(run):
    assert audit_run(str(run.root)).ok and audit_run(run.root).ok


def test_a_consistent_folder_with_a_failing_verdict_is_a_problem_not_an_ok_fact(tmp_path):
    run = RunDir(tmp_path / "failing")
    write_run(run, target_ids=(5, 7, EOS))
    result = audit_run(run)
    [verdict] = [p for p in result.structured_problems if p.check == "verdict"]
    assert (verdict.file, verdict.field, verdict.expected, verdict.found) == (str(run.compare), "verdict", "pass", "fail")
    assert "token_ids: 0/1 identical (threshold identical)" in verdict.message
    assert [p.check for p in result.structured_problems] == ["verdict"]  # the folder is otherwise intact
    text = summary(result)
    assert "verdict recomputed from raw records: fail" not in text and f"problem: {verdict.message}" in text


def test_edited_raw_numbers_with_fresh_sums_put_the_recomputed_fail_verdict_in_problems(run):
    path = run.generations("target")
    doc = read_records(path, "generations")
    doc["records"][0]["logprobs"][0] -= 0.01
    write_records(path, doc, "generations")
    write_sums(run)
    result = audit_run(run)
    differing = {p.field: p for p in result.structured_problems if p.check == "recomputed_comparison"}
    assert {"checks", "prompts", "summary", "verdict"} <= set(differing)
    assert (differing["verdict"].expected, differing["verdict"].found) == ('"fail"', '"pass"')
    assert "differs from the comparison recomputed from the raw files" in differing["verdict"].message
    [verdict] = [p for p in result.structured_problems if p.check == "verdict"]
    assert verdict.found == "fail" and "max_abs_logprob_diff: 0.01 (threshold 0.0001)" in verdict.message


def test_a_changed_file_names_both_digests(run):
    listed = {name: digest for digest, name in (line.split("  ", 1) for line in run.sums.read_text().splitlines())}
    run.suite.write_text(run.suite.read_text() + " ")
    [changed] = problems_of(run, "sums")
    assert (changed.file, changed.field) == (str(run.suite), "sha256")
    assert changed.expected.startswith(listed["suite.json"]) and changed.found == sha256_file(run.suite)


def test_unreadable_files_name_the_field_or_the_file(run):
    header, records = run.generations("target").read_bytes().split(b"\n", 1)
    run.generations("target").write_bytes(header_line({**json.loads(header), "side": "elsewhere"}) + records)
    run.perplexity("reference").write_text("{\n")
    result = audit_run(run)
    unreadable = {p.file: p for p in result.structured_problems if p.check == "readable"}
    assert result.unreadable
    assert unreadable[str(run.generations("target"))].field == "line 1: side"
    assert unreadable[str(run.perplexity("reference"))].field == "(file)"
    assert unreadable[str(run.perplexity("reference"))].found.startswith("line 1: not valid JSON")


def test_a_corrupted_stored_field_names_its_line_and_field(run):
    header, line, numbers = run.generations("target").read_bytes().split(b"\n", 2)
    record = json.loads(line)
    record["top_logprobs"]["width"] += 1
    run.generations("target").write_bytes(b"\n".join([header, json.dumps(record, sort_keys=True).encode(), numbers]))
    [unreadable] = [p for p in audit_run(run).structured_problems if p.check == "readable"]
    assert (unreadable.file, unreadable.field) == (str(run.generations("target")), "line 2: top_logprobs.ids")
    assert re.match(r"\d+ values, expected width \d+ x \d+ positions", unreadable.found)


def test_audit_json_validates_and_lists_file_field_expected_found(run):
    run.suite.write_text(run.suite.read_text() + " ")
    result = audit_run(run)
    path = write_audit(result)
    assert path == run.audit == run.root / "report" / "audit.json"
    doc = read_json(path, "audit")
    assert doc["ok"] is False and doc["run"] == str(run.root)
    assert {"check": "sums", "file": str(run.suite), "field": "sha256", "found": sha256_file(run.suite)}.items() \
        <= doc["problems"][0].items()
    assert doc["problems"][0]["message"] == result.problems[0]
    assert [c["name"] for c in doc["checks"]] == [name for name, _ in AUDIT_CHECKS]
    with pytest.raises(ResultFileError, match="problems"):
        validate({**doc, "ok": True}, "audit", path)


def test_the_sums_check_ignores_audit_json_but_not_other_added_files(run):
    write_audit(audit_run(run))
    assert audit_run(run).ok
    write_sums(run)
    assert "report/audit.json" not in run.sums.read_text()
    (run.root / "report" / "extra.json").write_text("{}")
    [added] = problems_of(run, "sums")
    assert (added.file, added.found) == (str(run.root / "report" / "extra.json"), "not listed (file added)")


def test_a_side_made_from_another_model_names_the_field_in_each_kind_of_file(run):
    provenance = read_json(run.provenance("target"), "provenance")
    write_json(run.provenance("target"), {**provenance, "model": {**provenance["model"], "manifest_sha256": "f" * 64}},
               "provenance")
    perplexity = read_records(run.perplexity("reference"), "perplexity")
    write_records(run.perplexity("reference"), {**perplexity, "model_manifest_sha256": "f" * 64}, "perplexity")
    write_sums(run)
    found = {(p.file, p.field): p for p in problems_of(run, "same_inputs")}
    assert set(found) == {(str(run.provenance("target")), "model.manifest_sha256"),
                          (str(run.perplexity("reference")), "model_manifest_sha256")}
    assert all(p.expected.startswith(manifest_doc()["sha256"]) and p.found == "f" * 64 for p in found.values())
