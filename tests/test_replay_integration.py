"""inv replay on a real results folder: each side run again from the folder's own records with the real
backends (transformers; the shared vLLM server, started with the recorded flags), and what a replay
must refuse before it runs anything."""
import shutil
from pathlib import Path

import pytest

from llm_parity import cli, pipeline
from llm_parity.audit import audit_run
from llm_parity.compare import IncompatibleRuns
from llm_parity.download import DownloadError, model_files
from llm_parity.replay import BYTE_IDENTICAL, NOT_REPRODUCIBLE, WITHIN_THRESHOLDS
from llm_parity.results import ResultFileError, RunDir, read_json, write_sums
from llm_parity.record_files import read_document, read_records, write_document

pytestmark = pytest.mark.integration
ELSEWHERE = "/original-machine/llm-parity"


@pytest.fixture
def run_copy(demo_run, tmp_path) -> RunDir:
    shutil.copytree(demo_run.root, tmp_path / "received" / "demo")
    return RunDir(tmp_path / "received" / "demo")


def rewrite(run: RunDir, path: Path, schema: str, change) -> None:
    """Change a stored document and write SHA256SUMS again: a folder consistent in itself."""
    doc = read_document(path, schema)
    change(doc)
    write_document(path, doc, schema)
    write_sums(run)


def move_to_another_machine(doc: dict) -> None:
    doc["model"]["path"] = f"{ELSEWHERE}/models/tiny"
    if doc["server"]:
        argv = doc["server"]["argv"]
        argv[argv.index("serve") + 1] = f"{ELSEWHERE}/models/tiny"


def test_a_moved_folder_replays_the_reference_byte_identically_and_stays_auditable(run_copy):
    rewrite(run_copy, run_copy.provenance("reference"), "provenance", move_to_another_machine)
    outcome = pipeline.replay(run_copy.root, "reference")
    entry = outcome.entry
    assert entry["outcome"] == BYTE_IDENTICAL, entry["statement"]
    assert run_copy.replayed.generations("reference").read_bytes() == run_copy.generations("reference").read_bytes()
    assert run_copy.replayed.perplexity("reference").read_bytes() == run_copy.perplexity("reference").read_bytes()
    assert (entry["overrides"], entry["first_difference"]) == ([], None)
    assert ELSEWHERE not in read_json(run_copy.replayed.provenance("reference"), "provenance")["model"]["path"]
    listed = {line.split("  ", 1)[1] for line in run_copy.sums.read_text().splitlines()}
    assert {"report/replay.json", "replay/reference/generations.records"} <= listed
    audited = audit_run(run_copy)
    assert audited.ok and f"replay: {entry['statement']}" in audited.facts, audited.problems
    assert "## 重放" in run_copy.report_md.read_text(encoding="utf-8")
    rewrite(run_copy, run_copy.replay, "replay", lambda doc: doc.update(suite_sha256="0" * 64))
    assert [(p.file, p.field) for p in audit_run(run_copy).structured_problems] == [(str(run_copy.replay), "suite_sha256")]


def test_the_target_replays_byte_identically_on_a_server_started_with_the_recorded_flags(run_copy, vllm_server):
    rewrite(run_copy, run_copy.provenance("target"), "provenance", move_to_another_machine)
    entry = pipeline.replay(run_copy.root, "target", running=vllm_server).entry
    assert entry["outcome"] == BYTE_IDENTICAL, entry["statement"]
    assert run_copy.replayed.generations("target").read_bytes() == run_copy.generations("target").read_bytes()
    assert read_json(run_copy.replay, "replay")["sides"]["target"] == entry


def test_a_running_server_with_other_flags_is_refused(run_copy, vllm_server):
    with pytest.raises(IncompatibleRuns, match="dtype float32 \\(recorded bfloat16\\)"):
        pipeline.replay(run_copy.root, "target", dtype="bfloat16", running=vllm_server)
    assert not run_copy.replayed.root.exists()


