"""What the invoke tasks call: each entry point runs stages and turns the outcome into an exit
code scripts can rely on.

Exit codes: 0 pass (or stage done), 1 verdict fail or failed prompts, 2 unusable input (bad file,
wrong field, mismatched sides, missing model, unwritable results), 3 the server could not be
started, 130 interrupted."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from llm_parity import ascend, pipeline
from llm_parity.audit import audit_run
from llm_parity.audit import summary as audit_summary
from llm_parity.compare import IncompatibleRuns
from llm_parity.download import DownloadError, verify_folder
from llm_parity.dummy import run_dummy
from llm_parity.images import base_reference
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.plan import GIB, load_config, plan_memory, render_plan
from llm_parity.progress import note
from llm_parity.results import ResultFileError, RunDir, ensure_writable, read_json, write_json
from llm_parity.serve import ServerError

EXIT_SERVER = 3
EXIT_INTERRUPTED = 130
API_KEY_ENV = "LLM_PARITY_API_KEY"
RESULTS_ROOT = Path(os.environ.get("LLM_PARITY_RESULTS", "results"))
CACHE_DIR = Path(os.environ.get("LLM_PARITY_CACHE", ".cache"))
MODELS_ROOT = Path(os.environ.get("LLM_PARITY_MODELS", "models"))


class StageFailed(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so every `with VllmServer(...)` tears its process group down
    # and the records that finished are written.
    raise KeyboardInterrupt


def guarded(action):
    """Run `action`; known failures become one line on stderr and their exit code."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return action()
    except (ResultFileError, IncompatibleRuns, DownloadError, ValueError) as err:
        raise StageFailed(f"error: {err}", pipeline.EXIT_UNUSABLE) from None
    except ServerError as err:
        raise StageFailed(f"error: {err}", EXIT_SERVER) from None
    except KeyboardInterrupt:
        raise StageFailed("interrupted: the server was stopped; what finished was written (rerun with --resume)",
                          EXIT_INTERRUPTED) from None


def _setup(profile_name: str, run: str, dtype: str | None, model: str | None, results: str | None,
           serve: dict | None = None):
    profile = load_profile(profile_name).with_serve(dtype=dtype, **(serve or {}))
    run_dir = RunDir.under(Path(results) if results else RESULTS_ROOT, run)
    ensure_writable(run_dir.root)
    model_dir, origin = pipeline.resolve_model(profile, model, models_root=MODELS_ROOT)
    return profile, run_dir, model_dir, origin


def _side_done(side: str, run_dir: RunDir, errors: int) -> int:
    print(f"{side}: wrote {run_dir.side(side)}")
    if errors:
        again = "rerun with --resume" if side == "target" else "rerun"
        raise StageFailed(f"{side}: {errors} prompts or passages failed (see the error fields in "
                          f"{run_dir.generations(side)}); fix the cause and {again}", pipeline.EXIT_FAIL)
    return 0


def target(*, profile: str, run: str, dtype: str | None = None, model: str | None = None,
           server_url: str | None = None, results: str | None = None, resume: bool = False, **serve) -> int:
    """`serve` overrides the profile's serve settings (max_model_len, max_num_seqs, port, ...).
    An API key in LLM_PARITY_API_KEY is required by the server we start and sent by the client."""
    def action():
        prof, run_dir, model_dir, origin = _setup(profile, run, dtype, model, results, serve)
        suite, manifest = pipeline.prepare(run_dir, prof, model_dir, origin)
        errors = pipeline.target_side(run_dir, prof, model_dir, suite, manifest, server_url=server_url,
                                      cache_dir=CACHE_DIR, resume=resume, api_key=os.environ.get(API_KEY_ENV))
        return _side_done("target", run_dir, errors)
    return guarded(action)


def dummy(*, profile: str, run: str, dtype: str | None = None, model: str | None = None,
          results: str | None = None, **serve) -> int:
    """The dummy-weights check on the profile's config and tokenizer; exit 1 if it fails."""
    def action():
        prof, run_dir, model_dir, origin = _setup(profile, run, dtype, model, results, serve)
        suite, _ = pipeline.prepare(run_dir, prof, model_dir, origin)
        doc = run_dummy(prof, model_dir, out_path=run_dir.dummy, log_path=run_dir.side("target") / "dummy-server.log",
                        cache_dir=CACHE_DIR, prompt_ids=suite["prompts"][0]["prompt_ids"])
        for check in doc["checks"]:
            print(f"dummy: {'PASS' if check['passed'] else 'FAIL'} {check['name']}: {check['evidence']}")
        if not doc["passed"]:
            raise StageFailed(f"dummy: vLLM could not serve {model_dir.name} with dummy weights: {doc['error']} "
                              f"(log: {run_dir.side('target') / 'dummy-server.log'})", pipeline.EXIT_FAIL)
        return 0
    return guarded(action)


