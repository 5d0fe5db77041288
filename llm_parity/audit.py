"""Audit a results folder from its files alone: every file valid against its schema, the
SHA256SUMS intact and complete, both sides made from the same suite, model and decoding, and
the comparison recomputed from the raw generations equal to compare.json, with a passing verdict;
where a side was replayed, report/replay.json is read too and its outcomes stated.

Each check is one named function in AUDIT_CHECKS. All problems are collected, not just the
first; each names the file, the field, what was expected there and what was found."""
from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

from llm_parity.accuracy import read_side as read_accuracy
from llm_parity import matrix
from llm_parity.compare import (PASS, IncompatibleRuns, Registry, compare_runs, failing_checks, unchecked_checks,
                                without_cycle_collection)
from llm_parity.logits import measure_sides, read_side_logits
from llm_parity.record_files import RECORD_KINDS, RecordStream, read_document, record_file_exists, stream_records
from llm_parity.records import SIDES
from llm_parity.results import (ResultFileError, RunDir, ensure_writable, hashing_in_background, listed_files,
                                read_json, schema_tag, sha256_file, sha256_of, write_json)
from llm_parity.suite import suite_hash

SIDE_DOCUMENTS = ("generations", "perplexity", "provenance")  # each the name of its schema and of its RunDir path
OPTIONAL_SIDE_DOCUMENTS = ("teacher-forced",)  # read where present; SHA256SUMS says whether one was removed
WHOLE_FILE = "(file)"  # the field of a problem with the file itself: missing, added, not JSON
READABLE = "readable"  # the check whose problems make a folder unreadable


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a results folder: where it is, what was expected there and what was found."""

    check: str
    file: str
    field: str
    expected: str
    found: str
    why: str = ""  # what the difference means, where the values alone do not say

    @property
    def message(self) -> str:
        where = self.file if self.field == WHOLE_FILE else f"{self.file}: field {self.field}"
        text = f"{where}: expected {self.expected}, found {self.found}"
        return f"{text} ({self.why})" if self.why else text

    def as_json(self) -> dict:
        return {"check": self.check, "file": self.file, "field": self.field, "expected": self.expected,
                "found": self.found, "message": self.message}


@dataclass
class CheckResult:
    """What one audit check found."""

    check: str
    problems: list[Problem] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def problem(self, file: Path | str, field_name: str, *, expected: Any, found: Any, why: str = "") -> None:
        self.problems.append(Problem(self.check, str(file), field_name, str(expected), str(found), why))


@dataclass
class AuditResult:
    run: Path
    checks: list[CheckResult]

    @property
    def structured_problems(self) -> list[Problem]:
        return [problem for check in self.checks for problem in check.problems]

    @property
    def problems(self) -> list[str]:
        """One line per problem, as the summary prints them."""
        return [problem.message for problem in self.structured_problems]

    @property
    def facts(self) -> list[str]:
        return [fact for check in self.checks for fact in check.facts]

    @property
    def ok(self) -> bool:
        return not self.structured_problems

    @property
    def unreadable(self) -> bool:
        """Some file is missing, not JSON or not valid against its schema."""
        return any(problem.check == READABLE for problem in self.structured_problems)


def _side_path(run: RunDir, side: str, kind: str) -> Path:
    """The path of one side's document of schema `kind` ("teacher-forced": run.teacher_forced)."""
    return getattr(run, kind.replace("-", "_"))(side)


class UnreadableRecord(Exception):
    """A record file stopped reading midway (its ResultFileError is in RunFiles.errors)."""


