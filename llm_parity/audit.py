"""Audit a results folder from its files alone: every file valid against its schema, the
SHA256SUMS intact and complete, both sides made from the same suite, model and decoding, and
the verdict recomputed from the raw generations equal to the one in compare.json.

All problems are collected, not just the first; each names the file and what is wrong."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llm_parity.compare import IncompatibleRuns, compare_runs
from llm_parity.download import sha256_file
from llm_parity.records import SIDES
from llm_parity.results import ResultFileError, RunDir, canonical_json, read_json, sha256_of, write_text_atomic
from llm_parity.suite import suite_hash



def _listed_files(run: RunDir) -> list[Path]:
    return sorted(p for p in run.root.rglob("*")
                  if p.is_file() and p != run.sums and not p.name.startswith("."))


def write_sums(run: RunDir) -> Path:
    """SHA256SUMS over every file of the run, in `sha256sum -c` format; written last."""
    lines = [f"{sha256_file(p)}  {p.relative_to(run.root).as_posix()}" for p in _listed_files(run)]
    write_text_atomic(run.sums, "\n".join(lines) + "\n")
    return run.sums


@dataclass
class AuditResult:
    run: Path
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    unreadable: bool = False  # some file is missing, not JSON or not valid against its schema

    @property
    def ok(self) -> bool:
        return not self.problems


def check_sums(run: RunDir, result: AuditResult) -> None:
    if not run.sums.is_file():
        result.problems.append(f"{run.sums}: missing; the folder cannot be checked for changes")
        return
    listed = {}
    for number, line in enumerate(run.sums.read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            result.problems.append(f"{run.sums}: line {number} is not '<sha256>  <path>'")
            continue
        listed[name] = digest
    present = {p.relative_to(run.root).as_posix(): p for p in _listed_files(run)}
    for name, digest in listed.items():
        if name not in present:
            result.problems.append(f"{run.root / name}: listed in SHA256SUMS but missing")
        elif sha256_file(present[name]) != digest:
            result.problems.append(f"{run.root / name}: sha256 differs from SHA256SUMS (file changed)")
    for name in sorted(set(present) - set(listed)):
        result.problems.append(f"{run.root / name}: not listed in SHA256SUMS (file added)")
    result.facts.append(f"SHA256SUMS: {len(listed)} files listed")


def _read(path: Path, name: str, result: AuditResult) -> dict | None:
    try:
        return read_json(path, name)
    except ResultFileError as err:
        result.problems.append(str(err))
        result.unreadable = True
        return None


def _check_hash(path: Path, field_name: str, stored: str, computed: str, result: AuditResult) -> None:
    if stored != computed:
        result.problems.append(f"{path}: field {field_name}: stored {stored}, recomputed from the file's content {computed}")


def audit_run(run: RunDir) -> AuditResult:
    """Every check on one results folder."""
    result = AuditResult(run.root)
    check_sums(run, result)
    suite = _read(run.suite, "suite", result)
    manifest = _read(run.manifest, "manifest", result)
    docs = {side: {kind: _read(path, kind, result) for kind, path in
                   (("generations", run.generations(side)), ("perplexity", run.perplexity(side)), ("provenance", run.provenance(side)))}
            for side in SIDES}
    compare = _read(run.compare, "compare", result)
    if suite:
        _check_hash(run.suite, "sha256", suite["sha256"], suite_hash(suite["prompts"], suite["passages"], suite["stop_ids"]), result)
    if manifest:
        _check_hash(run.manifest, "sha256", manifest["sha256"], sha256_of(manifest["files"]), result)
    for side in SIDES:
        for kind, doc in docs[side].items():
            if not doc:
                continue
            path = getattr(run, kind)(side)
            if doc.get("side") != side:
                result.problems.append(f"{path}: field side: expected {side!r}, found {doc.get('side')!r}")
            model_hash = doc["model"]["manifest_sha256"] if kind == "provenance" else doc["model_manifest_sha256"]
            if suite and doc["suite_sha256"] != suite["sha256"]:
                result.problems.append(f"{path}: field suite_sha256: {doc['suite_sha256']} is not this run's suite {suite['sha256']}")
            if manifest and model_hash != manifest["sha256"]:
                result.problems.append(f"{path}: model manifest {model_hash} is not this run's model {manifest['sha256']}")
    target, reference = docs["target"]["generations"], docs["reference"]["generations"]
    if target and reference and target["decoding"] != reference["decoding"]:
        result.problems.append(f"{run.generations('reference')}: field decoding: {reference['decoding']} differs from the target's {target['decoding']}")
    if suite and compare and all(docs[side]["generations"] and docs[side]["perplexity"] for side in SIDES):
        _recompute(run, suite, docs, compare, result)
    return result


def _recompute(run: RunDir, suite: dict, docs: dict, compare: dict, result: AuditResult) -> None:
    try:
        recomputed = compare_runs(suite=suite, target=docs["target"]["generations"], reference=docs["reference"]["generations"],
                                  target_ppl=docs["target"]["perplexity"], reference_ppl=docs["reference"]["perplexity"],
                                  thresholds=compare["thresholds"], profile=compare["profile"])
    except IncompatibleRuns as err:
        result.problems.append(f"{run.root}: the sides cannot be compared: {err}")
        return
    if canonical_json(recomputed) != canonical_json(compare):
        differing = sorted(key for key in recomputed if recomputed[key] != compare.get(key))
        result.problems.append(f"{run.compare}: differs from the comparison recomputed from the raw files "
                               f"in {differing} (recorded verdict {compare['verdict']}, recomputed {recomputed['verdict']})")
    result.facts.append(f"verdict recomputed from raw records: {recomputed['verdict']} "
                        f"({recomputed['summary']['identical']}/{recomputed['summary']['prompts']} identical, dtype {recomputed['dtype']})")
    result.facts.append(f"suite {suite['sha256'][:16]}…, model {compare['model_manifest_sha256'][:16]}…, "
                        f"thresholds: {compare['thresholds']['token_match']}, max |Δ logprob| {compare['thresholds']['max_abs_logprob_diff']}, "
                        f"perplexity {compare['thresholds']['perplexity_rel_diff']}")


def summary(result: AuditResult) -> str:
    head = f"audit {result.run}: {'PASS' if result.ok else 'FAIL'}"
    lines = [head] + [f"  ok: {fact}" for fact in result.facts] + [f"  problem: {p}" for p in result.problems]
    return "\n".join(lines)
