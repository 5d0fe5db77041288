"""The stages wired together over one results folder. Each function reads what the stages before
it wrote (validated) and writes its own files (validated, atomic), so either side can run on a
different machine and be copied in."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llm_parity import compare as compare_mod
from llm_parity.audit import write_sums
from llm_parity.download import FETCHERS, DownloadError, build_manifest, check_model_folder
from llm_parity.profiles import Profile
from llm_parity.progress import note
from llm_parity.provenance import collect, numeric_env, serving_device
from llm_parity.records import (SIDES, decoding_of, failed_generation, failed_perplexity, generations_doc, perplexity_doc,
                                unrunnable_prompt)
from llm_parity.report import build_report
from llm_parity.report.html import render_html
from llm_parity.report.markdown import render_markdown
from llm_parity.results import RunDir, ensure_writable, read_json, write_json, write_text_atomic
from llm_parity.suite import DEFAULT_SUITE, load_suite_source, render_suite

if TYPE_CHECKING:
    from llm_parity.serve import VllmServer

EXIT_PASS, EXIT_FAIL, EXIT_UNUSABLE = 0, 1, 2


@dataclass(frozen=True)
class ModelOrigin:
    """Where the model files came from, as the manifest records it."""

    source: str
    repo_id: str
    revision: str | None = None
    resolved_revision: str | None = None


def resolve_model(profile: Profile, model: str | None = None, *, models_root: Path = Path("models"),
                  log=note) -> tuple[Path, ModelOrigin]:
    """The local folder of the profile's model and where it came from: a folder given explicitly,
    the tiny model (built), a local folder, or a Hugging Face or ModelScope snapshot downloaded
    into `models_root`."""
    if model:
        return Path(model), ModelOrigin("local", Path(model).name)
    source, repo_id = profile.model["source"], profile.model["repo_id"]
    if source == "tiny":
        from llm_parity.tiny_model import build_tiny_model

        folder = build_tiny_model(log=log)
        return folder, ModelOrigin("local", folder.name)
    if source == "local":
        return Path(repo_id), ModelOrigin("local", Path(repo_id).name)
    revision = profile.model.get("revision")
    log(f"download: {repo_id}@{revision or 'default branch'} from {source} into {models_root / repo_id}")
    folder, resolved = FETCHERS[source](repo_id, revision=revision, local_dir=models_root / repo_id,
                                        allow_pickle=profile.model.get("allow_pickle", False))
    return folder, ModelOrigin(source, repo_id, revision, resolved)


def prepare(run: RunDir, profile: Profile, model_dir: Path, origin: ModelOrigin, *,
            suite_path: Path = DEFAULT_SUITE) -> tuple[dict, dict]:
    """Write (or check) the model manifest and the rendered suite. A side that comes second
    reuses the suite the first one rendered, and must be running the same model files."""
    if run.manifest.is_file():
        manifest = read_json(run.manifest, "manifest")
        current = build_manifest(model_dir, source=manifest["source"], repo_id=manifest["repo_id"],
                                 revision=manifest["revision"], resolved_revision=manifest["resolved_revision"])
        if current["sha256"] != manifest["sha256"]:
            raise DownloadError(f"{run.manifest}: field sha256: model folder {model_dir} does not match the manifest "
                                "the other side ran (different weights or files)")
    else:
        check_model_folder(model_dir, allow_pickle=profile.model.get("allow_pickle", False))
        manifest = build_manifest(model_dir, source=origin.source, repo_id=origin.repo_id, revision=origin.revision,
                                  resolved_revision=origin.resolved_revision)
        write_json(run.manifest, manifest, "manifest")
    if run.suite.is_file():
        suite = read_json(run.suite, "suite")
    else:
        suite = render_suite(load_suite_source(suite_path), model_dir, default_max_tokens=profile.decoding["max_tokens"])
        write_json(run.suite, suite, "suite")
    return suite, manifest


def _write_side(run: RunDir, side: str, suite: dict, manifest: dict, decoding: dict,
               generations: dict[str, dict], perplexity: dict[str, dict]) -> int:
    """Write a side's generations and perplexity in suite order, recording every prompt or
    passage that did not finish as an error; return how many items carry an error."""
    interrupted = "not run: the run stopped before this item finished"
    gen = [generations.get(p["id"]) or failed_generation(p, interrupted) for p in suite["prompts"]]
    ppl = [perplexity.get(p["id"]) or failed_perplexity(p, interrupted) for p in suite["passages"]]
    write_json(run.generations(side), generations_doc(side, suite, manifest["sha256"], decoding, gen), "generations")
    write_json(run.perplexity(side), perplexity_doc(side, suite, manifest["sha256"], ppl), "perplexity")
    return sum(1 for record in gen + ppl if record["error"])


def _finished_before(run: RunDir, side: str, suite: dict, manifest: dict) -> tuple[dict, dict]:
    """For --resume: the records of an earlier run of this side that finished without error."""
    if not run.generations(side).is_file():
        return {}, {}
    kept = []
    for path, name in ((run.generations(side), "generations"), (run.perplexity(side), "perplexity")):
        doc = read_json(path, name)
        if (doc["suite_sha256"], doc["model_manifest_sha256"]) != (suite["sha256"], manifest["sha256"]):
            raise compare_mod.IncompatibleRuns(f"{path}: made from another suite or model; cannot resume it")
        kept.append({record["id"]: record for record in doc["records"] if not record["error"]})
    return kept[0], kept[1]


def _runnable(suite: dict, max_model_len: int, done_gen: dict, done_ppl: dict) -> tuple[list, list]:
    """Items still to run; those that cannot run are recorded as errors in done_* right away."""
    prompts, passages = [], []
    for prompt in suite["prompts"]:
        if prompt["id"] in done_gen:
            continue
        problem = unrunnable_prompt(prompt, max_model_len)
        if problem:
            done_gen[prompt["id"]] = failed_generation(prompt, problem)
        else:
            prompts.append(prompt)
    for passage in suite["passages"]:
        if passage["id"] in done_ppl:
            continue
        if len(passage["ids"]) > max_model_len:
            done_ppl[passage["id"]] = failed_perplexity(passage, f"{len(passage['ids'])} tokens exceed max-model-len {max_model_len}")
        else:
            passages.append(passage)
    return prompts, passages


@contextmanager
def serving(run: RunDir, profile: Profile, model_dir: Path, *, server_url: str | None = None,
            running: VllmServer | None = None, cache_dir: Path, api_key: str | None = None, log=note):
    """Yield (base URL, our server or None, its spec): a server already running (`running`, ours,
    or a bare `server_url`), or a `vllm serve` started now with the profile's flags and torn
    down on exit, whatever happens."""
    from llm_parity.serve import VllmServer, spec_from_profile

    spec = running.spec if running else spec_from_profile(profile, model_dir, api_key=api_key)
    if running or server_url:
        yield (running.url if running else server_url), running, spec
        return
    server = VllmServer(spec, log_path=run.server_log, cache_dir=cache_dir,
                        health_timeout_s=profile.serve.get("health_timeout_s", 600))
    log(f"serve: starting vLLM ({spec.dtype}, max-num-seqs {spec.max_num_seqs}); log: {run.server_log}")
    with server:
        yield server.url, server, spec


def target_side(run: RunDir, profile: Profile, model_dir: Path, suite: dict, manifest: dict, *,
                server_url: str | None = None, running: VllmServer | None = None, cache_dir: Path,
                resume: bool = False, api_key: str | None = None, log=note) -> int:
    """Serve, query the suite, write target/; return how many items failed. A server already
    running can be given instead: as `running` (ours, its flags are recorded) or as `server_url`.
    With `resume`, prompts that finished in an earlier run are kept and only the rest are queried.
    Whatever happens, the prompts that finished are written."""
    from llm_parity.target import VllmHttpClient, query_generations, query_perplexity

    started = time.monotonic()
    ensure_writable(run.side("target"))
    done_gen, done_ppl = _finished_before(run, "target", suite, manifest) if resume else ({}, {})
    if resume:
        log(f"resume: keeping {len(done_gen)} prompts and {len(done_ppl)} passages that finished before")
    try:
        with serving(run, profile, model_dir, server_url=server_url, running=running, cache_dir=cache_dir,
                     api_key=api_key, log=log) as (url, server, spec):
            prompts, passages = _runnable(suite, spec.max_model_len, done_gen, done_ppl)
            with VllmHttpClient(url, spec.served_name, timeout_s=profile.decoding.get("request_timeout_s", 120),
                                api_key=api_key or spec.api_key,
                                server_gone=server.exited if server else lambda: None) as client:
                info = client.server_info()
                inside = numeric_env(server.group_environment()) if server else None
                query_generations(client, prompts, top_logprobs=profile.decoding["top_logprobs"],
                                  concurrency=spec.max_num_seqs, done=done_gen, log=log)
                query_perplexity(client, passages, concurrency=spec.max_num_seqs, done=done_ppl, log=log)
    finally:
        errors = _write_side(run, "target", suite, manifest, decoding_of(profile.decoding, profile.dtype), done_gen, done_ppl)
    server_doc = {"url": url, "argv": server.argv if server else None, "graph_mode": spec.graph_mode if server else "unknown",
                  "tensor_parallel_size": spec.tensor_parallel_size, "env": inside, **info}
    write_json(run.provenance("target"), collect(
        side="target", backend="vllm-http", model_path=str(model_dir), manifest_sha256=manifest["sha256"],
        suite_sha256=suite["sha256"], decoding=decoding_of(profile.decoding, profile.dtype),
        device=serving_device() if server else "server",
        duration_s=time.monotonic() - started, server=server_doc), "provenance")
    return errors


def bench_side(run: RunDir, profile: Profile, model_dir: Path, suite: dict, *, server_url: str | None = None,
               cache_dir: Path, concurrencies: tuple[int, ...], output_len: int, input_len: int | None = None,
               requests_per_level: int | None = None, api_key: str | None = None, log=note) -> dict:
    """The serving benchmark against the profile's server; writes target/bench.json. Prompts are the
    suite's, or synthetic ones of `input_len` tokens."""
    from llm_parity.bench import run_bench, suite_prompts, synthetic_prompts, total_requests

    ensure_writable(run.side("target"))
    with serving(run, profile, model_dir, server_url=server_url, cache_dir=cache_dir, api_key=api_key,
                 log=log) as (url, _, spec):
        count = total_requests(concurrencies, requests_per_level)
        vocab_size = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))["vocab_size"]
        prompts = synthetic_prompts(count, input_len, vocab_size=vocab_size) if input_len else suite_prompts(suite)
        doc = run_bench(url, spec.served_name, prompts=prompts, output_len=output_len, concurrencies=concurrencies,
                        requests_per_level=requests_per_level, api_key=api_key or spec.api_key, log=log)
    write_json(run.bench, doc, "bench")
    return doc