@dataclass
class RunFiles:
    """The documents of one results folder, each read and validated once; what could not be read."""

    run: RunDir
    docs: dict[Path, dict] = field(default_factory=dict)
    errors: dict[Path, tuple[str, ResultFileError]] = field(default_factory=dict)  # path: (schema, error)
    accuracy: dict[str, dict | None] = field(default_factory=dict)  # side: accuracy.read_side, None if not run
    logits: dict[str, tuple[dict, list]] = field(default_factory=dict)  # side: logits.read_side_logits, where stored
    sha256: Callable[[Path], str] = sha256_file  # a file's hash, for the sums check (results.write_sums's `sha256`)

    @classmethod
    def read(cls, run: RunDir, sha256: Callable[[Path], str] = sha256_file) -> "RunFiles":
        files = cls(run, sha256=sha256)
        side_documents = [(_side_path(run, side, kind), kind) for side in SIDES for kind in SIDE_DOCUMENTS]
        optional = [(path, kind) for side in SIDES for kind in OPTIONAL_SIDE_DOCUMENTS
                    if record_file_exists(path := _side_path(run, side, kind))]
        replayed = [(run.replay, "replay")] if run.replay.exists() else []  # only once a side was replayed
        for path, schema in [(run.suite, "suite"), (run.manifest, "manifest"), *side_documents, *optional,
                             (run.compare, "compare"), *replayed]:
            try:
                files.docs[path] = files._streamed(path, schema) if schema in RECORD_KINDS else read_document(path, schema)
            except ResultFileError as err:
                files.errors[path] = (schema, err)
        for side in SIDES:  # optional: only runs that ran lm-eval have them
            try:
                files.accuracy[side] = read_accuracy(run, side)
            except ResultFileError as err:
                files.errors[run.accuracy(side)] = ("accuracy", err)
        for side in SIDES:  # opt-in: only runs in logits mode have them
            if run.logits(side).is_file():
                try:
                    files.logits[side] = read_side_logits(run, side)
                except ResultFileError as err:
                    files.errors[run.logits(side)] = ("logits", err)
        return files

    def _streamed(self, path: Path, kind: str) -> dict:
        """A record file with its header checked now and its records as they are read, once, by the
        recomputation (in bounded memory); a record that does not read is kept in `errors`."""
        doc = stream_records(path, kind)

        def unreadable(err: ResultFileError) -> None:
            self.errors[path] = (kind, err)
            raise UnreadableRecord(str(err)) from err
        records = doc["records"]
        return {**doc, "records": records.guarded(unreadable) if isinstance(records, RecordStream) else iter(records)}

    def read_every_record(self) -> None:
        """Read what the recomputation left unread of each record file (all of it when it could
        not run), so every record is checked whatever else the folder lacks."""
        self.recomputed  # computing it reads the record files, once, as they go
        for doc in self.docs.values():
            for _ in doc["records"] if isinstance(doc.get("records"), Iterator) else ():
                pass

    def side(self, side: str, kind: str) -> tuple[Path, dict | None]:
        path = _side_path(self.run, side, kind)
        return path, self.docs.get(path)

    @cached_property
    def recomputed(self) -> dict | IncompatibleRuns | None:
        """compare.json recomputed from the raw files with its own thresholds; the reason when the
        sides cannot be compared; None when a file it needs could not be read."""
        suite, compare = self.docs.get(self.run.suite), self.docs.get(self.run.compare)
        raw = {(side, kind): self.side(side, kind)[1] for side in SIDES for kind in ("generations", "perplexity")}
        if not suite or not compare or not all(raw.values()):
            return None
        if any(path in self.errors for side in SIDES for path in (self.run.accuracy(side), self.run.logits(side))):
            return None
        forced = {side: self.side(side, "teacher-forced")[1] for side in SIDES}
        logits, logits_missing = measure_sides(self.logits)
        try:
            recomputed = compare_runs(suite=suite, target=raw["target", "generations"], reference=raw["reference", "generations"],
                                      target_ppl=raw["target", "perplexity"], reference_ppl=raw["reference", "perplexity"],
                                      thresholds=compare["thresholds"], profile=compare["profile"], accuracy=self.accuracy,
                                      target_forced=forced["target"], reference_forced=forced["reference"],
                                      logits=logits, logits_missing=logits_missing)
        except IncompatibleRuns as err:
            return err
        except UnreadableRecord:
            return None
        # Not a measurement: what compare was told, kept so the rest can be compared as a whole.
        override = {"profile_override": compare["profile_override"]} if "profile_override" in compare else {}
        return {**recomputed, **override}


