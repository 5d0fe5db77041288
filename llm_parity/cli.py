"""What the invoke tasks call: each entry point runs one flow of llm_parity.pipeline and turns
its outcome into an exit code scripts can rely on.

Exit codes: 0 pass (or stage done), 1 verdict fail or failed prompts, 2 unusable input (bad file,
wrong field, mismatched sides, missing model, unwritable results), 3 the server could not be
started (or the Ascend preflight failed, or a process of the reference failed), 130 interrupted."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from llm_parity import pipeline
from llm_parity.accuracy import parse_tasks
from llm_parity.audit import summary as audit_summary
from llm_parity.audit import write_audit
from llm_parity.compare import IncompatibleRuns, verdict_reasons
from llm_parity.download import DownloadError, verify_folder
from llm_parity.images import base_reference
from llm_parity.plan import GIB, load_config, plan_memory, render_plan
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.records import SIDES
from llm_parity.processes import ProcessesFailed
from llm_parity.progress import note
from llm_parity.reference import Placement, parse_max_memory
from llm_parity.replay import NOT_REPRODUCIBLE
from llm_parity.results import ResultFileError, RunDir, read_json, write_json
from llm_parity.serve import ServerError

EXIT_PASS, EXIT_FAIL, EXIT_UNUSABLE, EXIT_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
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
        raise StageFailed(f"error: {err}", EXIT_UNUSABLE) from None
    except (ServerError, pipeline.PreflightFailed, ProcessesFailed) as err:
        raise StageFailed(f"error: {err}", EXIT_SERVER) from None
    except pipeline.DummyFailed as err:
        raise StageFailed(str(err), EXIT_FAIL) from None
    except KeyboardInterrupt:
        raise StageFailed("interrupted: stopped; every record that finished was written (rerun the side with --resume)",
                          EXIT_INTERRUPTED) from None


def placement_of(*, processes=1, batch_size=None, device_map=None, max_memory=None, offload_folder=None) -> Placement:
    """The reference's placement from a task's options (invoke passes numbers given on the command line as strings)."""
    return Placement(processes=int(processes), batch_size=None if batch_size is None else int(batch_size),
                     device_map=device_map, max_memory=parse_max_memory(max_memory) if max_memory else None,
                     offload_folder=offload_folder)


def request(*, profile: str, run: str, results: str | None = None, serve: dict | None = None,
            limit: int | None = None, placement: dict | None = None, **options) -> pipeline.Request:
    """A pipeline request from a task's options (`placement`: the reference's, as `placement_of`
    takes them); folders and the API key from the environment."""
    return pipeline.Request(profile=profile, run=run, results_root=Path(results) if results else RESULTS_ROOT,
                            models_root=MODELS_ROOT, cache_dir=CACHE_DIR, serve=serve or {},
                            limit=None if limit is None else int(limit), api_key=os.environ.get(API_KEY_ENV),
                            placement=placement_of(**placement or {}), **options)


def side_exit(outcome: pipeline.SideOutcome) -> int:
    print(f"{outcome.side}: wrote {outcome.folder}")
    if outcome.errors:
        raise StageFailed(f"{outcome.side}: {outcome.errors} prompts or passages failed (see the error fields in "
                          f"{outcome.generations}); fix the cause and rerun with --resume", EXIT_FAIL)
    return EXIT_PASS


def verdict_exit(outcome: pipeline.CompareOutcome) -> int:
    print(summary_line(outcome.result))
    print(f"report: {outcome.report}")
    return EXIT_PASS if outcome.result["verdict"] == "pass" else EXIT_FAIL


def target(**options) -> int:
    """The target side: serve (or use --server-url), query, write target/."""
    return guarded(lambda: side_exit(pipeline.target(request(**options))))


def reference(**options) -> int:
    """The reference side: transformers on --device (in --processes, or spread by --device-map); write reference/."""
    return guarded(lambda: side_exit(pipeline.reference(request(**options))))


def logits(*, side: str, **options) -> int:
    """`side`'s full-vocabulary logits on the passages (the opt-in logits mode); writes <side>/logits.json and logits.f32."""
    def store() -> int:
        note(f"logits: wrote {pipeline.logits(request(**options), side)}")
        return 0
    return guarded(store)


def cross_score(*, scorer: str, **options) -> int:
    """`scorer` (a side) scores the other side's answers by teacher forcing; writes <scorer>/teacher-forced.records."""
    return guarded(lambda: side_exit(pipeline.cross_score(request(**options), scorer)))


def dummy(**options) -> int:
    """The dummy-weights check on the profile's config and tokenizer; exit 1 if it fails."""
    return guarded(lambda: pipeline.dummy(request(**options)) and EXIT_PASS)


def verify(**options) -> int:
    """The target side as `make verify` runs it on an Ascend host: preflight, download, dummy, serve, query."""
    return guarded(lambda: side_exit(pipeline.verify(request(**options))))