def test_a_dtype_override_is_reported_and_not_reproducible_naming_the_first_difference(run_copy, capsys):
    assert cli.replay(run=str(run_copy.root), side="reference", dtype="bfloat16") == cli.EXIT_FAIL
    printed = capsys.readouterr().out
    entry = read_json(run_copy.replay, "replay")["sides"]["reference"]
    assert entry["outcome"] == NOT_REPRODUCIBLE and "not reproducible (bfloat16)" in printed
    assert entry["overrides"] == [{"setting": "dtype", "recorded": "float32", "replayed": "bfloat16"}]
    assert (entry["recorded_dtype"], entry["thresholds"]["token_match"]) == ("float32", "exact")
    first = entry["first_difference"]
    assert f"first difference: prompt {first['id']}, token {first['position']}" in printed
    # The named token is the first one, in suite order, whose id or logprob is off by more than the threshold.
    noise = entry["thresholds"]["max_abs_logprob_diff"]
    stored = read_records(run_copy.generations("reference"), "generations")["records"]
    replayed = {r["id"]: r for r in read_records(run_copy.replayed.generations("reference"), "generations")["records"]}
    def off(record: dict, position: int) -> bool:
        again = replayed[record["id"]]
        return (position >= min(len(record["output_ids"]), len(again["output_ids"]))
                or again["output_ids"][position] != record["output_ids"][position]
                or abs(again["logprobs"][position] - record["logprobs"][position]) > noise)
    offsets = [(r["id"], position) for r in stored
               for position in range(max(len(r["output_ids"]), len(replayed[r["id"]]["output_ids"]))) if off(r, position)]
    assert (first["id"], first["position"]) == offsets[0]


def tamper_token(doc: dict) -> None:
    record = doc["records"][2]
    record["output_ids"][1] += 1


def test_a_stored_token_that_the_model_does_not_give_is_not_reproducible_and_named(run_copy):
    stored = read_records(run_copy.generations("reference"), "generations")["records"][2]
    rewrite(run_copy, run_copy.generations("reference"), "generations", tamper_token)
    entry = pipeline.replay(run_copy.root, "reference").entry
    assert entry["outcome"] == NOT_REPRODUCIBLE
    assert entry["first_difference"] == {"kind": "prompt", "id": stored["id"], "position": 1,
                                         "stored_token": stored["output_ids"][1] + 1,
                                         "replayed_token": stored["output_ids"][1], "why": "token differs"}
    assert "token_ids" in entry["statement"]


def test_records_off_by_less_than_the_thresholds_are_within_thresholds(run_copy):
    def nudge(doc: dict) -> None:
        doc["records"][0]["logprobs"][0] -= 1e-6
    rewrite(run_copy, run_copy.generations("reference"), "generations", nudge)
    entry = pipeline.replay(run_copy.root, "reference").entry
    assert (entry["outcome"], entry["first_difference"]) == (WITHIN_THRESHOLDS, None)
    files = {f["stored"]: f["stored_sha256"] == f["replayed_sha256"] for f in entry["files"]}
    assert files == {"reference/generations.records": False, "reference/perplexity.records": True}


def test_a_model_folder_that_fails_the_manifest_is_refused_before_anything_runs(run_copy, tiny_model_dir, tmp_path):
    changed = tmp_path / "model"
    changed.mkdir()
    for path in model_files(tiny_model_dir):
        (changed / path.name).symlink_to(path)
    (changed / "config.json").unlink()
    (changed / "config.json").write_text((tiny_model_dir / "config.json").read_text().replace("}", ', "x": 1}', 1))
    sums = run_copy.sums.read_bytes()
    with pytest.raises(DownloadError, match=f"{changed / 'config.json'}: content differs from the manifest"):
        pipeline.replay(run_copy.root, "reference", model=str(changed))
    assert not run_copy.replayed.root.exists() and not run_copy.replay.exists()
    assert run_copy.sums.read_bytes() == sums


def test_a_folder_missing_its_suite_is_a_clear_error(run_copy):
    run_copy.suite.unlink()
    with pytest.raises(cli.StageFailed) as failed:
        cli.replay(run=str(run_copy.root), side="reference")
    assert failed.value.code == cli.EXIT_UNUSABLE
    assert str(failed.value) == (f"error: {run_copy.suite}: file not found: a replay of the reference side needs it "
                                 f"(the suite the sides ran, rendered to token ids); is {run_copy.root} a complete "
                                 "results folder?")


def test_a_folder_changed_after_its_sums_is_refused(run_copy):
    path = run_copy.generations("reference")
    path.write_bytes(path.read_bytes().replace(b'"error":null', b'"error": null', 1))
    with pytest.raises(ResultFileError, match=f"{path}: field sha256: expected .* a replay rewrites SHA256SUMS"):
        pipeline.replay(run_copy.root, "reference")
    assert not run_copy.replayed.root.exists()
