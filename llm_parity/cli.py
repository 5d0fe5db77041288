"""What the invoke tasks call: each entry point runs stages and turns the outcome into an exit
code scripts can rely on.

Exit codes: 0 pass (or stage done), 1 verdict fail, 2 unusable input (bad file, wrong field,
mismatched sides, missing model), 3 the server could not be started or reached."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from llm_parity import pipeline
from llm_parity.compare import IncompatibleRuns
from llm_parity.download import DownloadError
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.results import ResultFileError, RunDir
from llm_parity.serve import ServerError

EXIT_SERVER = 3
RESULTS_ROOT = Path(os.environ.get("LLM_PARITY_RESULTS", "results"))
CACHE_DIR = Path(os.environ.get("LLM_PARITY_CACHE", ".cache"))


class StageFailed(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def guarded(action):
    """Run `action`; known failures become one line on stderr and their exit code."""
    try:
        return action()
    except (ResultFileError, IncompatibleRuns, DownloadError, ValueError) as err:
        raise StageFailed(f"error: {err}", pipeline.EXIT_UNUSABLE) from None
    except ServerError as err:
        raise StageFailed(f"error: {err}", EXIT_SERVER) from None


def _setup(profile_name: str, run: str, dtype: str | None, model: str | None, results: str | None):
    profile = load_profile(profile_name)
    if dtype:
        profile = profile.with_serve(dtype=dtype)
    run_dir = RunDir.under(Path(results) if results else RESULTS_ROOT, run)
    model_dir = pipeline.resolve_model_dir(profile, model)
    return profile, run_dir, model_dir


def target(*, profile: str, run: str, dtype: str | None = None, model: str | None = None,
           server_url: str | None = None, results: str | None = None) -> int:
    def action():
        prof, run_dir, model_dir = _setup(profile, run, dtype, model, results)
        suite, manifest = pipeline.prepare(run_dir, prof, model_dir)
        pipeline.target_side(run_dir, prof, model_dir, suite, manifest, server_url=server_url, cache_dir=CACHE_DIR)
        print(f"target: wrote {run_dir.side('target')}")
        return 0
    return guarded(action)


def reference(*, profile: str, run: str, dtype: str | None = None, model: str | None = None,
              device: str = "cpu", results: str | None = None) -> int:
    def action():
        prof, run_dir, model_dir = _setup(profile, run, dtype, model, results)
        suite, manifest = pipeline.prepare(run_dir, prof, model_dir)
        pipeline.reference_side(run_dir, prof, model_dir, suite, manifest, device=device)
        print(f"reference: wrote {run_dir.side('reference')}")
        return 0
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
        prof, run_dir, model_dir = _setup(DEMO_PROFILE, run, dtype, None, results)
        _clear(run_dir)
        suite, manifest = pipeline.prepare(run_dir, prof, model_dir)
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

