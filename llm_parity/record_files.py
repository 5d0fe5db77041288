"""The files that hold a side's records (generations, perplexity, teacher-forced): JSON Lines, a
header line, then one record per line, each canonical (sorted keys, no spaces), so a run that is
killed keeps every record that finished and two runs give the same bytes.

A record line (form v3) is the record with its numbers packed: `logprobs` is "<code>:<hex>" of
a little-endian array, f4 (float32) when every value is a float32 exactly (as real logprobs are),
else f8, so no number is lost; `top_logprobs` is {"ids": "i4:<hex>", "logprobs": "<f4|f8>:...",
"positions": P, "width": W}, arrays of P x W in the padded layout of records.TopK. Ids, text and
every other field stay plain JSON. Parsing such a line costs a fraction of the numbers as JSON text.

While a side runs, a RecordJournal appends each record as it finishes and flushes it; when the
side ends, however it ends, the journal is rewritten in suite order with every item that did not
finish recorded as an error. A run killed outright leaves the journal in finishing order, which
reads as it is (compare pairs records by id) and which --resume continues.

Read, a record is the list form it always was ($defs/record of its schema: logprobs a list of
numbers, top_logprobs [[token_id, logprob], ...] per position), or with `columns=True` the column
form: logprobs an array (float32 or float64, as stored) and top_logprobs a records.TopK. Every form written before still
reads: v2 (the same lines with every number as JSON) and v1 (one JSON document, <side>/<kind>.json)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from llm_parity.records import NO_TOKEN, TopK, top_k_arrays, top_k_pairs
from llm_parity.results import (ResultFileError, atomic_file, read_json, schema_tag, validate_part, write_json,
                                write_text_atomic)

RECORD_KINDS = ("generations", "perplexity", "teacher-forced")
TRUNCATED = "the last line is cut off: the side was stopped while writing it; rerun the side with --resume"
# The form written now, then the forms of record lines written before that still read.
LINE_FORM, EARLIER_LINE_FORMS = "v3", ("v2",)
FLOAT_CODES = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
ID_CODES = {"i4": np.dtype("<i4")}
ID_MAX = int(np.iinfo(np.int32).max)


def stream_tag(kind: str, form: str = LINE_FORM) -> str:
    """The header's schema tag: the JSON Lines form of the `kind` document (`form`: v3, written now)."""
    return schema_tag(kind).replace("/v1", f"/{form}")


def _hex(array: np.ndarray) -> str:
    # Hex, not base64: bytes.fromhex decodes about five times faster than binascii's base64 here,
    # which at 10,000 records per file was most of a read; the line is 1.5x longer.
    return array.tobytes().hex()


def _packed_float_array(values: np.ndarray) -> str:
    """float64 `values` as "f4:..." when float32 holds every one exactly (-inf padding included), else "f8:..."."""
    with np.errstate(over="ignore"):
        single = values.astype("<f4")
    if np.array_equal(single, values):
        return "f4:" + _hex(single)
    return "f8:" + _hex(values.astype("<f8"))


def pack_floats(values: Iterable[float] | np.ndarray, field: str = "logprobs") -> str:
    """A list of numbers as "<f4|f8>:<hex>"; one that JSON cannot hold (inf, nan) is refused."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError as err:  # an integer past float64
        raise ValueError(f"field {field}: {err}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"field {field}: holds {array[~np.isfinite(array)][0]}, which JSON cannot hold")
    return _packed_float_array(array)


def pack_top_k(top_k: list[list] | TopK) -> dict:
    """A record's top_logprobs as {"ids", "logprobs", "positions", "width"}, arrays of positions x width."""
    try:
        ids, logprobs = top_k_arrays(top_k, id_dtype=np.int64)
    except OverflowError as err:  # an id past int64, a logprob past float64
        raise ValueError(f"field top_logprobs: {err}") from None
    real = ids != NO_TOKEN
    if ids.size and (ids[real].min(initial=0) < 0 or ids.max() > ID_MAX):
        raise ValueError(f"field top_logprobs: token ids must be 0 to {ID_MAX} to be stored as i4")
    if not np.isfinite(logprobs[real]).all():
        raise ValueError(f"field top_logprobs: holds {logprobs[real][~np.isfinite(logprobs[real])][0]}, "
                         "which JSON cannot hold")
    return {"ids": "i4:" + _hex(ids.astype("<i4")), "logprobs": _packed_float_array(logprobs),
            "positions": int(ids.shape[0]), "width": int(ids.shape[1])}


