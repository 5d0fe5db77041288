"""The flows of the kit, stage by stage, over one results folder: which stages each task runs and
in what order (demo, verify, target, reference, bench, matrix, compare, audit, replay). Each stage reads what the
stages before it wrote (validated) and writes its own files (validated, atomic), so either side can
run on a different machine and be copied in. cli.py only turns the outcomes into exit codes.

    suite source -> suite.json (rendered once) + model/manifest.json
      -> target/ and reference/ (one backend each, llm_parity.backend, the same records)
      -> teacher forcing: each side scores the other side's answers (<side>/teacher-forced.records)
      -> report/compare.json, report.md, report.html, SHA256SUMS -> audit
      -> replay: a side run again from the folder's own records into replay/<side>/ -> report/replay.json
    matrix: the reference once, then each serving variant a target side of its own (target/,
      variants/<name>/) -> report/matrix.json -> compare as above, the report with the matrix

Teacher forcing needs the other side's answers, so the side that runs second scores them while
its model is loaded, and the side that ran first scores the second one's answers afterwards
(`cross_score`). The reference reloads in seconds where a server takes minutes to start, so the
cheap order is reference, target, then cross_score("reference"); the demo runs it so.
"""
from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from llm_parity import accuracy as accuracy_mod
from llm_parity import ascend
from llm_parity import compare as compare_mod
from llm_parity import matrix as matrix_mod
from llm_parity import logits as logits_mod
from llm_parity import replay as replay_mod
from llm_parity.audit import AuditResult, CheckResult, RunFiles, audit_run, sums_cover_every_file_unchanged
from llm_parity.backend import DEFAULT_BACKEND, SideSetup, backend_class
from llm_parity.download import (DownloadError, ModelOrigin, build_manifest, check_model_folder, recorded_model,
                                  resolve_model, verify_folder)
from llm_parity.forked import ChildFailed, Forked
from llm_parity.logits import model_vocab_size
from llm_parity.profiles import Profile, load_profile
from llm_parity.progress import Progress, note, progress
from llm_parity.provenance import collect
from llm_parity.record_files import RecordJournal, read_records, record_file_exists, stream_records
from llm_parity.records import (SIDES, ForcedScore, Generation, PassageScore, Record, answers_of, decoding_of,
                                generations_doc, other_side, perplexity_doc, teacher_forced_doc, unrunnable_prompt)
from llm_parity.reference import Placement, TransformersRunner
from llm_parity.report import build_report
from llm_parity.report.html import html_pages
from llm_parity.report.markdown import markdown_pages
from llm_parity.results import (ResultFileError, RunDir, ensure_writable, hashing_in_background, listed_files, read_json,
                                sha256_of, write_json, write_sums, write_text_atomic)
from llm_parity.serve import ServerError
from llm_parity.serve import serving
from llm_parity.suite import DEFAULT_SUITE, load_suite_source, render_suite

NOT_RUN = "not run: the run stopped before this item finished"


class PreflightFailed(RuntimeError):
    """A check that must hold before anything is downloaded or started did not."""


class DummyFailed(RuntimeError):
    """vLLM could not serve the model's config with dummy weights; the message says why."""


@dataclass(frozen=True)
class Request:
    """What a task was asked: the profile and results folder, and the options of the side tasks
    (model folder, suite, serving overrides, server URL, device, resume, the reference's placement)."""

    profile: str
    run: str
    results_root: Path
    models_root: Path = Path("models")
    cache_dir: Path = Path(".cache")
    dtype: str | None = None
    model: str | None = None
    suite: str | None = None
    limit: int | None = None
    serve: dict = field(default_factory=dict)
    server_url: str | None = None
    api_key: str | None = None
    device: str = "cpu"
    resume: bool = False
    placement: Placement = Placement()


@dataclass(frozen=True)
class Workspace:
    """A results folder ready for a side: the profile with the request's overrides, the model
    folder, and the suite and manifest every side of the run shares."""

    profile: Profile
    run: RunDir
    model_dir: Path
    suite: dict
    manifest: dict


@dataclass(frozen=True)
class SideOutcome:
    side: str
    folder: Path
    generations: Path
    errors: int  # prompts and passages recorded with an error


@dataclass(frozen=True)
class CompareOutcome:
    result: dict  # report/compare.json
    report: Path


@dataclass(frozen=True)
class MatrixOutcome:
    matrix: dict  # report/matrix.json
    path: Path
    compared: CompareOutcome | None  # None until the run has a reference side


