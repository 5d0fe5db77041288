"""lm-evaluation-harness on both sides for real: the project's own Korean multiple-choice and
generation tasks against the shared vLLM server (local-completions, token ids) and in transformers
(hf backend), then the paired comparison in compare.json, the report and the audit."""
import json
import shutil
from pathlib import Path

import pytest

from llm_parity import accuracy, pipeline
from llm_parity.audit import audit_run
from llm_parity.profiles import DEMO_PROFILE
from llm_parity.records import IncompatibleRuns
from llm_parity.results import RunDir, read_json, sha256_file, write_json

pytestmark = pytest.mark.integration
TASKS = tuple(accuracy.project_tasks())
BOS = 128000


@pytest.fixture(scope="module")
def accuracy_run(demo_run, vllm_server, tiny_model_dir, tmp_path_factory):
    """A copy of the demo run with both sides' accuracy on the project's tasks, compared."""
    root = tmp_path_factory.mktemp("accuracy")
    shutil.copytree(demo_run.root, root / "acc")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_DATASETS_CACHE", str(root / "datasets"))
        outcome = pipeline.accuracy(_request(root, tiny_model_dir, vllm_server), tasks=TASKS)
    return RunDir(root / "acc"), outcome


def _request(root: Path, model_dir: Path, server) -> pipeline.Request:
    return pipeline.Request(profile=DEMO_PROFILE, run="acc", results_root=root, model=str(model_dir),
                            server_url=server.url, cache_dir=Path(".cache"))


def _copy(run: RunDir, tmp_path: Path) -> RunDir:
    shutil.copytree(run.root, tmp_path / "copy")
    return RunDir(tmp_path / "copy")


def test_float32_gives_identical_choices_and_the_report_shows_them(accuracy_run):
    run, outcome = accuracy_run
    result = outcome.result
    assert result["verdict"] == "pass"
    checks = {c["name"]: c for c in result["checks"]}
    for name in ("accuracy_difference", "accuracy_significant_drop", "answer_agreement", "loglikelihood_diff"):
        assert checks[name]["status"] == "pass", checks[name]
    tasks = {t["task"]: t for t in result["accuracy"]["tasks"]}
    assert set(tasks) == set(TASKS)
    for task in tasks.values():
        assert task["agreement"] == 1.0 and task["difference"] == 0.0
        assert task["flipped_to_wrong"] == task["flipped_to_correct"] == []
    assert tasks["parity_ko_mc"]["max_abs_loglikelihood_diff"] < 1e-3
    assert tasks["parity_ko_mc"]["samples"] == 8 and tasks["parity_ko_gen"]["samples"] == 4
    report = run.report_md.read_text(encoding="utf-8")
    assert "parity_ko_mc" in report and "McNemar" in report
    assert "<svg" in run.report_html.read_text(encoding="utf-8")


def test_both_sides_really_scored_a_bos_first(accuracy_run):
    run, _ = accuracy_run
    for side, backend in (("target", "local-completions"), ("reference", "hf")):
        summary = read_json(run.accuracy(side), "accuracy")
        assert summary["backend"] == backend and summary["bos_token_id"] == BOS
        for task in TASKS:
            for record in read_json(accuracy.samples_path(run, side, task), "accuracy-samples")["samples"]:
                assert all(request["ids"][0] == BOS for request in record["requests"]), (side, task, record["doc_id"])


def test_the_audit_recomputes_accuracy_from_the_per_sample_files(accuracy_run):
    run, _ = accuracy_run
    result = audit_run(run)
    assert result.ok, result.problems
    assert any("accuracy of 2 tasks recomputed" in fact for fact in result.facts)
    listed = run.sums.read_text(encoding="utf-8")
    assert "target/accuracy/parity_ko_mc.json" in listed and "reference/accuracy.json" in listed


def _flip_first_answer(run: RunDir, task: str) -> None:
    """The target's first document answered with another choice, its files kept consistent."""
    path = accuracy.samples_path(run, "target", task)
    doc = read_json(path, "accuracy-samples")
    first = doc["samples"][0]
    first["prediction"] = (first["prediction"] + 1) % len(first["requests"])
    first["correct"] = not first["correct"]
    first["score"] = float(first["correct"])
    write_json(path, doc, "accuracy-samples")
    summary = read_json(run.accuracy("target"), "accuracy")
    entry = next(t for t in summary["tasks"] if t["name"] == task)
    entry["lm_eval_accuracy"] = sum(s["score"] for s in doc["samples"]) / len(doc["samples"])
    entry["samples_sha256"] = sha256_file(path)
    write_json(run.accuracy("target"), summary, "accuracy")


def test_a_flipped_answer_is_detected_counted_and_fails_the_verdict(accuracy_run, demo_profile, tmp_path):
    run = _copy(accuracy_run[0], tmp_path)
    _flip_first_answer(run, "parity_ko_mc")
    result = pipeline.compare(run, demo_profile).result
    task = next(t for t in result["accuracy"]["tasks"] if t["task"] == "parity_ko_mc")
    assert len(task["flipped_to_wrong"] + task["flipped_to_correct"]) == 1 and task["disagreeing"] == [0]
    assert task["agreement"] == pytest.approx(7 / 8)
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["answer_agreement"]["status"] == "fail" and checks["accuracy_difference"]["status"] == "fail"
    assert result["verdict"] == "fail"


def test_a_per_sample_file_changed_after_the_run_is_named_by_the_audit(accuracy_run, tmp_path):
    run = _copy(accuracy_run[0], tmp_path)
    path = accuracy.samples_path(run, "reference", "parity_ko_gen")
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["samples"][0]["correct"] = not doc["samples"][0]["correct"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    problems = audit_run(run).problems
    assert any(str(path) in problem and "sha256" in problem for problem in problems), problems


def test_a_target_scored_without_bos_is_refused_naming_the_side(accuracy_run, vllm_server, tiny_model_dir,
                                                                demo_profile, tmp_path):
    run = _copy(accuracy_run[0], tmp_path)
    # lm-eval's own default for local-completions: no BOS, while its hf backend adds one.
    asked = accuracy.AccuracyRequest(tasks=("parity_ko_mc",), max_length=demo_profile.serve["max_model_len"],
                                     add_bos_token=False)
    args = accuracy.target_model_args(asked, model_dir=tiny_model_dir, url=vllm_server.url,
                                      served_name=vllm_server.spec.served_name, api_key=None)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
        results, fed = accuracy.run_lm_eval("target", asked, args)
    accuracy.write_side(run, "target", asked, results, fed, backend="local-completions", model_args=args,
                        manifest_sha256=read_json(run.manifest, "manifest")["sha256"], dtype="float32")
    reference = read_json(run.accuracy("reference"), "accuracy")
    reference["tasks"] = [t for t in reference["tasks"] if t["name"] == "parity_ko_mc"]
    write_json(run.accuracy("reference"), reference, "accuracy")
    with pytest.raises(IncompatibleRuns, match=r"parity_ko_mc document 0 request 0: the reference scored a BOS "
                                               r"\(128000\) first and the target did not"):
        pipeline.compare(run, demo_profile)
