"""The files that hold a side's records (generations, perplexity, teacher-forced): a header line,
then one record after another, each written as it finishes, so a run that is killed keeps every
record that finished, and canonical (sorted keys, no spaces), so two runs give the same bytes.

A record (form v4, <side>/<kind>.records) is one line of JSON, then the numbers it declares as
raw little-endian bytes, then a line end. In the line each list of numbers is replaced by
"<code>:<count>": a token-id list (prompt_ids, output_ids, answer_ids, chat_prompt_ids) by
"i4:<count>" (int32); logprobs by "f4:<count>" (float32) when every value is a float32 exactly,
as real logprobs are, else "f8:<count>", so no number is lost; top_logprobs by {"ids": "i4:<n>",
"logprobs": "<f4|f8>:<n>", "positions": P, "width": W}, arrays of P x W in the padded layout of
records.TopK. The arrays follow the line in the order the line lists them; text and every other
field stay plain JSON. Reading such a record parses a short line and takes the numbers as they are,
where numbers as JSON text cost most of a read at 10,000 records. "line N" in an error is the N-th
line of JSON (the header is line 1), not counting the numbers after each.

While a side runs, a RecordJournal appends each record as it finishes and flushes it; when the
side ends, however it ends, the journal is rewritten in suite order with every item that did not
finish recorded as an error. A run killed outright leaves the journal in finishing order, which
reads as it is (compare pairs records by id) and which --resume continues.

Read, a record is the list form it always was ($defs/record of its schema: logprobs a list of
numbers, top_logprobs [[token_id, logprob], ...] per position), or with `columns=True` the column
form: logprobs an array (float32 or float64, as stored) and top_logprobs a records.TopK. Every
form written before still reads: v3 and v2 (<side>/<kind>.jsonl, JSON Lines with the numbers as
hex strings, or as JSON) and v1 (one JSON document, <side>/<kind>.json)."""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import count
from pathlib import Path
from typing import BinaryIO

import numpy as np

from llm_parity.records import NO_TOKEN, TopK, top_k_arrays, top_k_pairs
from llm_parity.results import (ResultFileError, atomic_file, canonical_bytes, read_json, schema_tag, validate_part,
                                write_bytes_atomic, write_json)

RECORD_KINDS = ("generations", "perplexity", "teacher-forced")
TRUNCATED = "the last record is cut off: the side was stopped while writing it; rerun the side with --resume"
# The form written now, then the forms written before that still read (JSON Lines, <kind>.jsonl).
FORM, LINE_FORMS = "v4", ("v3", "v2")
FLOAT_CODES = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
ID_CODES = {"i4": np.dtype("<i4")}
CODES = FLOAT_CODES | ID_CODES
ID_MAX = int(np.iinfo(np.int32).max)
# The lists of token ids a record may hold, stored as i4 arrays in the v4 form.
ID_FIELDS = ("answer_ids", "chat_prompt_ids", "output_ids", "prompt_ids")
ARRAY_FIELDS = frozenset((*ID_FIELDS, "logprobs"))  # and top_logprobs, whose two arrays are declared in an object
LINE_END = b"\n"


def stream_tag(kind: str, form: str = FORM) -> str:
    """The header's schema tag: the streamed form of the `kind` document (`form`: v4, written now)."""
    return schema_tag(kind).replace("/v1", f"/{form}")


def _float_array(values: np.ndarray) -> np.ndarray:
    """float64 `values` as float32 when float32 holds every one exactly (-inf padding included), else as float64."""
    with np.errstate(over="ignore"):
        single = values.astype("<f4")
    return single if np.array_equal(single, values) else values.astype("<f8")