def prepare(run: RunDir, profile: Profile, model_dir: Path, origin: ModelOrigin, *,
            suite_source: dict | None = None) -> tuple[dict, dict]:
    """Write (or check) the model manifest and the rendered suite (from `suite_source`, the
    default suite when None). A side that comes second reuses the suite the first one rendered,
    refuses a `suite_source` other than the one it was rendered from, and must be running the
    same model files."""
    if run.manifest.is_file():
        manifest = read_json(run.manifest, "manifest")
        problems = verify_folder(model_dir, manifest, log=note)
        if problems:
            raise DownloadError(f"{run.manifest}: field files: model folder {model_dir} does not match the manifest "
                                f"the other side ran: {'; '.join(problems)}")
    else:
        check_model_folder(model_dir, allow_pickle=profile.model.get("allow_pickle", False))
        manifest = build_manifest(model_dir, source=origin.source, repo_id=origin.repo_id, revision=origin.revision,
                                  resolved_revision=origin.resolved_revision)
        write_json(run.manifest, manifest, "manifest")
    if run.suite.is_file():
        suite = read_json(run.suite, "suite")
        if suite_source is not None and sha256_of(suite_source) != suite["source_sha256"]:
            raise compare_mod.IncompatibleRuns(
                f"{run.suite}: field source_sha256: this run was rendered from another suite ({suite['name']}); "
                "run this side without --suite/--limit to use it, or choose another run name")
    else:
        source = suite_source if suite_source is not None else load_suite_source(DEFAULT_SUITE)
        suite = render_suite(source, model_dir, default_max_tokens=profile.decoding["max_tokens"])
        write_json(run.suite, suite, "suite")
    return suite, manifest


def open_workspace(request: Request, *, log=note) -> Workspace:
    """The profile, the suite source and the results folder checked before anything is created,
    then the model (built, downloaded or given) and the run's suite and manifest."""
    profile = load_profile(request.profile).with_serve(dtype=request.dtype, **request.serve)
    run = RunDir.under(request.results_root, request.run)
    asked = request.suite is not None or request.limit is not None
    source = load_suite_source(request.suite or DEFAULT_SUITE, limit=request.limit) if asked else None
    ensure_writable(run.root)
    model_dir, origin = resolve_model(profile, request.model, models_root=request.models_root, log=log)
    suite, manifest = prepare(run, profile, model_dir, origin, suite_source=source)
    return Workspace(profile, run, model_dir, suite, manifest)


def _finished_before(run: RunDir, side: str, suite: dict, manifest: dict) -> tuple[dict, dict]:
    """For --resume: the records of an earlier run of this side that finished without error, from
    files in any form, a journal cut off mid-record included."""
    if not record_file_exists(run.generations(side)):
        return {}, {}
    kept = []
    for path, kind in ((run.generations(side), "generations"), (run.perplexity(side), "perplexity")):
        if not record_file_exists(path):  # stopped before its first passage
            kept.append({})
            continue
        doc = read_records(path, kind, keep_cut_off=True)
        if (doc["suite_sha256"], doc["model_manifest_sha256"]) != (suite["sha256"], manifest["sha256"]):
            raise compare_mod.IncompatibleRuns(f"{path}: made from another suite or model; cannot resume it")
        kept.append({record["id"]: record for record in doc["records"] if not record["error"]})
    return kept[0], kept[1]


def _runnable(suite: dict, max_model_len: int, done_gen: dict, done_ppl: dict) -> tuple[list, list]:
    """Items still to run, and the records of those that cannot run, each an error."""
    prompts, passages, failed = [], [], []
    for prompt in suite["prompts"]:
        if prompt["id"] in done_gen:
            continue
        problem = unrunnable_prompt(prompt, max_model_len)
        if problem:
            failed.append(Generation.failed(prompt, problem))
        else:
            prompts.append(prompt)
    for passage in suite["passages"]:
        if passage["id"] in done_ppl:
            continue
        if len(passage["ids"]) > max_model_len:
            failed.append(PassageScore.failed(passage, f"{len(passage['ids'])} tokens exceed max-model-len {max_model_len}"))
        else:
            passages.append(passage)
    return prompts, passages, failed


def _other_answers(run: RunDir, side: str, suite: dict, manifest: dict) -> dict | None:
    """The other side's generations document, to score its answers; None when it has not run."""
    path = run.generations(other_side(side))
    if not record_file_exists(path):
        return None
    doc = read_records(path, "generations")
    if (doc["suite_sha256"], doc["model_manifest_sha256"]) != (suite["sha256"], manifest["sha256"]):
        raise compare_mod.IncompatibleRuns(f"{path}: made from another suite or model than this run's; "
                                           "cannot score its answers")
    return doc


def _not_run(items: list[dict], failed: Callable[[dict, str], Record]) -> Callable[[str], dict]:
    """The record of an item (by id) that never finished."""
    by_id = {item["id"]: item for item in items}
    return lambda item_id: failed(by_id[item_id], NOT_RUN).to_json()


def _kept(journal: RecordJournal, bar: Progress) -> Callable[[Record], None]:
    """The on_record of a backend: the record goes to its file at once and counts as progress."""
    def keep(record: Record) -> None:
        journal.add(record.to_json())
        bar.advance()
    return keep