def reference_side(run: RunDir, profile: Profile, model_dir: Path, suite: dict, manifest: dict, *,
                   device: str = "cpu", log=note) -> int:
    """The suite through transformers on `device`; writes reference/; returns how many items failed.
    Prompts the target could not serve (longer than max-model-len) are not run here either."""
    from llm_parity.reference import TransformersRunner, run_reference

    started = time.monotonic()
    ensure_writable(run.side("reference"))
    done_gen: dict = {}
    done_ppl: dict = {}
    prompts, passages = _runnable(suite, profile.serve["max_model_len"], done_gen, done_ppl)
    log(f"reference: loading {model_dir} ({profile.dtype}, {device})")
    with TransformersRunner(model_dir, dtype=profile.dtype, device=device,
                            trust_remote_code=profile.model.get("trust_remote_code", False)) as runner:
        generations, perplexity = run_reference(runner, {**suite, "prompts": prompts, "passages": passages},
                                                top_logprobs=profile.decoding["top_logprobs"], log=log)
    done_gen.update((record["id"], record) for record in generations)
    done_ppl.update((record["id"], record) for record in perplexity)
    decoding = decoding_of(profile.decoding, profile.dtype)
    errors = _write_side(run, "reference", suite, manifest, decoding, done_gen, done_ppl)
    write_json(run.provenance("reference"), collect(
        side="reference", backend="transformers", model_path=str(model_dir), manifest_sha256=manifest["sha256"],
        suite_sha256=suite["sha256"], decoding=decoding, device=device, duration_s=time.monotonic() - started), "provenance")
    return errors


