"""Full-vocabulary logits from a real vLLM server (started for this module alone with
`--logprobs-mode raw_logits --max-logprobs -1`: the mode is server-wide, a request cannot ask for
it) against transformers' logits for the same ids, in float32; then the whole logits mode on the
demo run: both sides stored, the seed's logits row filled, a tampered logits file refused by the audit."""
import math
import shutil
import struct
import time
from dataclasses import replace
from pathlib import Path

import pytest

from llm_parity import pipeline
from llm_parity.audit import audit_run
from llm_parity.backend import SideSetup
from llm_parity.divergence import logit_measures, logits_summary
from llm_parity.reference import TransformersRunner
from llm_parity.results import RunDir, read_json, write_sums
from llm_parity.serve import VllmServer, spec_from_profile
from llm_parity.suite import load_suite_source, render_suite
from llm_parity.target import LOGITS_SERVE_ARGS, VllmHttpClient

POSITIONS = 4
VOCAB_SIZE = 128256  # the tiny model's (Llama-3's tokenizer)


@pytest.fixture(scope="module")
def logits_server(tiny_model_dir, demo_profile, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logits-server")
    spec = spec_from_profile(demo_profile, tiny_model_dir, extra_args=LOGITS_SERVE_ARGS)
    with VllmServer(spec, log_path=logs / "server.log", cache_dir=Path(".cache"), health_timeout_s=900) as server:
        yield server


def test_server_logits_match_transformers_in_float32(logits_server, tiny_model_dir, demo_profile):
    suite = render_suite(load_suite_source(), tiny_model_dir, default_max_tokens=8)
    ids = suite["passages"][0]["ids"][:POSITIONS + 1]
    started = time.monotonic()
    with VllmHttpClient(logits_server.url, logits_server.spec.served_name) as client:
        served = client.prompt_logits(ids, VOCAB_SIZE)
    fetched = time.monotonic() - started
    with TransformersRunner(tiny_model_dir, dtype="float32", stop_ids=suite["stop_ids"]) as runner:
        computed = runner.prompt_logits(ids)

    assert len(served) == len(computed) == POSITIONS
    assert all(len(row) == VOCAB_SIZE for row in served + computed)
    # Raw logits, not log-probabilities: a log-softmax row would sum to one in probability.
    assert abs(sum(math.exp(x) for x in served[0]) - 1) > 0.1
    summary = logits_summary([logit_measures(r, t) for r, t in zip(computed, served)])
    print(f"\nfloat32 logits, {POSITIONS} positions: {summary}; fetch {fetched:.1f} s")
    assert summary["max_abs_logit_diff"] < 1e-3
    assert summary["min_cosine"] > 1 - 1e-9
    assert abs(summary["max_kld"]) < 1e-8


def test_logits_mode_fills_the_seed_row_and_the_audit_refuses_a_tampered_file(
        logits_server, demo_run, tiny_model_dir, demo_profile, tmp_path):
    run = RunDir(tmp_path / "demo")
    shutil.copytree(demo_run.root, run.root)
    suite, manifest = read_json(run.suite, "suite"), read_json(run.manifest, "manifest")
    setup = SideSetup(profile=demo_profile, model_dir=tiny_model_dir, suite=suite, run=run)
    pipeline.logits_side("reference", setup, manifest)
    half = check_named(pipeline.compare(run, demo_profile).result, "logits_max_abs_diff")
    assert half["status"] == "not_checked" and "no full-vocabulary logits from the target" in half["detail"]

    started = time.monotonic()
    pipeline.logits_side("target", replace(setup, running=logits_server), manifest)
    print(f"\ntarget logits of {len(suite['passages'])} passages: {time.monotonic() - started:.1f} s")
    result = pipeline.compare(run, demo_profile).result
    row = check_named(result, "logits_max_abs_diff")
    summary = result["summary"]["logits"]
    print(f"logits row: {row}")
    assert row["status"] == "pass" and 0 <= row["measured"] < 1e-4 and row["threshold"] == 1e-4
    assert summary["positions"] == sum(min(len(p["ids"]) - 1, 4) for p in suite["passages"])
    assert summary["min_cosine"] > 1 - 1e-9 and abs(summary["max_kld"]) < 1e-8
    assert "Logits 差异" in run.report_md.read_text(encoding="utf-8")
    assert audit_run(run).ok

    data = run.side("target") / "logits.f32"
    raw = bytearray(data.read_bytes())
    raw[:4] = struct.pack("<f", struct.unpack("<f", raw[:4])[0] + 0.5)  # one logit moved by 0.5
    data.write_bytes(bytes(raw))
    problems = audit_run(run).problems
    assert any("target/logits.f32" in p for p in problems), problems
    write_sums(run)  # fresh sums do not hide it: logits.json records the file's hash
    problems = audit_run(run).problems
    assert any("logits.f32: sha256" in p for p in problems), problems


def check_named(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)