def _teacher_force(runner, setup: SideSetup, side: str, manifest: dict, other: dict, top_logprobs: int) -> int:
    """`runner` scores every answer of `other`, each written to <side>/teacher-forced.records as it
    finishes, the rest as errors. Returns how many answers carry an error."""
    answers = answers_of(other)
    header = teacher_forced_doc(side, setup.suite, manifest["sha256"], other, top_logprobs, [])
    with RecordJournal(setup.run.teacher_forced(side), header, "teacher-forced") as journal:
        try:
            with progress(len(answers), f"{side}: teacher forcing", unit="answers", log=setup.log) as bar:
                runner.score_answers(answers, top_logprobs=top_logprobs, on_record=_kept(journal, bar))
        finally:
            errors = journal.finish([answer["id"] for answer in answers], _not_run(answers, ForcedScore.failed))
    return errors


def _renders_other_ids(chat_prompt_ids: list[int] | None, prompt_ids: list[int]) -> bool:
    """The server's own chat template rendered other prompt ids than the suite for a record."""
    return chat_prompt_ids is not None and chat_prompt_ids != prompt_ids


def _template_warnings(side: str, differing: list[str], log) -> list[str]:
    """Said at once, not only when compare runs: the server's own chat template rendered other
    prompt ids than the suite for some prompts (`differing`)."""
    if not differing:
        return []
    differing = sorted(differing)
    warning = (f"warning: {side}: the server's chat template renders other prompt ids than the suite for "
               f"{len(differing)} prompts ({', '.join(differing[:5])}{', ...' if len(differing) > 5 else ''}); "
               "the sides still decode the suite's ids, and compare's chat_template check will fail")
    log(warning)
    return [warning]


def run_side(side: str, setup: SideSetup, manifest: dict, *, backend: str | None = None,
             resume: bool = False) -> SideOutcome:
    """One side of a run through any backend (the side's default unless named): every record is
    appended to the side's record files as it finishes (llm_parity.record_files); with `resume`,
    the records that finished before are kept and only the rest run; items that cannot run are
    recorded as errors; whatever happens, the files end in suite order with every item that did
    not finish recorded as one, then provenance is written."""
    run, suite, profile = setup.run, setup.suite, setup.profile
    started = time.monotonic()
    ensure_writable(run.side(side))
    done_gen, done_ppl = _finished_before(run, side, suite, manifest) if resume else ({}, {})
    if resume:
        setup.log(f"resume: keeping {len(done_gen)} prompts and {len(done_ppl)} passages that finished before")
    decoding = decoding_of(profile.decoding, profile.dtype)
    backend_type = backend_class(backend or DEFAULT_BACKEND[side])
    other = _other_answers(run, side, suite, manifest)
    differing = [record["id"] for record in done_gen.values()
                 if _renders_other_ids(record.get("chat_prompt_ids"), record["prompt_ids"])]
    forced_errors = 0
    with ExitStack() as journals:
        generations = journals.enter_context(RecordJournal(
            run.generations(side), generations_doc(side, suite, manifest["sha256"], decoding, []), "generations",
            done_gen.values()))
        scores = journals.enter_context(RecordJournal(
            run.perplexity(side), perplexity_doc(side, suite, manifest["sha256"], []), "perplexity", done_ppl.values()))

        def note_template(record: Generation) -> None:
            if _renders_other_ids(record.chat_prompt_ids, record.prompt_ids):
                differing.append(record.id)
        try:
            with backend_type.open(setup) as runner:
                prompts, passages, failed = _runnable(suite, runner.max_model_len, done_gen, done_ppl)
                for record in failed:
                    (generations if isinstance(record, Generation) else scores).add(record.to_json())
                with progress(len(prompts), f"{side}: generate", unit="prompts", log=setup.log) as bar:
                    keep = _kept(generations, bar)
                    runner.generate(prompts, top_logprobs=profile.decoding["top_logprobs"],
                                    on_record=lambda record: (keep(record), note_template(record)))
                with progress(len(passages), f"{side}: perplexity", unit="passages", log=setup.log) as bar:
                    runner.score(passages, on_record=_kept(scores, bar))
                if other is not None:
                    forced_errors = _teacher_force(runner, setup, side, manifest, other, profile.decoding["top_logprobs"])
                where = runner.describe()
        finally:
            errors = generations.finish([p["id"] for p in suite["prompts"]], _not_run(suite["prompts"], Generation.failed))
            errors += scores.finish([p["id"] for p in suite["passages"]], _not_run(suite["passages"], PassageScore.failed))
    notes = where.get("notes", []) + _template_warnings(side, differing, setup.log)
    write_json(run.provenance(side), collect(
        side=side, backend=backend_type.name, backend_label=backend_type.label,
        profile={"name": profile.name, "sha256": profile.sha256, "document": profile.document}, model_path=str(setup.model_dir),
        manifest_sha256=manifest["sha256"], suite_sha256=suite["sha256"], decoding=decoding, device=where["device"],
        server=where["server"], notes=notes, duration_s=time.monotonic() - started), "provenance")
    return SideOutcome(side, run.side(side), run.generations(side), errors + forced_errors)


