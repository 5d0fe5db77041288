"""What a new user trips over, each with the real components: the verdict line names what failed,
the target warns about another chat template at once, compare holds the sides to their profile,
a refused input creates nothing, the manifest check names files, `inv serve`, and a zh report
with no English detail left in it."""
import json
import re
import shutil
import signal
import subprocess
import sys

import pytest
import requests

from llm_parity import PROJECT_ROOT, cli, pipeline
from llm_parity.compare import compare_runs
from llm_parity.download import DownloadError, ModelOrigin
from llm_parity.profiles import load_profile
from llm_parity.report import build_report
from llm_parity.record_files import read_document
from llm_parity.results import RunDir, read_json
from llm_parity.serve import free_port
from llm_parity.suite import render_suite

SUITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def sides(run: RunDir) -> dict:
    return {name: read_document(path, name.split("_")[0]) for name, path in (
        ("suite", run.suite), ("generations_target", run.generations("target")),
        ("generations_reference", run.generations("reference")), ("perplexity_target", run.perplexity("target")),
        ("perplexity_reference", run.perplexity("reference")))}


@pytest.mark.integration
def test_a_failing_verdict_line_names_the_check_and_its_value(demo_run, demo_profile):
    docs = sides(demo_run)
    target = docs["generations_target"]
    target["records"][0]["chat_prompt_ids"] = target["records"][0]["prompt_ids"] + [128009]
    result = compare_runs(suite=docs["suite"], target=target, reference=docs["generations_reference"],
                          target_ppl=docs["perplexity_target"], reference_ppl=docs["perplexity_reference"],
                          thresholds=demo_profile.thresholds("float32"), profile=demo_profile.name)
    line = cli.summary_line(result)
    assert line.startswith("verdict: FAIL") and "14/14 prompts identical" in line
    assert "chat_template: 1 (threshold 0)" in line


@pytest.mark.integration
def test_the_target_warns_at_once_when_the_servers_chat_template_renders_other_ids(vllm_server, tiny_model_dir,
                                                                                  demo_profile, tmp_path):
    other = tmp_path / "other-template"
    other.mkdir()
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        shutil.copyfile(tiny_model_dir / name, other / name)
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = config["chat_template"].replace("message['content'] | trim", "'Q: ' + message['content'] | trim")
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    source = {"name": "two", "passages": [], "prompts": [
        {"id": f"p{i}", "kind": "t", "messages": [{"role": "user", "content": text}]} for i, text in enumerate(("안녕", "하늘"))]}
    suite = render_suite(source, other, default_max_tokens=4)
    run = RunDir(tmp_path / "run")
    manifest = pipeline.prepare(run, demo_profile, tiny_model_dir, ModelOrigin("local", "tiny"))[1]
    lines = []
    pipeline.target_side(run, demo_profile, tiny_model_dir, suite, manifest, running=vllm_server, cache_dir=tmp_path,
                         log=lines.append)
    warning = [line for line in lines if line.startswith("warning: target:")]
    assert len(warning) == 1 and "for 2 prompts (p0, p1)" in warning[0]
    assert warning[0] in read_json(run.provenance("target"), "provenance")["notes"]


@pytest.mark.integration
def test_compare_refuses_a_profile_the_sides_did_not_run_unless_overridden(demo_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(demo_run.root, results / "run")
    stricter = read_json(load_profile("tiny-llama").path, "profile")
    stricter["thresholds"]["float32"]["max_abs_logprob_diff"] = 1e-9
    path = tmp_path / "stricter.json"
    path.write_text(json.dumps(stricter))
    with pytest.raises(cli.StageFailed) as refused:
        cli.compare(profile=str(path), run="run", results=str(results))
    assert refused.value.code == cli.EXIT_UNUSABLE
    assert "ran profile tiny-llama" in str(refused.value) and "--profile-override" in str(refused.value)
    # judged by the stricter thresholds, and said so
    assert cli.compare(profile=str(path), run="run", results=str(results), lang="en", profile_override=True) == cli.EXIT_FAIL
    run = RunDir(results / "run")
    assert "ran profile tiny-llama" in read_json(run.compare, "compare")["profile_override"]
    assert "by --profile-override" in run.report_md.read_text()


def test_a_refused_suite_creates_no_results_folder(tmp_path):
    suite = tmp_path / "mine.jsonl"
    suite.write_text('{"id": "q1", "messages": [{"role": "user", "content": "hi"}]}\n'
                     '{"id": "../q2", "messages": [{"role": "user", "content": "hi"}]}\n')
    results = tmp_path / "results"
    with pytest.raises(cli.StageFailed) as refused:
        cli.target(profile="tiny-llama", run="mine", suite=str(suite), results=str(results))
    assert refused.value.code == cli.EXIT_UNUSABLE and "mine.jsonl: line 2: field id" in str(refused.value)
    assert not results.exists()


def test_the_second_side_names_each_file_that_differs_from_the_manifest(tiny_model_dir, demo_profile, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tiny_model_dir / name, model / name)
    run = RunDir(tmp_path / "run")
    pipeline.prepare(run, demo_profile, model, ModelOrigin("local", "model"))
    (model / "config.json").write_text((model / "config.json").read_text().replace("128", "129", 1))
    (model / "generation_config.json").unlink()
    (model / "extra.txt").write_text("x")
    with pytest.raises(DownloadError) as refused:
        pipeline.prepare(run, demo_profile, model, ModelOrigin("local", "model"))
    message = str(refused.value)
    assert "config.json: content differs" in message and "generation_config.json: missing" in message
    assert "extra.txt: extra file" in message and "\n" not in message


@pytest.mark.integration
def test_inv_serve_serves_the_profile_until_ctrl_c(tmp_path):
    port = free_port("127.0.0.1")
    # started the way a shell starts a background job: SIGINT ignored, which serve must undo
    task = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--profile", "tiny-llama", "--port", str(port)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        lines = iter(task.stdout.readline, "")
        ready = next(line for line in lines if not line.startswith("serve: waiting"))
        assert f"serve: http://127.0.0.1:{port}/v1" in ready and "'tiny-llama-3'" in ready
        models = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"]
        assert [model["id"] for model in models] == ["tiny-llama-3"]
        assert models[0]["max_model_len"] == load_profile("tiny-llama").serve["max_model_len"]
    finally:
        task.send_signal(signal.SIGINT)
    assert task.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.mark.integration
def test_the_zh_report_says_every_check_detail_in_chinese(demo_run):
    compare = read_json(demo_run.compare, "compare")
    provenance = {side: read_json(demo_run.provenance(side), "provenance") for side in ("target", "reference")}
    report = build_report(compare, provenance, lang="zh")
    details = [row[2] for row in report.sections[1].rows] + [cell for row in report.sections[2].rows for cell in row[1:3]]
    ids = {prompt["id"] for prompt in read_json(demo_run.suite, "suite")["prompts"]}
    technical = {"top", "logprob", "usage", "token", "logit", "logits"}
    english = [word for text in details for word in re.findall(r"[A-Za-z]{3,}", str(text))
               if word not in technical and not any(word in prompt_id for prompt_id in ids)]
    assert english == [], details