def serve(**options) -> int:
    """Serve the profile's model with the profile's flags until Ctrl-C; exit 0 when stopped so."""
    def ready(url: str, served_name: str) -> None:
        key = "requires the key in LLM_PARITY_API_KEY" if os.environ.get(API_KEY_ENV) else "no API key"
        print(f"serve: {url}/v1 (OpenAI-compatible) serves model {served_name!r}; {key}; Ctrl-C stops it", flush=True)

    def wait_forever() -> None:
        # Ctrl-C stops it even where the shell that started it in the background ignores SIGINT.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        while True:
            signal.pause()

    return guarded(lambda: pipeline.serve(request(**options), ready=ready, wait=wait_forever) or EXIT_PASS)


def compare(*, lang: str = "zh", profile_override: bool = False, **options) -> int:
    return guarded(lambda: verdict_exit(pipeline.compare_run(request(**options), lang=lang,
                                                             profile_override=profile_override)))


def _against(label: str, comparison: dict) -> str:
    if comparison["reason"]:
        return f"{label} {comparison['verdict']}: {comparison['reason']}"
    records = {None: "", True: ", records identical", False: ", records differ"}[comparison["records_identical"]]
    return f"{label} {comparison['verdict']} ({comparison['identical']}/{comparison['prompts']} identical{records})"


def matrix_lines(doc: dict) -> list[str]:
    """One line per variant: what became of it, against the reference and the base, what differs from base."""
    lines = []
    for entry in doc["variants"]:
        against = [_against(label, entry[key]) for label, key in (("vs reference", "vs_reference"), ("vs base", "vs_base"))
                   if entry[key]]
        what = [entry["verdict"].upper()] + against if entry["status"] == "ran" else [f"{entry['status']}: {entry['reason']}"]
        differs = f" - differs from base: {'; '.join(entry['differs_from_base'])}" if entry["differs_from_base"] else ""
        lines.append(f"matrix: {entry['name']:<20} {', '.join(what)}{differs}")
    return lines + [f"matrix: verdict {doc['verdict'].upper()}"]


def matrix(*, lang: str = "zh", variants: str | None = None, with_reference: bool = True, **options) -> int:
    """The configuration matrix: each variant on a server of its own against the reference and the base variant."""
    def action():
        names = [name.strip() for name in variants.split(",") if name.strip()] if variants else None
        outcome = pipeline.matrix(request(**options), lang=lang, names=names, with_reference=with_reference)
        print("\n".join(matrix_lines(outcome.matrix)))
        print(f"matrix: wrote {outcome.path}")
        if outcome.compared:
            print(f"report: {outcome.compared.report}")
        return EXIT_PASS if outcome.matrix["verdict"] == "pass" else EXIT_FAIL
    return guarded(action)


def demo(*, lang: str = "zh", run: str = "demo", profile: str = DEMO_PROFILE, **options) -> int:
    """The whole path on the embedded tiny model: prepare, reference, target, teacher forcing, compare, report."""
    return guarded(lambda: verdict_exit(pipeline.demo(request(profile=profile, run=run, **options), lang=lang)))


def accuracy(*, tasks: str, side: str = "both", limit: int | None = None, num_fewshot: int | None = None,
             lang: str = "zh", **options) -> int:
    """lm-eval on one side or both; when the run then holds both sides, compare and report."""
    def action():
        if side not in (*SIDES, "both"):
            raise ValueError(f"--side {side!r}: choose target, reference or both")
        outcome = pipeline.accuracy(request(**options), tasks=parse_tasks(tasks), sides=SIDES if side == "both" else (side,),
                                    limit=None if limit is None else int(limit),
                                    num_fewshot=None if num_fewshot is None else int(num_fewshot), lang=lang)
        if outcome is None:
            print("accuracy: done; compare reports it once the run holds both sides' generations and accuracy")
            return EXIT_PASS
        return verdict_exit(outcome)
    return guarded(action)


def download(**options) -> int:
    """Fetch the profile's model (or take a local folder) and write the run's manifest and suite."""
    def action():
        workspace = pipeline.download(request(**options))
        manifest = workspace.manifest
        print(f"download: {workspace.model_dir} ({len(manifest['files'])} files, manifest {manifest['sha256'][:16]}…) "
              f"-> {workspace.run.manifest}")
        return EXIT_PASS
    return guarded(action)


def results_folder(run: str, results: str | None = None) -> Path:
    """A run name under the results root, or a path to any results folder (an auditor receives
    a folder, not a run name)."""
    if "/" in run or run.startswith("."):
        return Path(run)
    return RunDir.under(Path(results) if results else RESULTS_ROOT, run).root