def cross_score_side(side: str, setup: SideSetup, manifest: dict, *, backend: str | None = None) -> SideOutcome:
    """The side that ran first scores the answers of the side that ran after it (teacher forcing),
    writing <side>/teacher-forced.records; its own records are left as they are."""
    run = setup.run
    other = _other_answers(run, side, setup.suite, manifest)
    if other is None:
        raise ResultFileError(f"{run.generations(other_side(side))}: file not found: run the {other_side(side)} side "
                              f"before the {side} side scores its answers")
    ensure_writable(run.side(side))
    with backend_class(backend or DEFAULT_BACKEND[side]).open(setup) as runner:
        errors = _teacher_force(runner, setup, side, manifest, other, setup.profile.decoding["top_logprobs"])
    return SideOutcome(side, run.side(side), run.teacher_forced(side), errors)


def _logits_fetcher(side: str, setup: SideSetup, stack: ExitStack) -> Callable[[list[int]], list[list[float]]]:
    """How `side` computes full-vocabulary logits: transformers, or a vLLM server in raw_logits mode
    (`setup.running` or `setup.server_url` started so, else one started now with the profile's flags
    and LOGITS_SERVE_ARGS, torn down when `stack` closes)."""
    profile = setup.profile
    if side == "reference":
        runner = stack.enter_context(TransformersRunner(
            setup.model_dir, dtype=profile.dtype, stop_ids=setup.suite["stop_ids"], device=setup.device,
            trust_remote_code=profile.model.get("trust_remote_code", False)))
        return runner.prompt_logits
    from llm_parity.target import LOGITS_SERVE_ARGS, VllmHttpClient  # requests, only where a server is asked

    logits_profile = profile.with_serve(extra_args=[*profile.serve.get("extra_args", ()), *LOGITS_SERVE_ARGS])
    url, _, spec = stack.enter_context(serving(
        logits_profile, setup.model_dir, log_path=setup.cache_dir / "logits-server.log", cache_dir=setup.cache_dir,
        server_url=setup.server_url, running=setup.running, api_key=setup.api_key, log=setup.log))
    client = stack.enter_context(VllmHttpClient(url, spec.served_name, api_key=setup.api_key,
                                                timeout_s=profile.decoding.get("request_timeout_s", 120)))
    return functools.partial(client.prompt_logits, vocab_size=model_vocab_size(setup.model_dir))


def logits_side(side: str, setup: SideSetup, manifest: dict) -> Path:
    """`side`'s full-vocabulary logits at the first profile.logits.positions positions of every
    passage (the opt-in logits mode): <side>/logits.f32 and logits.json."""
    if side not in SIDES:
        raise ValueError(f"side {side!r}: choose one of {', '.join(SIDES)}")
    positions = setup.profile.document.get("logits", {}).get("positions")
    if positions is None:
        raise ResultFileError(f"{setup.profile.path}: field logits.positions: the profile does not set how many "
                              "positions of each passage the logits mode stores")
    ensure_writable(setup.run.side(side))
    with ExitStack() as stack:
        fetch = _logits_fetcher(side, setup, stack)
        return logits_mod.write_side_logits(setup.run, side, setup.suite, manifest["sha256"], positions,
                                            model_vocab_size(setup.model_dir), fetch)


def logits(request: Request, side: str) -> Path:
    workspace = open_workspace(request)
    return logits_side(side, _setup(workspace, request), workspace.manifest)


def _setup(workspace: Workspace, request: Request, **extra) -> SideSetup:
    return SideSetup(profile=workspace.profile, model_dir=workspace.model_dir, suite=workspace.suite, run=workspace.run,
                     cache_dir=request.cache_dir, device=request.device, server_url=request.server_url,
                     api_key=request.api_key, options={"placement": request.placement}, **extra)


def target_side(run: RunDir, profile: Profile, model_dir: Path, suite: dict, manifest: dict, *, cache_dir: Path,
                server_url: str | None = None, running=None, resume: bool = False, api_key: str | None = None,
                log=note) -> int:
    """The target side on a prepared run (vLLM over HTTP: started now, `running`, or at `server_url`);
    returns how many items failed."""
    setup = SideSetup(profile=profile, model_dir=model_dir, suite=suite, run=run, cache_dir=cache_dir,
                      server_url=server_url, running=running, api_key=api_key, log=log)
    return run_side("target", setup, manifest, resume=resume).errors


def reference_side(run: RunDir, profile: Profile, model_dir: Path, suite: dict, manifest: dict, *,
                   device: str = "cpu", log=note) -> int:
    """The reference side on a prepared run (transformers on `device`); returns how many items failed."""
    setup = SideSetup(profile=profile, model_dir=model_dir, suite=suite, run=run, device=device, log=log)
    return run_side("reference", setup, manifest).errors


def target(request: Request) -> SideOutcome:
    workspace = open_workspace(request)
    return run_side("target", _setup(workspace, request), workspace.manifest, resume=request.resume)


def reference(request: Request) -> SideOutcome:
    workspace = open_workspace(request)
    return run_side("reference", _setup(workspace, request), workspace.manifest, resume=request.resume)


