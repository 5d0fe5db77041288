"""The stages wired together over one results folder. Each function reads what the stages before
it wrote (validated) and writes its own files (validated, atomic), so either side can run on a
different machine and be copied in."""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from llm_parity import compare as compare_mod
from llm_parity.audit import write_sums
from llm_parity.download import DownloadError, build_manifest, fetch_hf, check_model_folder
from llm_parity.profiles import Profile
from llm_parity.progress import note
from llm_parity.provenance import collect
from llm_parity.records import decoding_of, generations_doc, perplexity_doc
from llm_parity.report import build_report
from llm_parity.report.html import render_html
from llm_parity.report.markdown import render_markdown
from llm_parity.results import RunDir, read_json, write_json, write_text_atomic
from llm_parity.suite import DEFAULT_SUITE, load_suite_source, render_suite

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
    the tiny model (built), a local folder, or a Hub snapshot downloaded into `models_root`."""
    if model:
        return Path(model), ModelOrigin("local", Path(model).name)
    source, repo_id = profile.model["source"], profile.model["repo_id"]
    if source == "tiny":
        from llm_parity.tiny_model import build_tiny_model

        folder = build_tiny_model(log=log)
        return folder, ModelOrigin("local", folder.name)
    if source == "local":
        return Path(repo_id), ModelOrigin("local", Path(repo_id).name)
    if source == "hf":
        revision = profile.model.get("revision")
        log(f"download: {repo_id}@{revision or 'main'} into {models_root / repo_id}")
        folder, commit = fetch_hf(repo_id, revision=revision, local_dir=models_root / repo_id,
                                  allow_pickle=profile.model.get("allow_pickle", False))
        return folder, ModelOrigin("hf", repo_id, revision, commit)
    raise DownloadError(f"{profile.path}: field model.source: {source!r} is not supported yet; download the model "
                        "yourself and pass its folder with --model")


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


def target_side(run: RunDir, profile: Profile, model_dir: Path, suite: dict, manifest: dict, *,
                server_url: str | None = None, running: "VllmServer | None" = None, cache_dir: Path, log=note) -> None:
    """Serve, query the suite, write target/. A server already running can be given instead: as
    `running` (ours, its flags are recorded) or as a bare `server_url`."""
    from llm_parity.serve import VllmServer, spec_from_profile
    from llm_parity.target import VllmHttpClient, query_generations, query_perplexity

    started = time.monotonic()
    spec = running.spec if running else spec_from_profile(profile, model_dir)
    server = running or (None if server_url else VllmServer(spec, log_path=run.server_log, cache_dir=cache_dir,
                                                              health_timeout_s=profile.serve.get("health_timeout_s", 600)))
    if server and not running:
        log(f"serve: starting vLLM ({spec.dtype}, max-num-seqs {spec.max_num_seqs}); log: {run.server_log}")
    with (server if server and not running else nullcontext()):
        url = server.url if server else server_url
        client = VllmHttpClient(url, spec.served_name, timeout_s=profile.decoding.get("request_timeout_s", 120))
        info = client.server_info()
        top_k = profile.decoding["top_logprobs"]
        generations = query_generations(client, suite, top_logprobs=top_k, concurrency=spec.max_num_seqs, log=log)
        perplexity = query_perplexity(client, suite, concurrency=spec.max_num_seqs, log=log)
    decoding = decoding_of(profile.decoding, spec.dtype)
    write_json(run.generations("target"), generations_doc("target", suite, manifest["sha256"], decoding, generations), "generations")
    write_json(run.perplexity("target"), perplexity_doc("target", suite, manifest["sha256"], perplexity), "perplexity")
    server_doc = {"url": url, "argv": server.argv if server else None, "graph_mode": spec.graph_mode if server else "unknown",
                  "tensor_parallel_size": spec.tensor_parallel_size, **info}
    write_json(run.provenance("target"), collect(
        side="target", backend="vllm-http", model_path=str(model_dir), manifest_sha256=manifest["sha256"],
        suite_sha256=suite["sha256"], decoding=decoding, device="server", duration_s=time.monotonic() - started,
        server=server_doc), "provenance")


def reference_side(run: RunDir, profile: Profile, model_dir: Path, suite: dict, manifest: dict, *,
                   device: str = "cpu", log=note) -> None:
    """The suite through transformers on `device`; writes reference/."""
    from llm_parity.reference import TransformersRunner, run_reference

    started = time.monotonic()
    log(f"reference: loading {model_dir} ({profile.dtype}, {device})")
    with TransformersRunner(model_dir, dtype=profile.dtype, device=device,
                            trust_remote_code=profile.model.get("trust_remote_code", False)) as runner:
        generations, perplexity = run_reference(runner, suite, top_logprobs=profile.decoding["top_logprobs"], log=log)
    decoding = decoding_of(profile.decoding, profile.dtype)
    write_json(run.generations("reference"), generations_doc("reference", suite, manifest["sha256"], decoding, generations), "generations")
    write_json(run.perplexity("reference"), perplexity_doc("reference", suite, manifest["sha256"], perplexity), "perplexity")
    write_json(run.provenance("reference"), collect(
        side="reference", backend="transformers", model_path=str(model_dir), manifest_sha256=manifest["sha256"],
        suite_sha256=suite["sha256"], decoding=decoding, device=device, duration_s=time.monotonic() - started), "provenance")


def compare_and_report(run: RunDir, profile: Profile, *, lang: str = "zh") -> dict:
    """Compare the two sides' files and write report/compare.json and report/report.md."""
    target = read_json(run.generations("target"), "generations")
    dtype = target["decoding"]["dtype"]
    result = compare_mod.compare_runs(
        suite=read_json(run.suite, "suite"), target=target,
        reference=read_json(run.generations("reference"), "generations"),
        target_ppl=read_json(run.perplexity("target"), "perplexity"),
        reference_ppl=read_json(run.perplexity("reference"), "perplexity"),
        thresholds=profile.thresholds(dtype), profile=profile.name,
    )
    write_json(run.compare, result, "compare")
    provenance = {side: read_json(run.provenance(side), "provenance") for side in ("target", "reference")}
    report = build_report(result, provenance, lang=lang)
    write_text_atomic(run.report_md, render_markdown(report))
    write_text_atomic(run.report_html, render_html(report, result))
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
