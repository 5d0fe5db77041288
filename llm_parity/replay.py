"""Replay: one side of a results folder run again from what the folder records, and the replayed
records judged against the stored ones (report/replay.json, schemas/replay.schema.json).

A replay takes everything from the folder: the rendered suite (suite.json), the model's manifest
(the snapshot's revision and every file's sha256), and from the side's provenance the profile it
ran (its whole document, checked against the recorded sha256), its dtype, the target's serve flags,
and the environment (packages, image, hardware) that it lists beside the outcome. No absolute path
of the original machine is used. The outcome is one of

- byte_identical: the replayed generations.records and perplexity.records have the stored bytes;
- within_thresholds: they differ, but every check of the comparison holds at the profile's
  thresholds for the recorded dtype (other hardware, bf16);
- not_reproducible: some check fails; the first differing prompt (or passage) and token is named.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any

from llm_parity.compare import FAIL, PASS, gather_evidence, run_checks, verdict_of
from llm_parity.profiles import Profile, load_profile
from llm_parity.records import SIDES
from llm_parity.record_files import read_document, read_records, record_file_exists, stored_path
from llm_parity.results import ResultFileError, RunDir, read_json, schema_tag, sha256_file
from llm_parity.serve import serve_settings

BYTE_IDENTICAL, WITHIN_THRESHOLDS, NOT_REPRODUCIBLE = "byte_identical", "within_thresholds", "not_reproducible"
OUTCOME_WORDS = {BYTE_IDENTICAL: "byte-identical", WITHIN_THRESHOLDS: "within thresholds",
                 NOT_REPRODUCIBLE: "not reproducible"}
# What provenance says about where a side ran, compared field by field; the server's argv and URL are
# not among them (its flags are replayed, its port and paths are this machine's).
ENVIRONMENT_FIELDS = ("backend", "device", "packages", "image", "hardware", "env")
SERVER_FIELDS = ("version", "graph_mode", "tensor_parallel_size", "max_model_len", "env")
# Variables that name a folder or socket (caches, VLLM_RPC_BASE_PATH) differ on every machine and
# change no number, so they are not listed as differences.
LOCATION_VARIABLE = re.compile(r"(_DIR|_PATH|_ROOT|_HOME)$")


@dataclass(frozen=True)
class Recorded:
    """What a results folder holds for one side, each file read and validated once."""

    run: RunDir
    side: str
    suite: dict
    manifest: dict
    provenance: dict
    generations: dict
    perplexity: dict

    @classmethod
    def read(cls, run: RunDir, side: str) -> "Recorded":
        """The side's files; a missing one is a one-line error naming it and what the replay needs it for."""
        if side not in SIDES:
            raise ValueError(f"side {side!r}: choose one of {', '.join(SIDES)}")
        needed = {"suite": (run.suite, "the suite the sides ran, rendered to token ids"),
                  "manifest": (run.manifest, "the model's files and their sha256"),
                  "provenance": (run.provenance(side), f"how the {side} side ran: its profile, flags and environment"),
                  "generations": (run.generations(side), "the records the replay is compared with"),
                  "perplexity": (run.perplexity(side), "the records the replay is compared with")}
        for path, why in needed.values():
            if not record_file_exists(path):
                raise ResultFileError(f"{path}: file not found: a replay of the {side} side needs it ({why}); "
                                      f"is {run.root} a complete results folder?")
        return cls(run, side, **{name: read_document(path, name) for name, (path, _) in needed.items()})

    @property
    def dtype(self) -> str:
        return self.generations["decoding"]["dtype"]

    @property
    def server_argv(self) -> list[str] | None:
        return (self.provenance.get("server") or {}).get("argv")


def recorded_profile(recorded: Recorded, given: str | None = None) -> Profile:
    """The profile the side ran: `given` (a name or path) if passed, else the document its provenance
    records, else profiles/<recorded name>.json; in every case its sha256 must be the recorded one."""
    path = recorded.run.provenance(recorded.side)
    ran = recorded.provenance.get("profile")
    if given:
        profile = load_profile(given)
    elif ran and "document" in ran:
        profile = Profile.from_document(ran["document"], path)
    elif ran:
        profile = load_profile(ran["name"])
    else:
        raise ResultFileError(f"{path}: field profile: not recorded (the side ran before sides recorded their "
                              "profile); pass --profile with the profile it ran")
    if ran and profile.sha256 != ran["sha256"]:
        raise ResultFileError(f"{path}: field profile.sha256: expected {ran['sha256']} (the profile the side ran), "
                              f"found {profile.sha256} in {profile.path}")
    return profile