def preflight(*, on_ascend: bool | None = None, checks=ascend.preflight) -> int:
    """On an Ascend host (vllm-ascend installed): the NPU is visible and the kernel compiler is on
    PATH, one line each; exit 3 before anything is downloaded or loaded when one fails."""
    if not (ascend.is_ascend() if on_ascend is None else on_ascend):
        print("preflight: vllm-ascend is not installed here: no NPU checks (CPU or GPU target)")
        return 0
    results = checks()
    for check in results:
        print(f"preflight: {'PASS' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    failed = [check.name for check in results if not check.passed]
    if failed:
        raise StageFailed(f"preflight: {', '.join(failed)} failed; nothing was downloaded or started", EXIT_SERVER)
    return 0


def verify(*, profile: str, run: str, dtype: str | None = None, model: str | None = None,
           results: str | None = None, **serve) -> int:
    """The target side as `make verify` runs it on an Ascend host: preflight, download, dummy,
    serve, query."""
    preflight()
    code = dummy(profile=profile, run=run, dtype=dtype, model=model, results=results, **serve)
    return code or target(profile=profile, run=run, dtype=dtype, model=model, results=results, **serve)


def reference(*, profile: str, run: str, dtype: str | None = None, model: str | None = None,
              device: str = "cpu", results: str | None = None) -> int:
    def action():
        prof, run_dir, model_dir, origin = _setup(profile, run, dtype, model, results)
        suite, manifest = pipeline.prepare(run_dir, prof, model_dir, origin)
        errors = pipeline.reference_side(run_dir, prof, model_dir, suite, manifest, device=device)
        return _side_done("reference", run_dir, errors)
    return guarded(action)


def compare(*, profile: str, run: str, lang: str = "zh", results: str | None = None) -> int:
    def action():
        prof = load_profile(profile)
        run_dir = RunDir.under(Path(results) if results else RESULTS_ROOT, run)
        result = pipeline.compare_and_report(run_dir, prof, lang=lang)
        print(pipeline.summary_line(result))
        print(f"report: {run_dir.report_md}")
        return pipeline.EXIT_PASS if result["verdict"] == "pass" else pipeline.EXIT_FAIL
    return guarded(action)


def demo(*, dtype: str | None = None, run: str = "demo", lang: str = "zh", server_url: str | None = None,
         results: str | None = None) -> int:
    """The whole path on the embedded tiny model: prepare, target, reference, compare, report."""
    def action():
        prof, run_dir, model_dir, origin = _setup(DEMO_PROFILE, run, dtype, None, results)
        _clear(run_dir)
        suite, manifest = pipeline.prepare(run_dir, prof, model_dir, origin)
        pipeline.target_side(run_dir, prof, model_dir, suite, manifest, server_url=server_url, cache_dir=CACHE_DIR)
        pipeline.reference_side(run_dir, prof, model_dir, suite, manifest)
        result = pipeline.compare_and_report(run_dir, prof, lang=lang)
        print(pipeline.summary_line(result))
        print(f"report: {run_dir.report_md}")
        return pipeline.EXIT_PASS if result["verdict"] == "pass" else pipeline.EXIT_FAIL
    return guarded(action)


def _clear(run_dir: RunDir) -> None:
    """A demo run starts from an empty folder so its suite and manifest are this model's."""
    if run_dir.root.exists():
        shutil.rmtree(run_dir.root)



def image_base(tag: str, *, allow_unpinned: bool, mirror: str | None = None) -> int:
    """Print the base image reference (tag@digest, or the bare tag when allowed) and 1/0 for pinned."""
    def action():
        reference, pinned = base_reference(tag, allow_unpinned=allow_unpinned, mirror=mirror)
        print(reference, int(pinned))
        return 0
    return guarded(action)


def audit(*, run: str, results: str | None = None) -> int:
    """Re-check a results folder from its files alone; exit 0 only if every check holds."""
    def action():
        result = audit_run(RunDir.under(Path(results) if results else RESULTS_ROOT, run))
        print(audit_summary(result))
        if result.ok:
            return 0
        return pipeline.EXIT_UNUSABLE if result.unreadable else pipeline.EXIT_FAIL
    return guarded(action)


def download(*, profile: str, run: str, model: str | None = None, results: str | None = None) -> int:
    """Fetch the profile's model (or take a local folder) and write the run's manifest and suite."""
    def action():
        prof, run_dir, model_dir, origin = _setup(profile, run, None, model, results)
        _, manifest = pipeline.prepare(run_dir, prof, model_dir, origin)
        print(f"download: {model_dir} ({len(manifest['files'])} files, manifest {manifest['sha256'][:16]}…) -> {run_dir.manifest}")
        return 0
    return guarded(action)


def check_model(*, model: str, manifest: str) -> int:
    """Re-hash a model folder against a manifest; exit 1 naming every changed, missing or extra file."""
    def action():
        problems = verify_folder(Path(model), read_json(Path(manifest), "manifest"), log=note)
        for problem in problems:
            print(f"check-model: {problem}")
        if problems:
            raise StageFailed(f"check-model: {model} does not match {manifest} ({len(problems)} problems)", pipeline.EXIT_FAIL)
        print(f"check-model: {model} matches {manifest}")
        return 0
    return guarded(action)


def plan(*, model: str, dtype: str, max_model_len: int, max_num_seqs: int, card_gib: float,
         gpu_memory_utilization: float, out: str | None = None) -> int:
    """Print the memory plan of a model (folder, config.json, or Hub id); optionally write plan.json."""
    def action():
        source = model
        if not Path(model).exists() and "/" in model:
            from huggingface_hub import hf_hub_download

            try:
                source = hf_hub_download(model, "config.json")
            except Exception as err:  # noqa: BLE001 - the Hub client raises its HTTP library's errors too
                raise DownloadError(f"could not fetch config.json of {model}: {type(err).__name__}: {err}") from None
        doc = plan_memory(load_config(source), dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                          card_memory_bytes=int(card_gib * GIB), gpu_memory_utilization=gpu_memory_utilization)
        if out:
            write_json(Path(out), doc, "plan")
        print(render_plan(doc))
        return 0
    return guarded(action)


def tiny_model() -> int:
    """Build (or reuse) the tiny model and print its folder and its smallest greedy top-1/top-2
    margin over the default suite: how far it is from a near-tie that bf16 noise could flip."""
    def action():
        from llm_parity.reference import TransformersRunner, run_reference
        from llm_parity.records import top_margin
        from llm_parity.suite import load_suite_source, render_suite
        from llm_parity.tiny_model import build_tiny_model

        folder = build_tiny_model()
        profile = load_profile(DEMO_PROFILE)
        suite = render_suite(load_suite_source(), folder, default_max_tokens=profile.decoding["max_tokens"])
        with TransformersRunner(folder, dtype="float32") as runner:
            generations, _ = run_reference(runner, {**suite, "passages": []}, top_logprobs=2, log=lambda _: None)
        margins = [top_margin(top) for record in generations for top in record["top_logprobs"]]
        print(folder)
        print(f"smallest top-1/top-2 logprob margin over the suite's greedy outputs: {min(margins):.4f}")
        return 0
    return guarded(action)


def bench(*, profile: str, run: str, dtype: str | None = None, model: str | None = None, server_url: str | None = None,
          concurrencies: str = "1,2,4,8,16", output_len: int = 64, input_len: int | None = None,
          requests_per_level: int | None = None, results: str | None = None, **serve) -> int:
    """Serving benchmark: TTFT, TPOT, ITL, end-to-end latency and throughput at each concurrency."""
    def action():
        from llm_parity.bench import render_bench

        prof, run_dir, model_dir, origin = _setup(profile, run, dtype, model, results, serve)
        suite, _ = pipeline.prepare(run_dir, prof, model_dir, origin)
        levels = tuple(int(level) for level in concurrencies.split(","))
        doc = pipeline.bench_side(run_dir, prof, model_dir, suite, server_url=server_url, cache_dir=CACHE_DIR,
                                  concurrencies=levels, output_len=output_len, input_len=input_len,
                                  requests_per_level=requests_per_level, api_key=os.environ.get(API_KEY_ENV))
        print(render_bench(doc))
        print(f"bench: wrote {run_dir.bench}")
        failed = sum(level["summary"]["failed"] for level in doc["levels"])
        if failed:
            raise StageFailed(f"bench: {failed} requests failed (see {run_dir.bench})", pipeline.EXIT_FAIL)
        return 0
    return guarded(action)
