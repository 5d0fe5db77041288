"""The files that hold a side's records (generations, perplexity, teacher-forced): JSON Lines, a
header line, then one record per line, each canonical (sorted keys, no spaces), so a run that is
killed keeps every record that finished and two runs give the same bytes.

While a side runs, a RecordJournal appends each record as it finishes and flushes it; when the
side ends, however it ends, the journal is rewritten in suite order with every item that did not
finish recorded as an error. A run killed outright leaves the journal in finishing order, which
reads as it is (compare pairs records by id) and which --resume continues.

In memory a record file is the document it always was: the header's fields and "records". The
files written before this form (one JSON document, <side>/<kind>.json, schema .../v1) still read."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from llm_parity.results import (ResultFileError, atomic_file, read_json, schema_tag, validate_part, write_json,
                                write_text_atomic)

RECORD_KINDS = ("generations", "perplexity", "teacher-forced")
TRUNCATED = "the last line is cut off: the side was stopped while writing it; rerun the side with --resume"


def stream_tag(kind: str) -> str:
    """The header's schema tag: the JSON Lines form of the `kind` document."""
    return schema_tag(kind).replace("/v1", "/v2")


def record_line(record: dict) -> str:
    """One record as one canonical line. Text stays readable unless it holds a lone surrogate."""
    try:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return line + "\n"


def header_of(doc: dict, kind: str) -> dict:
    """The header line of a `kind` document: every field but its records."""
    return {**{name: value for name, value in doc.items() if name != "records"}, "schema": stream_tag(kind)}


def legacy_path(path: Path) -> Path:
    """Where the one-document form of a record file lived: <side>/<kind>.json."""
    return path.with_suffix(".json")


def _check_header(header: dict, kind: str, path: Path) -> None:
    if header.get("schema") != stream_tag(kind):
        raise ResultFileError(f"{path}: line 1: field schema: expected {stream_tag(kind)!r}, found {header.get('schema')!r}")
    validate_part(header, f"{kind}.schema.json#/$defs/header", f"{path}: line 1")


def _check_record(record: dict, kind: str, where: str) -> None:
    validate_part(record, f"{kind}.schema.json#/$defs/record", where)


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


def iter_records(path: Path, kind: str, *, keep_cut_off: bool = False) -> tuple[dict, Iterator[dict]]:
    """The header of a record file and an iterator over its records, each validated as it is read."""
    path = Path(path)
    lines = _parsed_lines(path, keep_cut_off=keep_cut_off)
    first = next(lines, None)
    if first is None:
        raise ResultFileError(f"{path}: line 1: empty file, expected the {kind} header")
    header = first[1]
    _check_header(header, kind, path)

    def records() -> Iterator[dict]:
        for number, record in lines:
            _check_record(record, kind, f"{path}: line {number}")
            yield record
    return header, records()


def stored_path(path: Path) -> Path:
    """The file that holds the records of `path`: itself, or the one-document form written before."""
    path = Path(path)
    return legacy_path(path) if not path.exists() and legacy_path(path).is_file() else path


def record_file_exists(path: Path) -> bool:
    """Whether a record file exists in either form."""
    return stored_path(path).is_file()


def read_records(path: Path, kind: str, *, keep_cut_off: bool = False) -> dict:
    """A record file as one document: its header's fields and "records". Where only the
    one-document form written before exists (<side>/<kind>.json), that is read instead."""
    stored = stored_path(path)
    if stored != Path(path):
        return read_json(stored, kind)
    header, records = iter_records(stored, kind, keep_cut_off=keep_cut_off)
    return {**header, "records": list(records)}


def read_document(path: Path, name: str) -> dict:
    """Any results document by its schema name: a record file in either form, or a JSON document."""
    return read_records(path, name) if name in RECORD_KINDS else read_json(path, name)


def write_document(path: Path, doc: dict, name: str) -> Path:
    """Any results document by its schema name, in the form read_document reads."""
    return write_records(path, doc, name) if name in RECORD_KINDS else write_json(path, doc, name)


def write_records(path: Path, doc: dict, kind: str) -> Path:
    """Write a whole `kind` document as a record file, validated, atomically."""
    header = header_of(doc, kind)
    _check_header(header, kind, path)
    for index, record in enumerate(doc["records"]):
        _check_record(record, kind, f"{path}: record {index + 1}")
    write_text_atomic(path, record_line(header) + "".join(map(record_line, doc["records"])))
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
        self._handle.write(record_line(record))
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
