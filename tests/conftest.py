"""Shared fixtures. Integration tests share one real `vllm serve` of the tiny model for the whole
test run and one results folder produced through it and through real transformers."""
import json
import shutil
from pathlib import Path

import pytest

from llm_parity import cli, pipeline
from llm_parity.backend import SideSetup
from llm_parity.download import ModelOrigin
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.results import RunDir, read_json


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from llm_parity.tiny_model import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def demo_profile():
    return load_profile(DEMO_PROFILE)


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, demo_profile, tmp_path_factory):
    """The one real vLLM server of the test run (float32, the demo profile's flags)."""
    from llm_parity.serve import VllmServer, spec_from_profile

    logs = tmp_path_factory.mktemp("server")
    server = VllmServer(spec_from_profile(demo_profile, tiny_model_dir), log_path=logs / "server.log",
                        cache_dir=Path(".cache"), health_timeout_s=900)
    with server:
        yield server


@pytest.fixture(scope="session")
def demo_run(vllm_server, tiny_model_dir, demo_profile, tmp_path_factory) -> RunDir:
    """A complete results folder: suite, manifest, target (via the shared server), reference (which
    scores the target's answers), the target scoring the reference's answers, report."""
    run = RunDir(tmp_path_factory.mktemp("results") / "demo")
    suite, manifest = pipeline.prepare(run, demo_profile, tiny_model_dir, ModelOrigin("local", tiny_model_dir.name))
    pipeline.target_side(run, demo_profile, tiny_model_dir, suite, manifest, running=vllm_server,
                         cache_dir=Path(".cache"))
    shutil.copyfile(vllm_server.log_path, run.server_log)
    pipeline.reference_side(run, demo_profile, tiny_model_dir, suite, manifest)
    setup = SideSetup(profile=demo_profile, model_dir=tiny_model_dir, suite=suite, run=run, running=vllm_server)
    pipeline.cross_score_side("target", setup, manifest)
    pipeline.compare(run, demo_profile)
    return run


@pytest.fixture
def download_task(tmp_path, monkeypatch):
    """Runs `inv download` (cli.download) on the demo profile with its model taken from a Hub:
    `download_task(model, env)` sets `env`, downloads into tmp_path/models and results into
    tmp_path/results, and returns the manifest."""
    def download(model: dict, env: dict[str, str]) -> dict:
        profile = tmp_path / "hub-profile.json"
        doc = read_json(load_profile(DEMO_PROFILE).path, "profile")
        doc["model"] = {**model, "served_name": "tiny-llama-3"}
        profile.write_text(json.dumps(doc))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(cli, "MODELS_ROOT", tmp_path / "models")
        assert cli.download(profile=str(profile), run="hub", results=str(tmp_path / "results")) == 0
        return read_json(tmp_path / "results" / "hub" / "model" / "manifest.json", "manifest")

    return download