def compare_and_report(run: RunDir, profile: Profile, *, lang: str = "zh") -> dict:
    """Compare the two sides' files and write report/compare.json and report/report.md."""
    target = read_json(run.generations("target"), "generations")
    dtype = target["decoding"]["dtype"]
    ensure_writable(run.compare.parent)
    result = compare_mod.compare_runs(
        suite=read_json(run.suite, "suite"), target=target,
        reference=read_json(run.generations("reference"), "generations"),
        target_ppl=read_json(run.perplexity("target"), "perplexity"),
        reference_ppl=read_json(run.perplexity("reference"), "perplexity"),
        thresholds=profile.thresholds(dtype), profile=profile.name,
    )
    write_json(run.compare, result, "compare")
    provenance = {side: read_json(run.provenance(side), "provenance") for side in SIDES}
    bench = read_json(run.bench, "bench") if run.bench.is_file() else None
    report = build_report(result, provenance, manifest=read_json(run.manifest, "manifest"), bench=bench, lang=lang)
    write_text_atomic(run.report_md, render_markdown(report))
    write_text_atomic(run.report_html, render_html(report, result, bench))
    write_sums(run)
    return result


def summary_line(result: dict) -> str:
    s = result["summary"]
    return (f"verdict: {result['verdict'].upper()} ({result['dtype']}) - {s['identical']}/{s['prompts']} prompts identical, "
            f"{s['split_within_top_k']} split within top-k, {s['split_outside_top_k']} outside, {s['errors']} errors; "
            f"max |Δ logprob| {s['max_abs_logprob_diff']:.3g}; max perplexity diff {_pct(s['max_perplexity_rel_diff'])}; "
            f"smallest top-1/top-2 margin {_num(s['min_reference_margin'])}")


def _pct(value) -> str:
    return "n/a" if value is None else f"{value * 100:.4g}%"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"