AUDIT_CHECKS = Registry()
audit_check = AUDIT_CHECKS.add


@audit_check("sums")
def sums_cover_every_file_unchanged(files: RunFiles, found: CheckResult) -> None:
    run = files.run
    if not run.sums.is_file():
        found.problem(run.sums, WHOLE_FILE, expected="present", found="missing",
                      why="the folder cannot be checked for changes")
        return
    listed = {}
    for number, line in enumerate(run.sums.read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            found.problem(run.sums, f"line {number}", expected="'<sha256>  <path>'", found=repr(line))
            continue
        listed[name] = digest
    present = {p.relative_to(run.root).as_posix(): p for p in listed_files(run)}
    for name, digest in listed.items():
        if name not in present:
            found.problem(run.root / name, WHOLE_FILE, expected="present (listed in SHA256SUMS)", found="missing")
        elif (actual := files.sha256(present[name])) != digest:
            found.problem(run.root / name, "sha256", expected=f"{digest} (SHA256SUMS)", found=actual,
                          why="the file changed after SHA256SUMS was written")
    for name in sorted(set(present) - set(listed)):
        found.problem(run.root / name, WHOLE_FILE, expected="listed in SHA256SUMS", found="not listed (file added)")
    found.facts.append(f"SHA256SUMS: {len(listed)} files listed")


def _unreadable_problem(found: CheckResult, path: Path, schema: str, err: ResultFileError) -> None:
    # ResultFileError says "<path>: field <field>: <what>", "<path>: line <n>: field <field>: <what>"
    # (a record file's line) or "<path>: <what>" (results.py, record_files.py).
    detail = str(err).removeprefix(f"{path}: ")
    line, detail = (f"{detail.split(': ', 1)[0]}: ", detail.split(": ", 1)[1]) if re.match(r"line \d+: ", detail) else ("", detail)
    field_name, what = detail.removeprefix("field ").split(": ", 1) if detail.startswith("field ") else (WHOLE_FILE, detail)
    field_name = line + field_name if field_name != WHOLE_FILE else field_name
    what = what if field_name != WHOLE_FILE or not line else line + what
    found.problem(path, field_name, expected=f"a JSON document valid against schemas/{schema}.schema.json", found=what)


@audit_check(READABLE)
def every_file_readable(files: RunFiles, found: CheckResult) -> None:
    files.read_every_record()
    for path, (schema, err) in files.errors.items():
        _unreadable_problem(found, path, schema, err)


def _recorded_hash(found: CheckResult, path: Path, stored: str, computed: str) -> None:
    if stored != computed:
        found.problem(path, "sha256", expected=f"{computed} (recomputed from the file's content)", found=stored)


@audit_check("suite_hash")
def suite_hash_matches_content(files: RunFiles, found: CheckResult) -> None:
    if suite := files.docs.get(files.run.suite):
        _recorded_hash(found, files.run.suite, suite["sha256"],
                       suite_hash(suite["prompts"], suite["passages"], suite["stop_ids"]))


@audit_check("manifest_hash")
def manifest_hash_matches_content(files: RunFiles, found: CheckResult) -> None:
    if manifest := files.docs.get(files.run.manifest):
        _recorded_hash(found, files.run.manifest, manifest["sha256"], sha256_of(manifest["files"]))


def _same_inputs_of_one_document(found: CheckResult, files: RunFiles, side: str, kind: str) -> None:
    path, doc = files.side(side, kind)
    suite, manifest = files.docs.get(files.run.suite), files.docs.get(files.run.manifest)
    if not doc:
        return
    if doc["side"] != side:
        found.problem(path, "side", expected=side, found=doc["side"])
    if suite and doc["suite_sha256"] != suite["sha256"]:
        found.problem(path, "suite_sha256", expected=f"{suite['sha256']} (this run's suite.json)", found=doc["suite_sha256"])
    model_field, model_hash = (("model.manifest_sha256", doc["model"]["manifest_sha256"]) if kind == "provenance"
                               else ("model_manifest_sha256", doc["model_manifest_sha256"]))
    if manifest and model_hash != manifest["sha256"]:
        found.problem(path, model_field, expected=f"{manifest['sha256']} (this run's model manifest)", found=model_hash)


@audit_check("same_inputs")
def both_sides_from_this_runs_suite_and_model(files: RunFiles, found: CheckResult) -> None:
    for side in SIDES:
        for kind in SIDE_DOCUMENTS + OPTIONAL_SIDE_DOCUMENTS:
            _same_inputs_of_one_document(found, files, side, kind)


@audit_check("same_decoding")
def both_sides_decoded_alike(files: RunFiles, found: CheckResult) -> None:
    (_, target), (path, reference) = files.side("target", "generations"), files.side("reference", "generations")
    if target and reference and target["decoding"] != reference["decoding"]:
        found.problem(path, "decoding", expected=f"{json.dumps(target['decoding'], sort_keys=True)} (the target's)",
                      found=json.dumps(reference["decoding"], sort_keys=True))


def _brief(value: Any) -> str:
    """A value short enough for one line: scalars as JSON, anything larger by size and hash."""
    if isinstance(value, (dict, list)):
        return f"{type(value).__name__} of length {len(value)}, sha256 {sha256_of(value)[:16]}"
    return json.dumps(value, ensure_ascii=False)


@audit_check("recomputed_comparison")
def compare_json_recomputes_from_raw_files(files: RunFiles, found: CheckResult) -> None:
    recomputed, compare = files.recomputed, files.docs.get(files.run.compare)
    if isinstance(recomputed, IncompatibleRuns):
        found.problem(files.run.root, WHOLE_FILE, expected="sides that can be compared", found=str(recomputed))
        return
    if recomputed is None:
        return
    if recomputed != compare:
        for key in sorted(set(recomputed) | set(compare)):
            if recomputed.get(key) != compare.get(key):
                found.problem(files.run.compare, key, expected=_brief(recomputed.get(key)), found=_brief(compare.get(key)),
                              why="compare.json differs from the comparison recomputed from the raw files")
    thresholds = compare["thresholds"]
    found.facts.append(f"suite {compare['suite_sha256'][:16]}…, model {compare['model_manifest_sha256'][:16]}…, "
                       f"thresholds: {thresholds['token_match']}, max |Δ logprob| {thresholds['max_abs_logprob_diff']}, "
                       f"perplexity {thresholds['perplexity_rel_diff']}")


@audit_check("verdict")
def recomputed_verdict_passes(files: RunFiles, found: CheckResult) -> None:
    recomputed = files.recomputed
    if not isinstance(recomputed, dict):
        return
    if recomputed["verdict"] != PASS:
        found.problem(files.run.compare, "verdict", expected=PASS, found=recomputed["verdict"],
                      why=f"recomputed from the raw records; failing: {'; '.join(failing_checks(recomputed))}")
        return
    counts = f"{recomputed['summary']['identical']}/{recomputed['summary']['prompts']} identical, dtype {recomputed['dtype']}"
    if tasks := recomputed.get("accuracy", {}).get("tasks"):
        counts += f"; accuracy of {len(tasks)} tasks recomputed from the per-sample files"
    unchecked = unchecked_checks(recomputed)
    counts += f"; not checked: {', '.join(unchecked)}" if unchecked else ""
    found.facts.append(f"verdict recomputed from raw records: {recomputed['verdict']} ({counts})")


@audit_check("replay")
def replays_stated(files: RunFiles, found: CheckResult) -> None:
    """A replay's outcome is the auditor's to judge, not a fault of the folder: it is stated, with the
    inputs it ran from checked against this run's."""
    replayed = files.docs.get(files.run.replay)
    if not replayed:
        return
    for name, path in (("suite_sha256", files.run.suite), ("model_manifest_sha256", files.run.manifest)):
        if (doc := files.docs.get(path)) and replayed[name] != doc["sha256"]:
            found.problem(files.run.replay, name, expected=f"{doc['sha256']} (this run's)", found=replayed[name])
    found.facts += [f"replay: {entry['statement']}" for entry in replayed["sides"].values()]


@audit_check("matrix")
def matrix_json_recomputes_from_variant_files(files: RunFiles, found: CheckResult) -> None:
    """Every variant's files valid and made from this run's suite and model, and report/matrix.json
    equal to the matrix recomputed from them (what became of a variant that did not run is as stored)."""
    path = files.run.matrix
    if not path.is_file():
        return
    try:
        stored = read_json(path, "matrix")
        recomputed = matrix.recompute(files.run, stored)
    except ResultFileError as err:
        found.problem(path, WHOLE_FILE, expected="a matrix whose variants' files are readable and valid", found=str(err))
        return
    for index, (entry, again) in enumerate(zip(stored["variants"], recomputed["variants"])):
        for key in sorted(set(entry) | set(again)):
            if entry.get(key) != again.get(key):
                found.problem(path, f"variants[{index}].{key}", expected=_brief(again.get(key)), found=_brief(entry.get(key)),
                              why=f"variant {entry['name']}: report/matrix.json differs from the matrix recomputed from its files")
    if stored["verdict"] != recomputed["verdict"]:
        found.problem(path, "verdict", expected=recomputed["verdict"], found=stored["verdict"])
    ran = [entry["name"] for entry in recomputed["variants"] if entry["status"] == matrix.RAN]
    found.facts.append(f"matrix recomputed from the files of {len(ran)} variants ({', '.join(ran)}): {recomputed['verdict']}")


def audit_run(run: RunDir | Path | str) -> AuditResult:
    """Every audit check on one results folder. `run` may be any folder (an auditor is handed a
    folder, not a run name); the audit only reads it."""
    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    with without_cycle_collection(), hashing_in_background(listed_files(run) if run.sums.is_file() else []) as hashes:
        files = RunFiles.read(run, sha256=hashes.sha256)
        files.read_every_record()  # the long part, now: the sums check, which waits on the hashes, comes first
        return AuditResult(run.root, [_run_check(name, audit, files) for name, audit in AUDIT_CHECKS])


def _run_check(name: str, audit: Callable[[RunFiles, CheckResult], None], files: RunFiles) -> CheckResult:
    found = CheckResult(name)
    audit(files, found)
    return found


def audit_doc(result: AuditResult) -> dict:
    """The audit document (schemas/audit.schema.json)."""
    return {
        "schema": schema_tag("audit"), "run": str(result.run), "ok": result.ok, "unreadable": result.unreadable,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checks": [{"name": check.check, "problems": len(check.problems)} for check in result.checks],
        "problems": [problem.as_json() for problem in result.structured_problems],
        "facts": result.facts,
    }


def write_audit(result: AuditResult) -> Path:
    """Write report/audit.json inside the folder that was audited, and nowhere else: the caller
    decides whether that folder may be written to (the CLI confines it to the results root).
    SHA256SUMS does not cover this file, so writing it leaves a later audit's sums check intact."""
    path = RunDir(result.run).audit
    ensure_writable(path.parent)
    return write_json(path, audit_doc(result), "audit")


def summary(result: AuditResult) -> str:
    head = f"audit {result.run}: {'PASS' if result.ok else 'FAIL'}"
    lines = [head] + [f"  ok: {fact}" for fact in result.facts] + [f"  problem: {p}" for p in result.problems]
    return "\n".join(lines)
