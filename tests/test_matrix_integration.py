"""The configuration matrix for real, on a copy of the demo run (its target, served by the session's
server, is the base; its reference is reused): base again on a fresh server, a variant whose model
config is changed by a flag, and one whose server cannot start. Two extra servers in all."""
import shutil
from pathlib import Path

import pytest

from llm_parity import pipeline
from llm_parity.audit import audit_run
from llm_parity.matrix import Variant
from llm_parity.profiles import load_profile
from llm_parity.results import RunDir, read_json
from llm_parity.record_files import read_records, write_records

pytestmark = pytest.mark.integration

# The order is the order they run in: the broken one first, so the others show the matrix goes on.
VARIANTS = [
    Variant("base", {"description": "the demo run's target"}),
    Variant("broken", {"description": "a flag vLLM does not know", "serve": {"extra_args": ["--no-such-flag"]}}),
    Variant("repeat", {"description": "base again on a fresh server"}),
    Variant("norm-eps", {"description": "the model config changed by a flag",
                         "serve": {"extra_args": ["--hf-overrides", '{"rms_norm_eps": 0.1}']}}),
]


@pytest.fixture(scope="module")
def matrix_run(demo_run, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    shutil.copytree(demo_run.root, root / "matrix")
    request = pipeline.Request(profile="tiny-llama", run="matrix", results_root=root, model=str(tiny_model_dir),
                               cache_dir=Path(".cache"))
    outcome = pipeline.matrix(request, lang="en", names=["broken", "repeat", "norm-eps"], variants=VARIANTS)
    return outcome, {entry["name"]: entry for entry in outcome.matrix["variants"]}


def test_repeat_on_a_fresh_server_gives_byte_identical_records(matrix_run, demo_run):
    outcome, entries = matrix_run
    repeat = entries["repeat"]
    assert repeat["status"] == "ran" and repeat["differs_from_base"] == [] and repeat["must_equal_base"]
    assert repeat["vs_base"]["records_identical"] is True, repeat["vs_base"]
    assert repeat["verdict"] == "pass" and repeat["vs_reference"]["verdict"] == "pass"
    run = outcome.path.parent.parent
    for kind in ("generations", "perplexity"):
        assert (run / "variants" / "repeat" / f"{kind}.records").read_bytes() == (run / "target" / f"{kind}.records").read_bytes()


def test_a_variant_that_changes_the_answers_is_caught_and_its_flag_named(matrix_run):
    outcome, entries = matrix_run
    changed = entries["norm-eps"]
    assert changed["differs_from_base"] == ['--hf-overrides {"rms_norm_eps": 0.1} (base: not set)']
    assert changed["verdict"] == "fail" and outcome.matrix["verdict"] == "fail"
    for against in (changed["vs_base"], changed["vs_reference"]):
        assert against["verdict"] == "fail" and against["identical"] < against["prompts"] and against["first_split"]
        assert any(failing.startswith("token_ids") for failing in against["failing"])
    assert changed["vs_base"]["records_identical"] is False
    report = outcome.compared.report.read_text(encoding="utf-8")
    assert "## Configuration matrix" in report and '--hf-overrides {"rms_norm_eps": 0.1} (base: not set)' in report


def test_a_variant_whose_server_cannot_start_is_recorded_and_the_matrix_goes_on(matrix_run):
    outcome, entries = matrix_run
    broken = entries["broken"]
    assert (broken["status"], broken["verdict"], broken["vs_base"]) == ("server_failed", "not_run", None)
    assert "exited with code" in broken["reason"] and "--no-such-flag" in broken["reason"]
    assert broken["differs_from_base"] == ["--no-such-flag (defined; not run)"]
    assert entries["repeat"]["status"] == entries["norm-eps"]["status"] == "ran"
    report = outcome.compared.report.read_text(encoding="utf-8")
    assert "broken: server did not start: vllm serve exited" in report
    assert "Configuration matrix" in outcome.compared.report.with_suffix(".html").read_text(encoding="utf-8")


def test_each_variant_records_how_it_ran_and_the_audit_covers_its_files(matrix_run):
    outcome, entries = matrix_run
    run = outcome.path.parent.parent
    provenance = read_json(run / "variants" / "norm-eps" / "provenance.json", "provenance")
    assert "--hf-overrides" in provenance["server"]["argv"] and provenance["server"]["concurrency"] == 16
    assert (run / "variants" / "norm-eps" / "server.log").is_file()
    audit = audit_run(run)
    assert audit.ok, audit.problems
    assert any(fact.startswith("matrix recomputed from the files of 3 variants") for fact in audit.facts)
    assert "variants/repeat/generations.records" in (run / "SHA256SUMS").read_text()

    copy = run.parent / "tampered"
    shutil.copytree(run, copy)
    generations = read_records(copy / "variants" / "repeat" / "generations.records", "generations")
    generations["records"][0]["logprobs"][0] += 0.5
    write_records(copy / "variants" / "repeat" / "generations.records", generations, "generations")
    problems = audit_run(copy).problems
    assert any("variants/repeat/generations.records: field sha256" in p for p in problems)
    assert any("report/matrix.json: field variants[2].vs_base" in p for p in problems), problems


def test_a_matrix_run_without_the_reference_gains_it_when_compare_runs(matrix_run, tiny_model_dir):
    """As on an Ascend host: the variants first, the reference later from another host, then compare."""
    outcome, _ = matrix_run
    run = outcome.path.parent.parent
    copy = run.parent / "later-reference"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "reference")
    request = pipeline.Request(profile="tiny-llama", run=copy.name, results_root=run.parent, model=str(tiny_model_dir),
                               cache_dir=Path(".cache"))
    alone = pipeline.matrix(request, lang="en", names=[], variants=VARIANTS, with_reference=False)
    assert alone.compared is None and not (copy / "reference").exists()
    assert [(e["status"], e["vs_reference"]) for e in alone.matrix["variants"]] == \
        [(e["status"], None) for e in outcome.matrix["variants"]]
    shutil.copytree(run / "reference", copy / "reference")
    pipeline.compare(RunDir(copy), load_profile("tiny-llama"), lang="en")
    assert read_json(copy / "report" / "matrix.json", "matrix") == outcome.matrix
    assert audit_run(copy).ok