def cross_score(request: Request, side: str) -> SideOutcome:
    """`side` scores the other side's answers (it ran first, so it could not then)."""
    if side not in SIDES:
        raise ValueError(f"side {side!r}: choose one of {', '.join(SIDES)}")
    workspace = open_workspace(request)
    return cross_score_side(side, _setup(workspace, request), workspace.manifest)


def dummy(request: Request) -> dict:
    """The dummy-weights check on the profile's config and tokenizer; DummyFailed if it fails."""
    return _dummy(open_workspace(request), request)


def _dummy(workspace: Workspace, request: Request) -> dict:
    from llm_parity.dummy import run_dummy

    run = workspace.run
    log_path = run.side("target") / "dummy-server.log"
    doc = run_dummy(workspace.profile, workspace.model_dir, out_path=run.dummy, log_path=log_path,
                    cache_dir=request.cache_dir, prompt_ids=workspace.suite["prompts"][0]["prompt_ids"])
    for check in doc["checks"]:
        print(f"dummy: {'PASS' if check['passed'] else 'FAIL'} {check['name']}: {check['evidence']}")
    if not doc["passed"]:
        raise DummyFailed(f"dummy: vLLM could not serve {workspace.model_dir.name} with dummy weights: {doc['error']} "
                          f"(log: {log_path})")
    return doc