def stored_floats(values: Iterable[float] | np.ndarray, field: str = "logprobs") -> np.ndarray:
    """A list of numbers as the array stored for it; one that JSON cannot hold (inf, nan) is refused."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError as err:  # an integer past float64
        raise ValueError(f"field {field}: {err}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"field {field}: holds {array[~np.isfinite(array)][0]}, which JSON cannot hold")
    return _float_array(array)


def stored_ids(values: list[int], field: str) -> np.ndarray:
    """A list of token ids as the int32 array stored for it."""
    try:
        array = np.asarray(values, dtype=np.int64)
    except OverflowError as err:
        raise ValueError(f"field {field}: {err}") from None
    if array.size and (array.min() < 0 or array.max() > ID_MAX):
        raise ValueError(f"field {field}: token ids must be 0 to {ID_MAX} to be stored as i4")
    return array.astype("<i4")


def stored_top_k(top_k: list[list] | TopK) -> tuple[np.ndarray, np.ndarray]:
    """A record's top_logprobs as the arrays stored for it: ids and logprobs of positions x width."""
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
    return ids.astype("<i4"), _float_array(logprobs)


def _declared(array: np.ndarray) -> str:
    """What a line says in place of an array: "<code>:<count>"."""
    return f"{array.dtype.kind}{array.dtype.itemsize}:{array.size}"


def _stored(record: dict) -> tuple[dict, list[np.ndarray]]:
    """A record (list form, valid) as the object of its line and the arrays that follow it, in the
    order the canonical line lists them (sorted field names, ids before logprobs)."""
    line, arrays = dict(record), []
    for name in sorted(record):
        value = record[name]
        if name == "top_logprobs":
            ids, logprobs = stored_top_k(value)
            line[name] = {"ids": _declared(ids), "logprobs": _declared(logprobs),
                          "positions": int(ids.shape[0]), "width": int(ids.shape[1])}
            arrays += [ids, logprobs]
        elif name == "logprobs" or (name in ID_FIELDS and value is not None):
            array = stored_floats(value) if name == "logprobs" else stored_ids(value, name)
            line[name] = _declared(array)
            arrays.append(array)
    return line, arrays


def header_line(header: dict) -> bytes:
    """The header as its line: canonical JSON, one line."""
    return canonical_bytes(header, indent=None)


def record_bytes(record: dict) -> bytes:
    """One record (list form) as it is stored: its canonical line, its arrays' bytes, a line end.
    The same record always gives the same bytes."""
    try:
        line, arrays = _stored(record)
        return canonical_bytes(line, indent=None) + b"".join(array.tobytes() for array in arrays) + LINE_END
    except ValueError as err:
        raise ValueError(f"record {record.get('id')!r}: {err}") from None


def header_of(doc: dict, kind: str) -> dict:
    """The header line of a `kind` document: every field but its records."""
    return {**{name: value for name, value in doc.items() if name != "records"}, "schema": stream_tag(kind)}


def earlier_paths(path: Path) -> tuple[Path, Path]:
    """Where the forms written before kept the records of `path`: <kind>.jsonl (v3, v2), <kind>.json (v1)."""
    return path.with_suffix(".jsonl"), path.with_suffix(".json")


def _check_header(header: dict, kind: str, path: Path) -> str:
    """The form of the file's records (v4, or one written before), from a valid header."""
    forms = {stream_tag(kind, form): form for form in (FORM, *LINE_FORMS)}
    if header.get("schema") not in forms:
        earlier = " or ".join(repr(stream_tag(kind, form)) for form in LINE_FORMS)
        raise ResultFileError(f"{path}: line 1: field schema: expected {stream_tag(kind)!r} ({earlier} written before), "
                              f"found {header.get('schema')!r}")
    validate_part(header, f"{kind}.schema.json#/$defs/header", f"{path}: line 1")
    return forms[header["schema"]]


def _check_record(record: dict, kind: str, where: str) -> None:
    validate_part(record, f"{kind}.schema.json#/$defs/record", where)


