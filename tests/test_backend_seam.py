"""The backend seam with real components: both sides stop on the suite's stop ids, a server that
cannot render the chat template leaves the check unchecked, and a third backend (the records of a
results folder) runs through the same run_side."""
import shutil

import pytest

from llm_parity import pipeline
from llm_parity.backend import BACKENDS, SideSetup
from llm_parity.records import Generation
from llm_parity.reference import TransformersRunner
from llm_parity.results import RunDir, read_json
from llm_parity.target import VllmHttpClient
from llm_parity.record_files import read_records

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def suite(demo_run):
    return read_json(demo_run.suite, "suite")


def early_stop(demo_run, suite) -> tuple[dict, int, list[int]]:
    """A prompt, a token its greedy answer takes at position 3, and the model's own stop ids: a
    suite whose stop ids are that token alone differs from the model's generation config."""
    records = read_records(demo_run.generations("reference"), "generations")["records"]
    record = next(r for r in records if len(r["output_ids"]) > 6 and r["output_ids"][3] not in r["output_ids"][:3])
    prompt = next(p for p in suite["prompts"] if p["id"] == record["id"])
    return prompt, record["output_ids"][3], record["output_ids"]


def test_the_reference_stops_on_the_suites_stop_ids_not_the_models(demo_run, suite, tiny_model_dir):
    prompt, stop, full = early_stop(demo_run, suite)
    with TransformersRunner(tiny_model_dir, dtype="float32", stop_ids=[stop]) as runner:
        record = runner.generate(prompt, top_logprobs=2)
    assert record.output_ids == full[:4] and record.finish_reason == "stop"


def test_the_target_stops_on_the_suites_stop_ids_not_the_models(demo_run, suite, vllm_server):
    prompt, stop, full = early_stop(demo_run, suite)
    with VllmHttpClient(vllm_server.url, vllm_server.spec.served_name) as client:
        record = client.generate(prompt, top_logprobs=2, stop_ids=[stop])
    assert record.output_ids == full[:4] and record.finish_reason == "stop"


def test_a_backend_that_answers_from_recorded_records_runs_through_the_same_seam(demo_run, suite, demo_profile,
                                                                                 tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, "recorded", "recorded_backend:RecordedBackend")
    run = RunDir(tmp_path / "answered")
    run.side("target").mkdir(parents=True)
    shutil.copyfile(demo_run.suite, run.suite)
    shutil.copyfile(demo_run.generations("target"), run.generations("target"))  # so the replay scores its answers
    manifest = read_json(demo_run.manifest, "manifest")
    setup = SideSetup(profile=demo_profile, model_dir=tiny_model_dir, suite=suite, run=run,
                      options={"records_from": str(demo_run.root), "side": "reference"})
    outcome = pipeline.run_side("reference", setup, manifest, backend="recorded")
    assert outcome.errors == 0
    assert run.generations("reference").read_bytes() == demo_run.generations("reference").read_bytes()
    assert run.perplexity("reference").read_bytes() == demo_run.perplexity("reference").read_bytes()
    assert run.teacher_forced("reference").read_bytes() == demo_run.teacher_forced("reference").read_bytes()
    provenance = read_json(run.provenance("reference"), "provenance")
    assert (provenance["backend"], provenance["device"]) == ("recorded", "recorded")
    assert [Generation.from_json(r).to_json() for r in read_records(run.generations("reference"), "generations")["records"]] \
        == read_records(demo_run.generations("reference"), "generations")["records"]