def preflight(*, on_ascend: bool | None = None, checks: Callable[[], list] = ascend.preflight) -> list:
    """On an Ascend host (vllm-ascend installed): the NPU is visible and the kernel compiler is on
    PATH, a line each; PreflightFailed when one does not hold."""
    if not (ascend.is_ascend() if on_ascend is None else on_ascend):
        print("preflight: vllm-ascend is not installed here: no NPU checks (CPU or GPU target)")
        return []
    results = checks()
    for check in results:
        print(f"preflight: {'PASS' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    failed = [check.name for check in results if not check.passed]
    if failed:
        raise PreflightFailed(f"preflight: {', '.join(failed)} failed; nothing was downloaded or started")
    return results


def verify(request: Request) -> SideOutcome:
    """The target side as `make verify` runs it on an Ascend host: preflight, download, dummy,
    serve, query."""
    preflight()
    workspace = open_workspace(request)  # once: the manifest hashes every file of the model
    _dummy(workspace, request)
    return run_side("target", _setup(workspace, request), workspace.manifest, resume=request.resume)


def serve(request: Request, *, ready: Callable[[str, str], None], wait: Callable[[], None]) -> None:
    """`vllm serve` of the profile's model with the profile's flags (and the request's overrides),
    the way the target side serves it, for another client; `ready(url, served_name)` once it is
    healthy, then `wait()` until interrupted (Ctrl-C), which stops it cleanly."""
    from llm_parity.serve import VllmServer, spec_from_profile

    profile = load_profile(request.profile).with_serve(dtype=request.dtype, **request.serve)
    model_dir, _ = resolve_model(profile, request.model, models_root=request.models_root)
    spec = spec_from_profile(profile, model_dir, api_key=request.api_key)
    log_path = request.cache_dir / "serve" / f"{spec.served_name}.log"
    note(f"serve: starting vLLM ({spec.dtype}, max-num-seqs {spec.max_num_seqs}); log: {log_path}")
    with VllmServer(spec, log_path=log_path, cache_dir=request.cache_dir,
                    health_timeout_s=profile.serve.get("health_timeout_s", 600)) as server:
        ready(server.url, spec.served_name)
        try:
            wait()
        except KeyboardInterrupt:
            note("serve: stopping")


def demo(request: Request, *, lang: str) -> CompareOutcome:
    """The whole path on the embedded tiny model, from an empty folder: prepare, reference,
    target (which scores the reference's answers while its server is up), the reference scoring
    the target's answers, compare, report."""
    folder = RunDir.under(request.results_root, request.run).root
    if folder.exists():
        shutil.rmtree(folder)  # a demo's suite and manifest are this model's
    workspace = open_workspace(request)
    run_side("reference", _setup(workspace, request), workspace.manifest)
    run_side("target", _setup(workspace, request), workspace.manifest)
    cross_score_side("reference", _setup(workspace, request), workspace.manifest)
    return compare(workspace.run, workspace.profile, lang=lang)


def bench(request: Request, *, concurrencies: tuple[int, ...], output_len: int, input_len: int | None = None,
          requests_per_level: int | None = None, log=note) -> dict:
    """The serving benchmark against the profile's server; writes target/bench.json. Prompts are the
    suite's, or synthetic ones of `input_len` tokens."""
    from llm_parity.bench import run_bench, suite_prompts, synthetic_prompts, total_requests
    from llm_parity.serve import serving

    workspace = open_workspace(request)
    run, profile, model_dir, suite, api_key = (workspace.run, workspace.profile, workspace.model_dir, workspace.suite,
                                               request.api_key)
    ensure_writable(run.side("target"))
    with serving(profile, model_dir, log_path=run.server_log, server_url=request.server_url, cache_dir=request.cache_dir,
                 api_key=api_key, log=log) as (url, _, spec):
        count = total_requests(concurrencies, requests_per_level)
        prompts = synthetic_prompts(count, input_len, vocab_size=model_vocab_size(model_dir)) if input_len else suite_prompts(suite)
        doc = run_bench(url, spec.served_name, prompts=prompts, output_len=output_len, concurrencies=concurrencies,
                        requests_per_level=requests_per_level, api_key=api_key or spec.api_key, log=log)
    write_json(run.bench, doc, "bench")
    return doc


def accuracy(request: Request, *, tasks: tuple[str, ...], sides: tuple[str, ...] = SIDES, limit: int | None = None,
             num_fewshot: int | None = None, lang: str = "zh", log=note) -> CompareOutcome | None:
    """lm-eval on each of `sides` (the target against the profile's server, started now or at
    `request.server_url`; the reference in transformers on `request.device`), written beside the
    run's other side files; then, when the run holds both sides' generations and accuracy, compare
    and report again (returned), else None."""
    workspace = open_workspace(request)
    run, profile, model_dir = workspace.run, workspace.profile, workspace.model_dir
    asked = accuracy_mod.AccuracyRequest(tasks=tasks, max_length=profile.serve["max_model_len"], limit=limit,
                                         num_fewshot=num_fewshot)
    for side in sides:
        ensure_writable(run.side(side))
        log(f"accuracy: {side}: lm-eval on {', '.join(tasks)}")
        if side == "target":
            _target_accuracy(workspace, request, asked, log)
        else:
            args = accuracy_mod.reference_model_args(asked, model_dir=model_dir, dtype=profile.dtype, device=request.device)
            results, fed = accuracy_mod.run_lm_eval(side, asked, args)
            accuracy_mod.write_side(run, side, asked, results, fed, backend="hf", model_args=args,
                                    manifest_sha256=workspace.manifest["sha256"], dtype=profile.dtype)
        log(f"accuracy: wrote {run.accuracy(side)}")
    ready = all(record_file_exists(run.generations(side)) and run.accuracy(side).is_file() for side in SIDES)
    return compare(run, profile, lang=lang) if ready else None


def _target_accuracy(workspace: Workspace, request: Request, asked, log) -> None:
    from llm_parity.serve import serving

    run, profile = workspace.run, workspace.profile
    with serving(profile, workspace.model_dir, log_path=run.side("target") / "accuracy-server.log",
                 server_url=request.server_url, cache_dir=request.cache_dir,
                 api_key=request.api_key, log=log) as (url, _, spec):
        args = accuracy_mod.target_model_args(asked, model_dir=workspace.model_dir, url=url, served_name=spec.served_name,
                                              api_key=request.api_key or spec.api_key)
        results, fed = accuracy_mod.run_lm_eval("target", asked, args)
    accuracy_mod.write_side(run, "target", asked, results, fed, backend="local-completions", model_args=args,
                            manifest_sha256=workspace.manifest["sha256"], dtype=profile.dtype)


def profile_differences(provenance: dict[str, dict], profile: Profile) -> list[str]:
    """How the profile each side recorded differs from `profile` (name and content hash)."""
    differences = []
    for side, doc in provenance.items():
        ran = doc.get("profile")
        if ran and ran["sha256"] != profile.sha256:
            differences.append(f"the {side} side ran profile {ran['name']} ({ran['sha256'][:12]}…), "
                               f"not {profile.name} ({profile.sha256[:12]}…)")
    return differences


def _refresh_matrix(run: RunDir) -> None:
    """report/matrix.json recomputed from the variants' files, now that the run may have gained a
    reference side (an Ascend host runs the matrix without one); nothing when the run has no matrix."""
    if run.matrix.is_file():
        write_json(run.matrix, matrix_mod.recompute(run, read_json(run.matrix, "matrix")), "matrix")


def _compared(run: RunDir, profile: Profile, suite: dict) -> dict:
    """compare.json's document of the run's files, each record file streamed once."""
    target = stream_records(run.generations("target"), "generations")
    dtype = target["decoding"]["dtype"]
    ensure_writable(run.compare.parent)
    forced = {side: stream_records(run.teacher_forced(side), "teacher-forced")
              if record_file_exists(run.teacher_forced(side)) else None for side in SIDES}
    logits, logits_missing = logits_mod.measure_sides(logits_mod.read_sides(run))
    return compare_mod.compare_runs(
        suite=suite, target=target,
        reference=stream_records(run.generations("reference"), "generations"),
        target_ppl=stream_records(run.perplexity("target"), "perplexity"),
        reference_ppl=stream_records(run.perplexity("reference"), "perplexity"),
        thresholds=profile.thresholds(dtype), profile=profile.name,
        accuracy={side: accuracy_mod.read_side(run, side) for side in SIDES},
        target_forced=forced["target"], reference_forced=forced["reference"],
        logits=logits, logits_missing=logits_missing,
    )


def compare(run: RunDir, profile: Profile, *, lang: str = "zh", profile_override: bool = False) -> CompareOutcome:
    """Compare the two sides' files; write report/compare.json, report/matrix.json (recomputed, when
    the run has a matrix), report.md, report.html and, last, SHA256SUMS. The sides must have run
    `profile` (its thresholds judge them) unless `profile_override`, which the report then states."""
    provenance = {side: read_json(run.provenance(side), "provenance") for side in SIDES}
    differences = profile_differences(provenance, profile)
    if differences and not profile_override:
        raise compare_mod.IncompatibleRuns(f"{run.provenance('target').parent.parent}: {'; '.join(differences)}; "
                                           "compare with the profile they ran, or pass --profile-override to judge "
                                           "them by this one (the report says so)")
    suite = read_json(run.suite, "suite")
    # Every file but report/'s, which compare writes, hashed for SHA256SUMS while the records are measured.
    unwritten = [path for path in listed_files(run) if not path.is_relative_to(run.compare.parent)]
    with compare_mod.without_cycle_collection(), hashing_in_background(unwritten) as hashes:
        result = _compared(run, profile, suite)
        if differences:
            result["profile_override"] = "; ".join(differences)
        _refresh_matrix(run)
        # The report is written in a forked child while compare.json is written here: two cores, a second less
        # at 10,000 prompts. A child that fails leaves it to this process, which then says why.
        with Forked(functools.partial(write_report, run, result, provenance, lang=lang, suite=suite)) as report:
            write_json(run.compare, result, "compare")
            try:
                report.result()
            except ChildFailed:
                write_report(run, result, provenance, lang=lang, suite=suite)
        write_sums(run, hashes.sha256)
    return CompareOutcome(result, run.report_md)


def write_report(run: RunDir, result: dict, provenance: dict[str, dict], *, lang: str, suite: dict | None = None) -> None:
    """report.md and report.html from compare.json, with the benchmark, the configuration matrix and
    the replays where the folder has them; for a large run, prompts.md and prompts.html beside them.
    `suite`: the run's suite.json where the caller has it read already (a 10,000-prompt one takes
    0.1 s to read and validate); else it is read here."""
    bench = read_json(run.bench, "bench") if run.bench.is_file() else None
    matrix = read_json(run.matrix, "matrix") if run.matrix.is_file() else None
    replayed = read_json(run.replay, "replay") if run.replay.is_file() else None
    if suite is None:
        suite = read_json(run.suite, "suite")
    report = build_report(result, provenance, manifest=read_json(run.manifest, "manifest"), bench=bench,
                          suite=suite, replay=replayed, lang=lang, matrix=matrix)
    for name, text in (markdown_pages(report) | html_pages(report, result, bench)).items():
        write_text_atomic(run.report_md.with_name(name), text)


@dataclass(frozen=True)
class ReplayOutcome:
    entry: dict  # this side's entry of report/replay.json
    path: Path


def replay(folder: Path, side: str, *, model: str | None = None, dtype: str | None = None, profile: str | None = None,
           device: str = "cpu", lang: str = "zh", cache_dir: Path = Path(".cache"), models_root: Path = Path("models"),
           api_key: str | None = None, running=None, log=note) -> ReplayOutcome:
    """One side of a results folder run again from the folder's own records (suite, manifest, the
    profile, dtype and serve flags in its provenance; `dtype` overrides, and is reported as such)
    into replay/<side>/, then judged against the stored records: report/replay.json, the report's
    replay section where the folder has a comparison, then SHA256SUMS. The folder's sums, the
    model's files and, for the target on an Ascend host, the preflight are checked before anything runs. `running`: a VllmServer started with the
    recorded flags, for the target (tests)."""
    run = RunDir(Path(folder))
    recorded = replay_mod.Recorded.read(run, side)
    _refuse_changed_folder(run, side)
    ran, overrides = replay_mod.replay_profile(recorded, replay_mod.recorded_profile(recorded, profile), dtype=dtype)
    if side == "target" and running is None:
        preflight()  # on an Ascend host, before anything is downloaded or started
    model_dir = recorded_model(recorded.manifest, run.manifest, ran, model, models_root=models_root, log=log)
    if running is not None:
        _refuse_other_flags(running, ran, model_dir)
    replayed = run.replayed
    shutil.rmtree(replayed.side(side), ignore_errors=True)  # what is there is an earlier replay of this side
    setup = SideSetup(profile=ran, model_dir=model_dir, suite=recorded.suite, run=replayed, cache_dir=cache_dir,
                      device=device, running=running, api_key=api_key, log=log)
    run_side(side, setup, recorded.manifest, backend=recorded.provenance["backend"])
    entry = replay_mod.judge(recorded, replayed, thresholds=ran.thresholds(recorded.dtype), overrides=overrides,
                             notes=replay_mod.replay_notes(recorded))
    earlier = read_json(run.replay, "replay") if run.replay.is_file() else None
    write_json(run.replay, replay_mod.replay_doc(recorded, entry, earlier), "replay")
    if run.compare.is_file():
        write_report(run, read_json(run.compare, "compare"),
                     {name: read_json(run.provenance(name), "provenance") for name in SIDES}, lang=lang)
    write_sums(run)
    return ReplayOutcome(entry, run.replay)


def _refuse_changed_folder(run: RunDir, side: str) -> None:
    """A replay rewrites SHA256SUMS, so it refuses a folder whose files changed after the sums were
    written (an earlier replay of this side excepted: this one replaces it)."""
    if not run.sums.is_file():
        return
    found = CheckResult("sums")
    sums_cover_every_file_unchanged(RunFiles(run), found)
    problems = [p for p in found.problems if not Path(p.file).is_relative_to(run.replayed.side(side))]
    if problems:
        raise ResultFileError(f"{problems[0].message}; a replay rewrites SHA256SUMS, so it does not run on a folder "
                              "that changed after its sums were written (`inv audit` lists every change)")


def _refuse_other_flags(running, profile: Profile, model_dir: Path) -> None:
    """A server already running serves the replay only if it was started with the recorded flags."""
    from llm_parity.serve import serve_settings, spec_from_profile, vllm_command

    wanted = serve_settings(vllm_command(spec_from_profile(profile, model_dir)))
    started = serve_settings(running.argv)
    differing = [f"{name} {started.get(name)} (recorded {wanted.get(name)})"
                 for name in sorted(set(wanted) | set(started)) if wanted.get(name) != started.get(name)]
    if differing:
        raise compare_mod.IncompatibleRuns(f"the running server was not started with the recorded serve flags: "
                                           f"{', '.join(differing)}")

def _run_variant(workspace: Workspace, request: Request, variant: matrix_mod.Variant, profile: Profile,
                 image_tag: str | None) -> matrix_mod.VariantRun:
    """One variant as a target side of its own server; a server that does not start is recorded, not raised."""
    why_not = matrix_mod.why_not_here(variant, image_tag)
    if why_not:
        note(f"matrix: {variant.name}: skipped: {why_not}")
        return matrix_mod.VariantRun(variant, matrix_mod.SKIPPED, why_not)
    matrix_mod.clear(variant, workspace.run)
    setup = replace(_setup(workspace, request), profile=profile, run=variant.results(workspace.run), server_url=None,
                    options={"concurrency": variant.concurrency})
    note(f"matrix: {variant.name}: {variant.definition.get('description', '')} -> {variant.folder}/")
    try:
        run_side("target", setup, workspace.manifest)
    except ServerError as err:
        reason = matrix_mod.server_failure(err)
        note(f"matrix: {variant.name}: the server did not start, going on: {reason}")
        return matrix_mod.VariantRun(variant, matrix_mod.SERVER_FAILED, reason)
    return matrix_mod.VariantRun(variant, matrix_mod.RAN)


def matrix(request: Request, *, lang: str, names: list[str] | None = None,
           variants: list[matrix_mod.Variant] | None = None, with_reference: bool = True) -> MatrixOutcome:
    """The configuration matrix: the reference once (unless the run has one, or not `with_reference`),
    then each variant named (all when None) on a server of its own; then report/matrix.json from every
    variant's files (those not run now keep what became of them before) and, with a reference side,
    compare and the report. `variants` defaults to the profile's."""
    defined = variants or matrix_mod.variants_of(load_profile(request.profile))
    chosen = matrix_mod.select(defined, names)  # an unknown name is refused before anything is created
    workspace = open_workspace(request)
    profiles = {v.name: matrix_mod.variant_profile(workspace.profile, v) for v in chosen}  # refused before any start
    run = workspace.run
    if with_reference and not run.provenance("reference").is_file():
        run_side("reference", _setup(workspace, request), workspace.manifest)
    runs = matrix_mod.previous_runs(run, defined)
    image_tag = matrix_mod.image_tag_here()
    for variant in chosen:
        runs[variant.name] = _run_variant(workspace, request, variant, profiles[variant.name], image_tag)
    doc = matrix_mod.matrix_document(run, [runs[v.name] for v in defined], profile=workspace.profile.name,
                                     thresholds_by_dtype=workspace.profile.thresholds_by_dtype)
    write_json(run.matrix, doc, "matrix")
    if run.provenance("reference").is_file() and run.provenance("target").is_file():
        return MatrixOutcome(doc, run.matrix, compare(run, workspace.profile, lang=lang))
    write_sums(run)
    return MatrixOutcome(doc, run.matrix, None)


def compare_run(request: Request, *, lang: str, profile_override: bool = False) -> CompareOutcome:
    return compare(RunDir.under(request.results_root, request.run), load_profile(request.profile), lang=lang,
                   profile_override=profile_override)


def audit(folder: Path) -> AuditResult:
    """Every check on a results folder, from its files alone."""
    return audit_run(RunDir(Path(folder)))


def download(request: Request) -> Workspace:
    """Fetch (or take) the model and write the run's manifest and suite."""
    return open_workspace(request)