def _finite(values: np.ndarray, where: str, field: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ResultFileError(f"{where}: field {field}: holds {values[~np.isfinite(values)][0]}, expected finite numbers")
    return values


def _top_k_of(ids: np.ndarray, logprobs: np.ndarray, positions: int, width: int, where: str) -> TopK:
    """The arrays of a stored top_logprobs (int32 ids, float32 or float64 logprobs) as a TopK, with
    the layout checked: the sizes, ids of 0 and up, padding (-1, -inf) only at the end of a row, and
    the width that of the widest position, so that the file is the one its list form writes."""
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


def _in_form(record: dict, logprobs: np.ndarray, top: TopK | None, *, columns: bool) -> dict:
    """A record with its checked arrays in list form, or (`columns`) in column form."""
    record["logprobs"] = logprobs if columns else logprobs.tolist()
    if top is not None:
        record["top_logprobs"] = top if columns else _pairs(top)
    return record


# The v4 form: arrays after the line.

@functools.lru_cache(maxsize=4096)
def _declaration(text: str) -> tuple[np.dtype, int]:
    """The dtype and count of a valid "<code>:<count>"; made once per distinct text, as most answers share a length."""
    code, _, size = text.partition(":")
    return CODES[code], int(size)


def _layout(record: dict) -> tuple[list[tuple[str, np.dtype, int]], int]:
    """(field, dtype, count) of each array after a v4 line (its declarations already valid), in
    the order the line lists them, and how many bytes they take."""
    layout, size = [], 0
    for name, value in record.items():
        if name == "top_logprobs":
            declared = (("top_logprobs.ids", value["ids"]), ("top_logprobs.logprobs", value["logprobs"]))
        elif name in ARRAY_FIELDS and value is not None:
            declared = ((name, value),)
        else:
            continue
        for field, text in declared:
            dtype, n = _declaration(text)
            layout.append((field, dtype, n))
            size += dtype.itemsize * n
    return layout, size


class _CutOff(Exception):
    """The file ends inside a record's arrays: the side was stopped while writing it."""


def _arrays(handle: BinaryIO, layout: list[tuple[str, np.dtype, int]], size: int, where: str) -> dict[str, np.ndarray]:
    """Read the arrays of `layout` (`size` bytes) that follow a line, and the line end after them."""
    data = handle.read(size + len(LINE_END))
    if len(data) < size + len(LINE_END):
        raise _CutOff
    if data[size:] != LINE_END:
        raise ResultFileError(f"{where}: the {size} bytes of numbers that its fields declare are not followed by a line "
                              "end: a count in the line is wrong, or the file was changed")
    arrays, offset = {}, 0
    for name, dtype, n in layout:
        arrays[name] = np.frombuffer(data, dtype, n, offset)
        offset += dtype.itemsize * n
    return arrays


def _line_and_arrays(line: bytes, handle: BinaryIO, kind: str, where: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A v4 record's line, parsed and checked, and the arrays that follow it, as stored (not yet checked)."""
    if not line.endswith(LINE_END):
        raise _CutOff
    record = _json_object(line, where)
    validate_part(record, f"{kind}.schema.json#/$defs/stored_record", where)
    return record, _arrays(handle, *_layout(record), where)


def _checked_stored(record: dict, arrays: dict[str, np.ndarray], where: str, *, columns: bool) -> dict:
    """A v4 record from its line and arrays, each array checked."""
    for name in ID_FIELDS:
        if name in arrays:
            ids = arrays[name]
            if ids.size and ids.min() < 0:
                raise ResultFileError(f"{where}: field {name}: holds {ids[ids < 0][0]}, expected token ids of 0 and up")
            record[name] = ids.tolist()
    top = None
    if "top_logprobs" in record:
        stored = record["top_logprobs"]
        top = _top_k_of(arrays["top_logprobs.ids"], arrays["top_logprobs.logprobs"], stored["positions"],
                        stored["width"], where)
    return _in_form(record, _finite(arrays["logprobs"], where, "logprobs"), top, columns=columns)


def _plain(batch: list[tuple[dict, dict[str, np.ndarray], str]]) -> bool:
    """Whether every record of `batch` has what most have, so that checking all their arrays at once
    is checking each: top-k arrays of the declared sizes with no padding, token ids of 0 and up,
    finite logprobs."""
    ids, floats = [], []
    for record, arrays, _ in batch:
        if "top_logprobs" in record:
            stored = record["top_logprobs"]
            size = stored["positions"] * stored["width"]
            if arrays["top_logprobs.ids"].size != size or arrays["top_logprobs.logprobs"].size != size:
                return False
            if stored["width"] and not stored["positions"]:  # a width that no position has
                return False
        for name, values in arrays.items():
            (floats if values.dtype.kind == "f" else ids).append(values)
    return ((not ids or np.concatenate(ids).min(initial=0) >= 0)
            and (not floats or bool(np.isfinite(np.concatenate(floats)).all())))


def _plain_record(record: dict, arrays: dict[str, np.ndarray], *, columns: bool) -> dict:
    """A v4 record from its line and arrays, of a batch whose arrays _plain has checked."""
    for name in ID_FIELDS:
        if name in arrays:
            record[name] = arrays[name].tolist()
    top = None
    if "top_logprobs" in record:
        shape = record["top_logprobs"]["positions"], record["top_logprobs"]["width"]
        top = TopK(arrays["top_logprobs.ids"].reshape(shape), arrays["top_logprobs.logprobs"].reshape(shape))
    return _in_form(record, arrays["logprobs"], top, columns=columns)


# v4 records read before their arrays are checked: a batch's arrays are checked at once.
BATCH = 64


def _stored_records(handle: BinaryIO, path: Path, kind: str, *, keep_cut_off: bool, columns: bool,
                    first_line: int) -> Iterator[dict]:
    """Each v4 record from the handle's place (line `first_line`), checked, as _records; read a batch
    at a time, and where a batch holds a bad record, every record before it is still given first."""
    numbers, stop = count(first_line), None
    while stop is None:
        batch = []
        while len(batch) < BATCH:
            number = next(numbers)
            line = handle.readline()
            if not line:
                stop = StopIteration()
                break
            where = f"{path}: line {number}"
            try:
                batch.append((*_line_and_arrays(line, handle, kind, where), where))
            except _CutOff:
                stop = StopIteration() if keep_cut_off else ResultFileError(f"{where}: {TRUNCATED}")
                break
            except ResultFileError as err:
                stop = err
                break
        if _plain(batch):
            yield from (_plain_record(record, arrays, columns=columns) for record, arrays, _ in batch)
        else:
            yield from (_checked_stored(*read, columns=columns) for read in batch)
    if not isinstance(stop, StopIteration):
        raise stop


# The v3 form: arrays as hex in the line.

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


def _unpacked_record(record: dict, kind: str, where: str, *, columns: bool) -> dict:
    """A record line of the v3 form, checked, as the record in list form or (`columns`) column form."""
    validate_part(record, f"{kind}.schema.json#/$defs/packed_record", where)
    logprobs = _finite(_unpacked(record["logprobs"], FLOAT_CODES, where, "logprobs"), where, "logprobs")
    top = None
    if "top_logprobs" in record:
        packed = record["top_logprobs"]
        top = _top_k_of(_unpacked(packed["ids"], ID_CODES, where, "top_logprobs.ids"),
                        _unpacked(packed["logprobs"], FLOAT_CODES, where, "top_logprobs.logprobs"),
                        packed["positions"], packed["width"], where)
    return _in_form(record, logprobs, top, columns=columns)


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


def _json_object(line: bytes, where: str) -> dict:
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultFileError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(item, dict):
        raise ResultFileError(f"{where}: expected a JSON object")
    return item


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ResultFileError(f"{path}: file not found") from None


def _records(handle: BinaryIO, path: Path, kind: str, form: str, *, keep_cut_off: bool, columns: bool,
             first_line: int = 2) -> Iterator[dict]:
    """Each record after the header (from line `first_line` of a v4 file, the handle there), checked;
    one the file ends inside is a run stopped while writing it: dropped with `keep_cut_off`, else an error."""
    with handle:
        if form == FORM:
            yield from _stored_records(handle, path, kind, keep_cut_off=keep_cut_off, columns=columns,
                                       first_line=first_line)
            return
        for number in count(2):
            line = handle.readline()
            if not line:
                return
            where = f"{path}: line {number}"
            if not line.endswith(LINE_END):
                if keep_cut_off:
                    return
                raise ResultFileError(f"{where}: {TRUNCATED}")
            record = _json_object(line, where)
            if form == "v3":
                yield _unpacked_record(record, kind, where, columns=columns)
            else:
                _check_record(record, kind, where)
                yield _columns(record) if columns else record


def iter_records(path: Path, kind: str, *, keep_cut_off: bool = False, columns: bool = False,
                 start: tuple[int, int] | None = None) -> tuple[dict, Iterator[dict]]:
    """The header of a record file and an iterator over its records, each checked as it is read:
    in list form, or with `columns` in column form (logprobs an array, float32 or float64 as
    stored, top_logprobs a records.TopK), whatever form the file has. `start`: (byte offset, line
    number) of the record of a v4 file to begin at (split_at gives them), rather than the first."""
    header, _, _, records = _opened(Path(path), kind, keep_cut_off=keep_cut_off, columns=columns, start=start)
    return header, records


def _opened(path: Path, kind: str, *, keep_cut_off: bool, columns: bool,
            start: tuple[int, int] | None = None) -> tuple[dict, str, BinaryIO, Iterator[dict]]:
    """iter_records, with the file's form and the open file, which its records close when they end."""
    handle = _open(path)
    try:
        first = handle.readline()
        if not first.endswith(LINE_END):
            raise ResultFileError(f"{path}: line 1: empty file, expected the {kind} header" if not first or keep_cut_off
                                  else f"{path}: line 1: {TRUNCATED}")
        header = _json_object(first, f"{path}: line 1")
        form = _check_header(header, kind, path)
        if start is not None:
            if form != FORM:
                raise ValueError(f"{path}: only a file of the {FORM} form is read from a record other than its first")
            handle.seek(start[0])
    except BaseException:
        handle.close()
        raise
    return header, form, handle, _records(handle, path, kind, form, keep_cut_off=keep_cut_off, columns=columns,
                                          first_line=start[1] if start else 2)


def stored_path(path: Path) -> Path:
    """The file that holds the records of `path`: itself, or where a form written before kept them."""
    path = Path(path)
    if path.exists():
        return path
    return next((earlier for earlier in earlier_paths(path) if earlier.is_file()), path)


def record_file_exists(path: Path) -> bool:
    """Whether a record file exists in any form."""
    return stored_path(path).is_file()


def read_records(path: Path, kind: str, *, keep_cut_off: bool = False, columns: bool = False) -> dict:
    """A record file as one document: its header's fields and "records", in list form or with
    `columns` in column form (see iter_records). Where only a form written before exists, that is
    read instead."""
    stored = stored_path(path)
    if stored.suffix == ".json":
        doc = read_json(stored, kind)
        return {**doc, "records": list(map(_columns, doc["records"]))} if columns else doc
    header, records = iter_records(stored, kind, keep_cut_off=keep_cut_off, columns=columns)
    return {**header, "records": list(records)}


class RecordStream(Iterator[dict]):
    """The records of a record file in column form, each read and checked as it is iterated, once;
    where they come from (`path`, `kind`, `form`), so that a pass over them can be split between
    processes that read the file themselves (compare.gather_evidence)."""

    def __init__(self, path: Path, kind: str, form: str, records: Iterator[dict], handle: BinaryIO):
        self.path, self.kind, self.form, self._records, self._handle = path, kind, form, records, handle

    def __next__(self) -> dict:
        return next(self._records)

    def guarded(self, on_error: Callable[[ResultFileError], None]) -> "RecordStream":
        """The same stream, with `on_error` called on a record that does not read (it may raise)."""
        def records() -> Iterator[dict]:
            try:
                yield from self._records
            except ResultFileError as err:
                on_error(err)
                raise
        return RecordStream(self.path, self.kind, self.form, records(), self._handle)

    def read_elsewhere(self) -> None:
        """Every record was read and checked by another reader of the file: this one gives no more."""
        self._records = iter(())
        self._handle.close()


def stream_records(path: Path, kind: str) -> dict:
    """A record file as a document whose "records" are read as they are iterated, once, in column
    form (a RecordStream, or a list for a v1 document): what compare needs to go through thousands
    of records in bounded memory."""
    stored = stored_path(path)
    if stored.suffix == ".json":
        return read_records(path, kind, columns=True)
    header, form, handle, records = _opened(stored, kind, keep_cut_off=False, columns=True)
    return {**header, "records": RecordStream(stored, kind, form, records, handle)}


def read_document(path: Path, name: str) -> dict:
    """Any results document by its schema name: a record file in any form (its records in list
    form), or a JSON document."""
    return read_records(path, name) if name in RECORD_KINDS else read_json(path, name)


def write_document(path: Path, doc: dict, name: str) -> Path:
    """Any results document by its schema name, in the form read_document reads."""
    return write_records(path, doc, name) if name in RECORD_KINDS else write_json(path, doc, name)


def write_records(path: Path, doc: dict, kind: str) -> Path:
    """Write a whole `kind` document (its records in list form) as a record file of the v4 form,
    validated, atomically; the files of forms written before are removed."""
    header = header_of(doc, kind)
    _check_header(header, kind, path)
    for index, record in enumerate(doc["records"]):
        _check_record(record, kind, f"{path}: record {index + 1}")
    try:
        data = header_line(header) + b"".join(map(record_bytes, doc["records"]))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    write_bytes_atomic(path, data)
    for earlier in set(earlier_paths(path)) - {Path(path)}:
        earlier.unlink(missing_ok=True)
    return path


def _lines(handle: BinaryIO) -> Iterator[tuple[int, int, int, dict]]:
    """(offset, end, line number, parsed line) of each record of a v4 file after the header, its
    arrays skipped unread and unchecked: where records are, not whether they are right."""
    handle.seek(0)
    handle.readline()
    for number in count(2):
        line = handle.readline()
        if not line:
            return
        record = json.loads(line)
        start, end = handle.tell() - len(line), handle.seek(_layout(record)[1] + len(LINE_END), os.SEEK_CUR)
        yield start, end, number, record


def _record_spans(path: Path) -> dict[str, tuple[int, int, bool]]:
    """id: (offset, length, has an error) of each record of a journal; the last record of an id wins."""
    with open(path, "rb") as handle:
        return {record["id"]: (start, end - start, bool(record["error"])) for start, end, _, record in _lines(handle)}


def split_at(path: Path, item: str) -> tuple[list[str], tuple[int, int]] | None:
    """The ids of a v4 record file's records before the record of `item`, and that record's (byte
    offset, line number), for iter_records's `start`; None where the file has no such record or
    cannot be gone through (the reader that checks every record says why)."""
    ids = []
    try:
        with open(path, "rb") as handle:
            for offset, _, number, record in _lines(handle):
                if record["id"] == item:
                    return ids, (offset, number)
                ids.append(record["id"])
    except Exception:  # noqa: BLE001 - any fault at all: the records are read one by one instead, and checked
        return None
    return None


class RecordJournal:
    """A record file written as records finish: `add` appends one record and flushes it, so a
    process killed at any moment loses no record that finished; `finish` puts the file in suite order."""

    def __init__(self, path: Path, header_doc: dict, kind: str, kept: Iterable[dict] = ()):
        """Start the file with `header_doc`'s header and the records `kept` from an earlier run."""
        self.path, self.kind = Path(path), kind
        self.header = header_of(header_doc, kind)
        write_records(self.path, {**header_doc, "records": list(kept)}, kind)
        self._handle = open(self.path, "ab")

    def add(self, record: dict) -> None:
        _check_record(record, self.kind, f"{self.path}: record {record.get('id')!r}")
        try:
            data = record_bytes(record)
        except ValueError as err:
            raise ValueError(f"{self.path}: {err}") from None
        self._handle.write(data)
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def finish(self, order: list[str], missing: Callable[[str], dict]) -> int:
        """Rewrite the file with one record per id of `order`, in that order, `missing(id)` for an id
        that never finished; return how many records carry an error. The records are copied as they
        were written (each was checked then), so memory holds offsets, not records."""
        self.close()
        spans = _record_spans(self.path)
        errors = 0
        with open(self.path, "rb") as source, atomic_file(self.path) as out:
            out.write(header_line(self.header))
            for item in order:
                if item in spans:
                    offset, length, failed = spans[item]
                    source.seek(offset)
                    out.write(source.read(length))
                else:
                    record = missing(item)
                    _check_record(record, self.kind, f"{self.path}: record {item!r}")
                    out.write(record_bytes(record))
                    failed = bool(record["error"])
                errors += failed
        return errors

    def __enter__(self) -> "RecordJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
