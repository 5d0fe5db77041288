"""make audit on a real demo results folder, and what it must catch; report.html is inert."""
import shutil
from pathlib import Path

import pytest

from llm_parity import pipeline
from llm_parity.audit import audit_run, write_audit
from llm_parity.profiles import load_profile
from llm_parity.report import build_report
from llm_parity.report.html import render_html
from llm_parity.results import RunDir, read_json, write_json, write_sums
from llm_parity.suite import load_suite_source, render_suite
from llm_parity.record_files import read_records, write_records

pytestmark = pytest.mark.integration
FILES = ["suite.json", "model/manifest.json", "target/generations.records", "target/perplexity.records",
         "target/provenance.json", "target/server.log", "reference/generations.records", "reference/perplexity.records",
         "reference/provenance.json", "report/compare.json", "report/report.md", "report/report.html"]


@pytest.fixture
def run_copy(demo_run, tmp_path) -> RunDir:
    shutil.copytree(demo_run.root, tmp_path / "run")
    return RunDir(tmp_path / "run")


def problems(run):
    result = audit_run(run)
    assert not result.ok
    return "\n".join(result.problems)


def test_audit_passes_on_a_fresh_results_folder(demo_run):
    result = audit_run(demo_run)
    assert result.ok, result.problems
    listed = {line.split("  ", 1)[1] for line in demo_run.sums.read_text().splitlines()}
    assert set(FILES) <= listed


@pytest.mark.parametrize("name", FILES)
def test_a_flipped_byte_in_any_file_is_caught(run_copy, name):
    path = run_copy.root / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert f"{path}: field sha256: expected" in problems(run_copy)


def test_a_deleted_file_is_caught(run_copy):
    (run_copy.root / "reference" / "perplexity.records").unlink()
    report = problems(run_copy)
    assert "reference/perplexity.records: expected present (listed in SHA256SUMS), found missing" in report


def test_the_other_sides_suite_swapped_in_is_caught_even_with_fresh_sums(run_copy, tiny_model_dir):
    other = render_suite(load_suite_source(), tiny_model_dir, default_max_tokens=7)
    write_json(run_copy.suite, other, "suite")
    write_sums(run_copy)
    assert "field suite_sha256" in problems(run_copy)


def test_an_edited_verdict_is_caught_even_with_fresh_sums(run_copy):
    compare = read_json(run_copy.compare, "compare")
    compare["verdict"] = "fail"
    write_json(run_copy.compare, compare, "compare")
    write_sums(run_copy)
    report = problems(run_copy)
    assert 'field verdict: expected "pass", found "fail" (compare.json differs from the comparison recomputed' in report


def test_edited_raw_numbers_are_caught_even_with_fresh_sums(run_copy):
    path = run_copy.generations("target")
    doc = read_records(path, "generations")
    doc["records"][0]["logprobs"][0] -= 0.01
    write_records(path, doc, "generations")
    write_sums(run_copy)
    report = problems(run_copy)
    assert "differs from the comparison recomputed" in report
    assert f"{run_copy.compare}: field verdict: expected pass, found fail (recomputed from the raw records" in report


def test_audit_json_of_a_real_folder_validates_and_is_not_an_added_file(run_copy):
    path = write_audit(audit_run(run_copy.root))
    doc = read_json(path, "audit")
    assert doc["ok"] is True and doc["problems"] == [] and path == run_copy.root / "report" / "audit.json"
    assert audit_run(run_copy).ok


def test_model_output_is_inert_in_report_html(demo_run):
    compare = read_json(demo_run.compare, "compare")
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'
    compare["prompts"][0]["target_text"] = hostile
    compare["prompts"][0]["id"] = "<b>id</b>"
    provenance = {side: read_json(demo_run.provenance(side), "provenance") for side in ("target", "reference")}
    page = render_html(build_report(compare, provenance, lang="en"), compare)
    assert "<script" not in page and "<img" not in page and "<b>id" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "&amp;amp;" in page
    assert page.count("<svg") == 5  # |Δ logprob| per position; |Δ logprob|, margins, KLD and perplexity distributions


def test_report_html_is_self_contained_in_both_languages(demo_run):
    page = demo_run.report_html.read_text(encoding="utf-8")
    assert "<svg" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in page and "精度指标" in page


def test_same_inputs_give_identical_canonical_payloads(demo_run, vllm_server, tiny_model_dir, demo_profile, tmp_path):
    again = RunDir(tmp_path / "again")
    shutil.copytree(demo_run.root / "model", again.root / "model")
    shutil.copy(demo_run.suite, again.suite)
    suite, manifest = read_json(again.suite, "suite"), read_json(again.manifest, "manifest")
    pipeline.target_side(again, demo_profile, tiny_model_dir, suite, manifest, running=vllm_server, cache_dir=Path(".cache"))
    pipeline.reference_side(again, demo_profile, tiny_model_dir, suite, manifest)
    for side in ("target", "reference"):
        assert again.generations(side).read_bytes() == demo_run.generations(side).read_bytes()
        assert again.perplexity(side).read_bytes() == demo_run.perplexity(side).read_bytes()


def test_a_folder_in_the_one_document_form_written_before_record_files_compares_and_audits(run_copy):
    """Folders written before record files (<side>/<kind>.json, schema .../v1) still read: compare
    gives the same result from them and the audit passes."""
    before = read_json(run_copy.compare, "compare")
    for side in ("target", "reference"):
        for kind, path in (("generations", run_copy.generations(side)), ("perplexity", run_copy.perplexity(side)),
                           ("teacher-forced", run_copy.teacher_forced(side))):
            if path.is_file():
                doc = read_records(path, kind)
                write_json(path.with_suffix(".json"), {**doc, "schema": f"llm-parity/{kind}/v1"}, kind)
                path.unlink()
    outcome = pipeline.compare(run_copy, load_profile("tiny-llama"), lang="en")
    assert outcome.result == before
    assert not list(run_copy.root.rglob("*.records"))
    result = audit_run(run_copy)
    assert result.ok, result.problems
