"""The dummy-weights check with the real vLLM: the tiny model's config passes, a config vLLM
cannot parse fails with a clear message."""
import json
import shutil

import pytest

from llm_parity import cli
from llm_parity.dummy import config_only_copy, run_dummy
from llm_parity.results import read_json

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