def replay_profile(recorded: Recorded, profile: Profile, *, dtype: str | None = None) -> tuple[Profile, list[dict]]:
    """The profile with the settings the side recorded (its dtype; the target's serve flags), then the
    asked override, listed as {"setting", "recorded", "replayed"}."""
    settings = {"dtype": recorded.dtype}
    if recorded.side == "target" and recorded.server_argv:
        settings.update(serve_settings(recorded.server_argv))
    overrides = []
    if dtype and dtype != settings["dtype"]:
        overrides.append({"setting": "dtype", "recorded": settings["dtype"], "replayed": dtype})
        settings["dtype"] = dtype
    return profile.with_serve(**settings), overrides


def replay_notes(recorded: Recorded) -> list[str]:
    """What the replay could not take from the folder."""
    if recorded.side == "target" and not recorded.server_argv:
        return ["the recorded target queried a server it did not start (--server-url), so its serve flags were not "
                "recorded: the replay served with the profile's"]
    return []


def _flat(doc: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {prefix: doc}
    flat = {}
    for key, value in doc.items():
        flat.update(_flat(value, f"{prefix}.{key}"))
    return flat


def _environment(provenance: dict) -> dict[str, Any]:
    facts = {}
    for name in ENVIRONMENT_FIELDS:
        facts.update(_flat(provenance.get(name), name))
    server = provenance.get("server") or {}
    for name in SERVER_FIELDS:
        if name in server:
            facts.update(_flat(server[name], f"server.{name}"))
    return {name: value for name, value in facts.items() if not LOCATION_VARIABLE.search(name)}


def environment_differences(recorded: dict, replayed: dict) -> list[dict]:
    """Each fact about where a side ran (package versions, image, hardware, device, numeric env
    variables, the server's version and mode) that differs between two provenance documents."""
    before, after = _environment(recorded), _environment(replayed)
    return [{"field": name, "recorded": before.get(name), "here": after.get(name)}
            for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def _first_token_difference(stored: dict, replayed: dict, noise: float) -> dict | None:
    """The first output position where the token differs, or its logprob by more than `noise`."""
    if stored["error"] != replayed["error"]:
        return {"position": None, "why": f"error: stored {stored['error']!r}, replayed {replayed['error']!r}"}
    old, new = stored["output_ids"], replayed["output_ids"]
    for position in range(max(len(old), len(new))):
        if position >= len(old) or position >= len(new) or old[position] != new[position]:
            return {"position": position, "stored_token": old[position] if position < len(old) else None,
                    "replayed_token": new[position] if position < len(new) else None, "why": "token differs"}
        delta = abs(stored["logprobs"][position] - replayed["logprobs"][position])
        if delta > noise:
            return {"position": position, "stored_token": old[position], "replayed_token": new[position],
                    "stored_logprob": stored["logprobs"][position], "replayed_logprob": replayed["logprobs"][position],
                    "why": f"|Δ logprob| {delta:.3g} exceeds {noise:g}"}
    return None


def _first_passage_difference(stored: dict, replayed: dict, noise: float) -> dict | None:
    if stored["error"] != replayed["error"]:
        return {"position": None, "why": f"error: stored {stored['error']!r}, replayed {replayed['error']!r}"}
    for position, (old, new) in enumerate(zip(stored["logprobs"], replayed["logprobs"])):
        if abs(old - new) > noise:
            return {"position": position, "stored_logprob": old, "replayed_logprob": new,
                    "why": f"|Δ prompt logprob| {abs(old - new):.3g} exceeds {noise:g}"}
    return None


def first_difference(stored: dict, replayed: dict, stored_ppl: dict, replayed_ppl: dict, noise: float) -> dict | None:
    """The first prompt (in suite order) and output token where the replay differs from the stored
    records beyond the logprob noise the thresholds allow, else the first such passage token."""
    for kind, old_doc, new_doc, differ in (("prompt", stored, replayed, _first_token_difference),
                                           ("passage", stored_ppl, replayed_ppl, _first_passage_difference)):
        new_by_id = {record["id"]: record for record in new_doc["records"]}
        for old in old_doc["records"]:
            new = new_by_id.get(old["id"])
            found = differ(old, new, noise) if new else {"position": None, "why": "not in the replay"}
            if found:
                return {"kind": kind, "id": old["id"], **found}
    return None


def _difference_text(difference: dict) -> str:
    where = f"{difference['kind']} {difference['id']}"
    if difference["position"] is not None:
        where += f", {'token' if difference['kind'] == 'prompt' else 'passage token'} {difference['position']}"
        if difference.get("stored_token") is not None and difference["stored_token"] == difference["replayed_token"]:
            where += f" (id {difference['stored_token']})"
        elif "stored_token" in difference:
            where += f" (stored id {difference['stored_token']}, replayed id {difference['replayed_token']})"
    return f"{where}: {difference['why']}"


def statement(entry: dict) -> str:
    """The outcome of one side's replay in one line."""
    line = f"{entry['side']}: {OUTCOME_WORDS[entry['outcome']]} ({entry['dtype']})"
    if entry["overrides"]:
        line += " with override " + ", ".join(f"{o['setting']} {o['recorded']} → {o['replayed']}"
                                               for o in entry["overrides"])
    if entry["outcome"] == NOT_REPRODUCIBLE:
        failing = [c["name"] for c in entry["checks"] if c["status"] == FAIL]
        line += f"; failing: {', '.join(failing)}"
    if entry["first_difference"]:
        line += f"; first difference: {_difference_text(entry['first_difference'])}"
    if entry["environment"]:
        line += f"; {len(entry['environment'])} differences in versions or hardware (listed in report/replay.json)"
    return line


def judge(recorded: Recorded, replayed: RunDir, *, thresholds: dict, overrides: list[dict], notes: list[str]) -> dict:
    """One side's entry of report/replay.json: the replayed records against the stored ones, held to
    `thresholds` (the profile's, for the recorded dtype), with every environment difference."""
    side, run = recorded.side, recorded.run
    generations = read_records(replayed.generations(side), "generations")
    perplexity = read_records(replayed.perplexity(side), "perplexity")
    files = [{"stored": stored.relative_to(run.root).as_posix(), "replayed": again.relative_to(run.root).as_posix(),
              "stored_sha256": sha256_file(stored), "replayed_sha256": sha256_file(again)}
             for stored, again in ((stored_path(run.generations(side)), replayed.generations(side)),
                                   (stored_path(run.perplexity(side)), replayed.perplexity(side)))]
    evidence = gather_evidence(suite=recorded.suite, target=generations, reference=recorded.generations,
                               target_ppl=perplexity, reference_ppl=recorded.perplexity, thresholds=thresholds)
    checks = run_checks(evidence)
    if all(f["stored_sha256"] == f["replayed_sha256"] for f in files):
        outcome = BYTE_IDENTICAL
    else:
        outcome = WITHIN_THRESHOLDS if verdict_of(checks) == PASS else NOT_REPRODUCIBLE
    entry = {
        "side": side, "outcome": outcome, "backend": recorded.provenance["backend"],
        "recorded_dtype": recorded.dtype, "dtype": generations["decoding"]["dtype"], "thresholds": thresholds,
        "overrides": overrides, "files": files, "checks": checks,
        "first_difference": first_difference(recorded.generations, generations, recorded.perplexity, perplexity,
                                              thresholds["max_abs_logprob_diff"]),
        "environment": environment_differences(recorded.provenance, read_json(replayed.provenance(side), "provenance")),
        "notes": notes, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return {**entry, "statement": statement(entry)}


def replay_doc(recorded: Recorded, entry: dict, earlier: dict | None) -> dict:
    """report/replay.json with this side's entry, keeping the other side's from an earlier replay."""
    sides = dict(earlier["sides"]) if earlier else {}
    sides[recorded.side] = entry
    return {"schema": schema_tag("replay"), "suite_sha256": recorded.suite["sha256"],
            "model_manifest_sha256": recorded.manifest["sha256"], "sides": dict(sorted(sides.items()))}
