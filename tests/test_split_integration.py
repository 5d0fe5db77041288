"""The model that splits: the tiny model's split variant served in bfloat16 by a real vLLM server
of its own (started once for this module), against transformers in bfloat16. Its answers split on
some prompts; the split is explained, and the teacher-forced measures go on past it."""
from pathlib import Path

import pytest

from llm_parity import pipeline
from llm_parity.backend import SideSetup
from llm_parity.download import resolve_model
from llm_parity.profiles import load_profile
from llm_parity.results import RunDir, read_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def split_run(tmp_path_factory) -> RunDir:
    from llm_parity.serve import VllmServer, spec_from_profile

    profile = load_profile("tiny-llama-split").with_serve(dtype="bfloat16")
    model_dir, origin = resolve_model(profile)
    root = tmp_path_factory.mktemp("split")
    run = RunDir(root / "run")
    suite, manifest = pipeline.prepare(run, profile, model_dir, origin)
    server = VllmServer(spec_from_profile(profile, model_dir), log_path=root / "server.log", cache_dir=Path(".cache"),
                        health_timeout_s=900)
    with server:
        pipeline.run_side("reference", SideSetup(profile=profile, model_dir=model_dir, suite=suite, run=run), manifest)
        pipeline.run_side("target", SideSetup(profile=profile, model_dir=model_dir, suite=suite, run=run, running=server),
                          manifest)
    pipeline.cross_score_side("reference", SideSetup(profile=profile, model_dir=model_dir, suite=suite, run=run), manifest)
    pipeline.compare(run, profile, lang="en")
    return run


def test_bfloat16_answers_split_and_the_split_is_explained(split_run):
    result = read_json(split_run.compare, "compare")
    split = [p for p in result["prompts"] if p["status"].startswith("split")]
    assert split, "the split variant gave no split in bfloat16"
    for prompt in split:
        divergence = prompt["first_divergence"]
        assert divergence["position"] == prompt["common_prefix"] and divergence["why"]
    report = split_run.report_md.read_text(encoding="utf-8")
    assert f"position {split[0]['first_divergence']['position']}: " in report


def test_teacher_forced_measures_go_on_past_the_split(split_run):
    result = read_json(split_run.compare, "compare")
    for prompt in result["prompts"]:
        if prompt["status"] == "error":
            continue
        forced = prompt["teacher_forced"]
        assert forced["error"] is None
        # Every position of the target's answer, then the reference's own past the split.
        past = max(prompt["reference_tokens"] - min(prompt["common_prefix"] + 1, prompt["target_tokens"]), 0)
        assert forced["summary"]["positions"] == prompt["target_tokens"] + past
    summary = result["summary"]["teacher_forced"]
    assert summary["positions"] > result["summary"]["compared_tokens"]  # more than the common prefixes
    assert 0 < summary["mean_kld"] < 0.5 and summary["same_top1_rate"] < 1.0
    assert "Past the split: distributions under teacher forcing" in split_run.report_md.read_text(encoding="utf-8")