def _packed(record: dict) -> dict:
    """`record` with its logprobs and top_logprobs packed; any other value (a header's top_logprobs,
    a field written wrong by hand) is left as it is."""
    packed = dict(record)
    if isinstance(record.get("logprobs"), (list, np.ndarray)):
        packed["logprobs"] = pack_floats(record["logprobs"])
    if isinstance(record.get("top_logprobs"), (list, TopK)):
        packed["top_logprobs"] = pack_top_k(record["top_logprobs"])
    return packed


def _json_line(doc: dict) -> str:
    """Canonical JSON on one line. Text stays readable unless it holds a lone surrogate."""
    try:
        line = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(doc, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return line + "\n"


def record_line(record: dict) -> str:
    """One record (list form) as one canonical line of the v3 form, its numbers packed; a header as
    its line. The same record always gives the same bytes."""
    try:
        return _json_line(_packed(record))
    except ValueError as err:
        raise ValueError(f"record {record.get('id')!r}: {err}") from None


def header_of(doc: dict, kind: str) -> dict:
    """The header line of a `kind` document: every field but its records."""
    return {**{name: value for name, value in doc.items() if name != "records"}, "schema": stream_tag(kind)}


def legacy_path(path: Path) -> Path:
    """Where the one-document form of a record file lived: <side>/<kind>.json."""
    return path.with_suffix(".json")


def _check_header(header: dict, kind: str, path: Path) -> str:
    """The form of the file's record lines (v3, or v2 written before), from a valid header."""
    forms = {stream_tag(kind, form): form for form in (LINE_FORM, *EARLIER_LINE_FORMS)}
    if header.get("schema") not in forms:
        earlier = " or ".join(repr(stream_tag(kind, form)) for form in EARLIER_LINE_FORMS)
        raise ResultFileError(f"{path}: line 1: field schema: expected {stream_tag(kind)!r} ({earlier} written before), "
                              f"found {header.get('schema')!r}")
    validate_part(header, f"{kind}.schema.json#/$defs/header", f"{path}: line 1")
    return forms[header["schema"]]


def _check_record(record: dict, kind: str, where: str) -> None:
    validate_part(record, f"{kind}.schema.json#/$defs/record", where)


def _unpacked(text: str, codes: dict[str, np.dtype], where: str, field: str) -> np.ndarray:
    """The array of a packed "<code>:<hex>" (its code already checked by the schema), read-only."""
    code, _, body = text.partition(":")
    dtype = codes.get(code)
    if dtype is None:
        raise ResultFileError(f"{where}: field {field}: code {code!r}, expected {' or '.join(map(repr, codes))}")
    try:
        data = bytes.fromhex(body)
    except ValueError as err:
        raise ResultFileError(f"{where}: field {field}: not hexadecimal ({err})") from None
    if len(body) != 2 * len(data) or body != body.lower():
        raise ResultFileError(f"{where}: field {field}: not lower-case hexadecimal digits only")
    if len(data) % dtype.itemsize:
        raise ResultFileError(f"{where}: field {field}: {len(data)} bytes, not a whole number of {code} values "
                              f"({dtype.itemsize} bytes each)")
    return np.frombuffer(data, dtype)


def _unpacked_floats(text: str, where: str, field: str) -> np.ndarray:
    values = _unpacked(text, FLOAT_CODES, where, field)
    if not np.isfinite(values).all():
        raise ResultFileError(f"{where}: field {field}: holds {values[~np.isfinite(values)][0]}, expected finite numbers")
    return values


def _unpacked_top_k(packed: dict, where: str) -> TopK:
    """The arrays of a packed top_logprobs as stored (int32 ids, float32 or float64 logprobs), with
    the layout checked: the sizes, ids of 0 and up, padding (-1, -inf) only at the end of a row, and
    the width that of the widest position, so that the file is the one its list form writes."""
    positions, width = packed["positions"], packed["width"]
    ids = _unpacked(packed["ids"], ID_CODES, where, "top_logprobs.ids")
    logprobs = _unpacked(packed["logprobs"], FLOAT_CODES, where, "top_logprobs.logprobs")
    for name, values in (("ids", ids), ("logprobs", logprobs)):
        if values.size != positions * width:
            raise ResultFileError(f"{where}: field top_logprobs.{name}: {values.size} values, expected width {width} "
                                  f"x {positions} positions = {positions * width}")
    ids, logprobs = ids.reshape(positions, width), logprobs.reshape(positions, width)
    finite = (f"{where}: field top_logprobs.logprobs: expected a finite logprob for each token id and -inf for each "
              f"padding id ({NO_TOKEN})")
    if ids.size and ids.min() >= 0:  # no padding, the usual case: two checks instead of all of them
        if not np.isfinite(logprobs).all():
            raise ResultFileError(finite)
        return TopK(ids, logprobs)
    padding = ids == NO_TOKEN
    if (ids < NO_TOKEN).any():
        raise ResultFileError(f"{where}: field top_logprobs.ids: holds {ids[ids < NO_TOKEN][0]}, expected token ids "
                              f"of 0 and up, {NO_TOKEN} for padding")
    if (padding[:, :-1] & ~padding[:, 1:]).any():
        raise ResultFileError(f"{where}: field top_logprobs.ids: padding ({NO_TOKEN}) before a token id in a row; "
                              "padding only ends a row")
    if width and padding[:, -1].all():
        raise ResultFileError(f"{where}: field top_logprobs.width: {width}, but no position has {width} alternatives")
    if not np.where(padding, logprobs == -np.inf, np.isfinite(logprobs)).all():
        raise ResultFileError(finite)
    return TopK(ids, logprobs)


def _unpacked_record(record: dict, kind: str, where: str, *, columns: bool) -> dict:
    """A record line of the v3 form, checked, as the record in list form or (`columns`) column form."""
    validate_part(record, f"{kind}.schema.json#/$defs/packed_record", where)
    logprobs = _unpacked_floats(record["logprobs"], where, "logprobs")
    record["logprobs"] = logprobs if columns else logprobs.tolist()
    if "top_logprobs" in record:
        top = _unpacked_top_k(record["top_logprobs"], where)
        record["top_logprobs"] = top if columns else _pairs(top)
    return record


def _pairs(top: TopK) -> list[list]:
    """top_k_pairs, without its test per alternative where no position is padded."""
    if not top.ids.size or (top.ids == NO_TOKEN).any():
        return top_k_pairs(top)
    width = top.ids.shape[1]
    pairs = list(map(list, zip(top.ids.ravel().tolist(), top.logprobs.ravel().tolist())))
    return [pairs[start:start + width] for start in range(0, len(pairs), width)]


def _columns(record: dict) -> dict:
    """A record in list form (a v2 line, a v1 document) in column form."""
    record["logprobs"] = np.array(record["logprobs"], dtype=np.float64)
    if "top_logprobs" in record:
        record["top_logprobs"] = top_k_arrays(record["top_logprobs"])
    return record


def _parsed_lines(path: Path, *, keep_cut_off: bool) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each line; a last line without its newline is a run stopped while
    writing it: dropped with `keep_cut_off`, else an error."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise ResultFileError(f"{path}: file not found") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                if keep_cut_off:
                    return
                raise ResultFileError(f"{path}: line {number}: {TRUNCATED}")
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ResultFileError(f"{path}: line {number}: not valid JSON ({err})") from None
            if not isinstance(item, dict):
                raise ResultFileError(f"{path}: line {number}: expected a JSON object")
            yield number, item


def iter_records(path: Path, kind: str, *, keep_cut_off: bool = False,
                 columns: bool = False) -> tuple[dict, Iterator[dict]]:
    """The header of a record file and an iterator over its records, each validated as it is read:
    in list form, or with `columns` in column form (logprobs an array, float32 or float64 as
    stored, top_logprobs a records.TopK), whatever form the file has."""
    path = Path(path)
    lines = _parsed_lines(path, keep_cut_off=keep_cut_off)
    first = next(lines, None)
    if first is None:
        raise ResultFileError(f"{path}: line 1: empty file, expected the {kind} header")
    header = first[1]
    packed = _check_header(header, kind, path) == LINE_FORM

    def records() -> Iterator[dict]:
        for number, record in lines:
            where = f"{path}: line {number}"
            if packed:
                yield _unpacked_record(record, kind, where, columns=columns)
            else:
                _check_record(record, kind, where)
                yield _columns(record) if columns else record
    return header, records()


def stored_path(path: Path) -> Path:
    """The file that holds the records of `path`: itself, or the one-document form written before."""
    path = Path(path)
    return legacy_path(path) if not path.exists() and legacy_path(path).is_file() else path


def record_file_exists(path: Path) -> bool:
    """Whether a record file exists in either form."""
    return stored_path(path).is_file()


def read_records(path: Path, kind: str, *, keep_cut_off: bool = False, columns: bool = False) -> dict:
    """A record file as one document: its header's fields and "records", in list form or with
    `columns` in column form (see iter_records). Where only the one-document form written before
    exists (<side>/<kind>.json), that is read instead."""
    stored = stored_path(path)
    if stored != Path(path):
        doc = read_json(stored, kind)
        return {**doc, "records": list(map(_columns, doc["records"]))} if columns else doc
    header, records = iter_records(stored, kind, keep_cut_off=keep_cut_off, columns=columns)
    return {**header, "records": list(records)}


def stream_records(path: Path, kind: str) -> dict:
    """A record file as a document whose "records" are read as they are iterated, once, in column
    form: what compare needs to go through thousands of records in bounded memory."""
    if stored_path(path) != Path(path):
        return read_records(path, kind, columns=True)
    header, records = iter_records(path, kind, columns=True)
    return {**header, "records": records}


def read_document(path: Path, name: str) -> dict:
    """Any results document by its schema name: a record file in any form (its records in list
    form), or a JSON document."""
    return read_records(path, name) if name in RECORD_KINDS else read_json(path, name)


def write_document(path: Path, doc: dict, name: str) -> Path:
    """Any results document by its schema name, in the form read_document reads."""
    return write_records(path, doc, name) if name in RECORD_KINDS else write_json(path, doc, name)


def write_records(path: Path, doc: dict, kind: str) -> Path:
    """Write a whole `kind` document (its records in list form) as a record file of the v3 form,
    validated, atomically."""
    header = header_of(doc, kind)
    _check_header(header, kind, path)
    for index, record in enumerate(doc["records"]):
        _check_record(record, kind, f"{path}: record {index + 1}")
    try:
        text = record_line(header) + "".join(map(record_line, doc["records"]))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    write_text_atomic(path, text)
    legacy_path(path).unlink(missing_ok=True)
    return path


def _line_offsets(path: Path) -> dict[str, tuple[int, int, bool]]:
    """id: (offset, length, has an error) of each record line of a journal; the last line of an id wins."""
    offsets = {}
    with open(path, "rb") as handle:
        handle.readline()
        while line := handle.readline():
            record = json.loads(line)
            offsets[record["id"]] = (handle.tell() - len(line), len(line), bool(record["error"]))
    return offsets


class RecordJournal:
    """A record file written as records finish: `add` appends one line and flushes it, so a process
    killed at any moment loses no record that finished; `finish` puts the file in suite order."""

    def __init__(self, path: Path, header_doc: dict, kind: str, kept: Iterable[dict] = ()):
        """Start the file with `header_doc`'s header and the records `kept` from an earlier run."""
        self.path, self.kind = Path(path), kind
        self.header = header_of(header_doc, kind)
        write_records(self.path, {**header_doc, "records": list(kept)}, kind)
        self._handle = open(self.path, "a", encoding="utf-8")

    def add(self, record: dict) -> None:
        _check_record(record, self.kind, f"{self.path}: record {record.get('id')!r}")
        try:
            line = record_line(record)
        except ValueError as err:
            raise ValueError(f"{self.path}: {err}") from None
        self._handle.write(line)
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def finish(self, order: list[str], missing: Callable[[str], dict]) -> int:
        """Rewrite the file with one record per id of `order`, in that order, `missing(id)` for an id
        that never finished; return how many records carry an error. The lines are copied as they
        were written (each was checked then), so memory holds offsets, not records."""
        self.close()
        lines = _line_offsets(self.path)
        errors = 0
        with open(self.path, "rb") as source, atomic_file(self.path) as out:
            out.write(record_line(self.header).encode("utf-8"))
            for item in order:
                if item in lines:
                    offset, length, failed = lines[item]
                    source.seek(offset)
                    out.write(source.read(length))
                else:
                    record = missing(item)
                    _check_record(record, self.kind, f"{self.path}: record {item!r}")
                    out.write(record_line(record).encode("utf-8"))
                    failed = bool(record["error"])
                errors += failed
        return errors

    def __enter__(self) -> "RecordJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