def audit(*, run: str, results: str | None = None) -> int:
    """Re-check a results folder from its files alone; exit 0 only if every check holds. Any folder
    can be read; report/audit.json is written only into a folder under the results root."""
    def action():
        folder = results_folder(run, results)
        result = pipeline.audit(folder)
        print(audit_summary(result))
        root = Path(results) if results else RESULTS_ROOT
        if folder.resolve().is_relative_to(root.resolve()):
            print(f"audit: wrote {write_audit(result)}")
        else:
            print(f"audit: {folder} is outside the results root {root}: report/audit.json not written")
        if result.ok:
            return EXIT_PASS
        return EXIT_UNUSABLE if result.unreadable else EXIT_FAIL
    return guarded(action)


def replay(*, run: str, side: str, results: str | None = None, lang: str = "zh", **options) -> int:
    """Run one side of a results folder again from its own records and judge the replayed records
    against the stored ones; exit 0 byte-identical or within thresholds, 1 not reproducible."""
    def action():
        outcome = pipeline.replay(results_folder(run, results), side, lang=lang, cache_dir=CACHE_DIR,
                                  models_root=MODELS_ROOT, api_key=os.environ.get(API_KEY_ENV), **options)
        print(f"replay: {outcome.entry['statement']}")
        for difference in outcome.entry["environment"]:
            print(f"  differs here: {difference['field']}: recorded {difference['recorded']}, here {difference['here']}")
        print(f"replay: wrote {outcome.path}")
        return EXIT_FAIL if outcome.entry["outcome"] == NOT_REPRODUCIBLE else EXIT_PASS
    return guarded(action)


def bench(*, concurrencies: str = "1,2,4,8,16", output_len: int = 64, input_len: int | None = None,
          requests_per_level: int | None = None, **options) -> int:
    """Serving benchmark: TTFT, TPOT, ITL, end-to-end latency and throughput at each concurrency."""
    def action():
        from llm_parity.bench import render_bench

        asked = request(**options)
        levels = tuple(int(level) for level in concurrencies.split(","))
        doc = pipeline.bench(asked, concurrencies=levels, output_len=output_len, input_len=input_len,
                             requests_per_level=requests_per_level)
        print(render_bench(doc))
        path = RunDir.under(asked.results_root, asked.run).bench
        print(f"bench: wrote {path}")
        failed = sum(level["summary"]["failed"] for level in doc["levels"])
        if failed:
            raise StageFailed(f"bench: {failed} requests failed (see {path})", EXIT_FAIL)
        return EXIT_PASS
    return guarded(action)


def summary_line(result: dict) -> str:
    """The verdict in one line; a failing or unchecked check is named with its measured value."""
    s = result["summary"]
    reasons = verdict_reasons(result)
    return (f"verdict: {result['verdict'].upper()} ({result['dtype']}) - {s['identical']}/{s['prompts']} prompts identical, "
            f"{s['split_within_top_k']} split within top-k, {s['split_outside_top_k']} outside, {s['errors']} errors; "
            f"max |Δ logprob| {s['max_abs_logprob_diff']:.3g}; max perplexity diff {_pct(s['max_perplexity_rel_diff'])}; "
            f"smallest top-1/top-2 margin {_num(s['min_reference_margin'])}" + _accuracy_text(result) +
            (f" - {reasons}" if reasons else ""))


def _accuracy_text(result: dict) -> str:
    tasks = result.get("accuracy", {}).get("tasks", [])
    return "".join(f"; {t['task']} accuracy {t['target_accuracy']:.4g} vs {t['reference_accuracy']:.4g} "
                   f"({len(t['flipped_to_wrong']) + len(t['flipped_to_correct'])} flipped)" for t in tasks)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value * 100:.4g}%"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def image_base(tag: str, *, allow_unpinned: bool, mirror: str | None = None) -> int:
    """Print the base image reference (tag@digest, or the bare tag when allowed) and 1/0 for pinned."""
    def action():
        reference, pinned = base_reference(tag, allow_unpinned=allow_unpinned, mirror=mirror)
        print(reference, int(pinned))
        return 0
    return guarded(action)


def check_model(*, model: str, manifest: str) -> int:
    """Re-hash a model folder against a manifest; exit 1 naming every changed, missing or extra file."""
    def action():
        problems = verify_folder(Path(model), read_json(Path(manifest), "manifest"), log=note)
        for problem in problems:
            print(f"check-model: {problem}")
        if problems:
            raise StageFailed(f"check-model: {model} does not match {manifest} ({len(problems)} problems)", EXIT_FAIL)
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
        with TransformersRunner(folder, dtype="float32", stop_ids=suite["stop_ids"]) as runner:
            generations, _ = run_reference(runner, {**suite, "passages": []}, top_logprobs=2, log=lambda _: None)
        margins = [top_margin(top) for record in generations for top in record.top_logprobs]
        print(folder)
        print(f"smallest top-1/top-2 logprob margin over the suite's greedy outputs: {min(margins):.4f}")
        return 0
    return guarded(action)


