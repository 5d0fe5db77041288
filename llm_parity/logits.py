"""Full-vocabulary logits mode (opt-in): both sides' raw logits at the first positions of every
suite passage, stored compactly, and the distance between them (the seed report's "Logits 差异").

A side writes <side>/logits.f32 (every row of `vocab_size` little-endian float32 logits, passage
after passage, position after position) and <side>/logits.json (schemas/logits), which names that
file with its sha256 and says which ids each passage's rows were computed for. Row i of a passage
holds the logits before its token i + 1 (position 0 has no context). The target gets them from a
server started with LOGITS_SERVE_ARGS, the reference from transformers; compare and the audit read
them back here, so a logits file that does not hash to what its document says is refused."""
from __future__ import annotations

import json
import sys
from array import array
from hashlib import sha256
from pathlib import Path
from typing import Callable

from llm_parity.divergence import logit_measures, logits_summary
from llm_parity.progress import progress
from llm_parity.records import SIDES
from llm_parity.results import ResultFileError, RunDir, read_json, schema_tag, write_bytes_atomic, write_json

DATA_FILE = "logits.f32"
FLOAT32_BYTES = 4


def model_vocab_size(model_dir: Path) -> int:
    """The vocabulary size in the model folder's config.json (its text model's, where it nests one)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return config.get("text_config", config)["vocab_size"]


def logit_inputs(passages: list[dict], positions: int) -> list[dict]:
    """The ids each passage's logits are computed for: its first `positions` + 1 tokens, which give
    `positions` rows (passages of one token have none and are left out)."""
    return [{"id": p["id"], "ids": list(p["ids"][:positions + 1])} for p in passages if len(p["ids"]) > 1]


def _to_bytes(rows: list[list[float]]) -> bytes:
    values = array("f", (value for row in rows for value in row))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def _from_bytes(data: bytes) -> array:
    values = array("f")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def write_side_logits(run: RunDir, side: str, suite: dict, manifest_sha256: str, positions: int, vocab_size: int,
                      fetch: Callable[[list[int]], list[list[float]]]) -> Path:
    """`fetch(ids)` (the side's logits before each token of ids after the first) on every passage,
    written as <side>/logits.f32 and its document <side>/logits.json; returns the document's path."""
    inputs = logit_inputs(suite["passages"], positions)
    expected_rows = sum(len(item["ids"]) - 1 for item in inputs)
    rows = []
    with progress(expected_rows, f"{side}: logits", unit="positions") as bar:
        for item in inputs:
            rows += fetch(item["ids"])
            bar.advance(len(item["ids"]) - 1)
    if any(len(row) != vocab_size for row in rows) or len(rows) != expected_rows:
        raise ValueError(f"{side}: logits rows do not match the passages' positions and vocabulary of {vocab_size}")
    data = _to_bytes(rows)
    write_bytes_atomic(run.side(side) / DATA_FILE, data)
    return write_json(run.logits(side), {
        "schema": schema_tag("logits"), "side": side, "suite_sha256": suite["sha256"],
        "model_manifest_sha256": manifest_sha256, "positions": positions, "vocab_size": vocab_size,
        "file": DATA_FILE, "dtype": "float32", "byte_order": "little", "sha256": sha256(data).hexdigest(),
        "passages": inputs}, "logits")


def read_side_logits(run: RunDir, side: str) -> tuple[dict, list[list[array]]]:
    """<side>/logits.json and, per passage it lists, its rows (float32 arrays) from the file it names; refused
    (ResultFileError) when that file's bytes do not hash to the recorded sha256 or do not fill the rows."""
    doc = read_json(run.logits(side), "logits")
    path = run.side(side) / doc["file"]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ResultFileError(f"{path}: cannot read the logits {run.logits(side)} names ({err.strerror or err})") from None
    if (found := sha256(data).hexdigest()) != doc["sha256"]:
        raise ResultFileError(f"{path}: sha256 {found}, but {run.logits(side)} records {doc['sha256']}")
    vocab = doc["vocab_size"]
    counts = [len(item["ids"]) - 1 for item in doc["passages"]]
    if len(data) != sum(counts) * vocab * FLOAT32_BYTES:
        raise ResultFileError(f"{path}: {len(data)} bytes, not the {sum(counts)} rows of {vocab} float32 its document lists")
    values, rows, start = _from_bytes(data), [], 0
    for count in counts:
        rows.append([values[start + i * vocab:start + (i + 1) * vocab] for i in range(count)])
        start += count * vocab
    return doc, rows


def read_sides(run: RunDir) -> dict[str, tuple[dict, list]]:
    """read_side_logits of each side that stored logits."""
    return {side: read_side_logits(run, side) for side in SIDES if run.logits(side).is_file()}


def measure_sides(stored: dict[str, tuple[dict, list]]) -> tuple[dict | None, str | None]:
    """The distance between both sides' stored logits (read_sides): per passage and over every
    position (divergence.logits_summary), or None and why it cannot be measured (None, None where
    neither side stored any)."""
    absent = [side for side in SIDES if side not in stored]
    if len(absent) == len(SIDES):
        return None, None  # the mode was off: compare says so itself
    if absent:
        return None, (f"no full-vocabulary logits from the {' and the '.join(absent)} "
                      "(opt-in: inv logits --side SIDE)")
    (target_doc, target_rows), (reference_doc, reference_rows) = (stored[side] for side in SIDES)
    if target_doc["passages"] != reference_doc["passages"]:
        return None, "the two sides computed logits for different passages or ids"
    per_passage = [[logit_measures(r, t) for r, t in zip(reference, target)]
                   for reference, target in zip(reference_rows, target_rows)]
    every = [measures for passage in per_passage for measures in passage]
    if not every:
        return None, "the suite has no passage of two tokens or more"
    return {**logits_summary(every),
            "passages": [{"id": item["id"], **logits_summary(measures)}
                         for item, measures in zip(target_doc["passages"], per_passage)]}, None
