"""Reading and writing results files: JSON Schema validation on both ways, atomic writes,
and the layout of a results folder (the contract both images share)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

import jsonschema_rs

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from referencing import Registry

from llm_parity import PROJECT_ROOT

SCHEMA_DIR = PROJECT_ROOT / "schemas"
# The base the schema files' relative $refs ("common.schema.json#/...") resolve against in
# jsonschema-rs, which needs an absolute one; nothing is fetched from it.
SCHEMA_BASE_URI = "llm-parity:/schemas/"


class ResultFileError(Exception):
    """A results, suite or profile file that is missing, not JSON, or not valid against its schema.

    The message is one line naming the file and the field."""


def schema_tag(name: str) -> str:
    return f"llm-parity/{name}/v1"


# jsonschema, which words the errors, is imported when a document is refused: a valid one is checked by
# jsonschema-rs alone, and every stage starts 0.05 s sooner.

@lru_cache(maxsize=None)
def _registry() -> Registry:
    from referencing import Registry, Resource

    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        resource = Resource.from_contents(json.loads(path.read_text(encoding="utf-8")))
        resources.append((path.name, resource))
    return Registry().with_resources(resources)


def _schema_path(name: str) -> Path:
    path = SCHEMA_DIR / f"{name}.schema.json"
    if not path.is_file():
        raise ValueError(f"no schema named {name!r} in {SCHEMA_DIR}")
    return path


@lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    path = _schema_path(name)
    schema = json.loads(path.read_text(encoding="utf-8"))
    # Relative $refs ("common.schema.json#/...") resolve against the schema's file name.
    schema = {**schema, "$id": path.name}
    return Draft202012Validator(schema, registry=_registry())


@lru_cache(maxsize=None)
def _fast_registry() -> jsonschema_rs.Registry:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = {**json.loads(path.read_text(encoding="utf-8")), "$id": SCHEMA_BASE_URI + path.name}
        resources.append((SCHEMA_BASE_URI + path.name, schema))
    return jsonschema_rs.Registry(resources)


@lru_cache(maxsize=None)
def _fast_check(ref: str):
    """A jsonschema-rs validator for `ref` ("name.schema.json" or "name.schema.json#/pointer"): it
    accepts a valid document hundreds of times faster than jsonschema (53 ms against 0.1 ms for
    one record of 256 tokens with top-5), which a run of thousands of records needs. jsonschema
    stays the authority: only what this one rejects is validated again there, for the message."""
    return jsonschema_rs.validator_for({"$ref": SCHEMA_BASE_URI + ref}, registry=_fast_registry())


def _field_path(error) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "(top level)"


@lru_cache(maxsize=None)
def _part_validator(ref: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator({"$ref": ref}, registry=_registry())


def _raise_first(validator: Draft202012Validator, doc: Any, where: Path | str) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(doc))
    if error is not None:
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        raise ResultFileError(f"{where}: field {_field_path(error)}: {message}".replace("\n", " "))


def validate(doc: Any, name: str, path: Path | str) -> None:
    """Raise ResultFileError naming `path` and the offending field if `doc` breaks schema `name`."""
    _schema_path(name)  # a name with no schema is a bug, said as such
    if not _fast_check(f"{name}.schema.json").is_valid(doc):
        _raise_first(_validator(name), doc, path)


def validate_part(doc: Any, ref: str, where: Path | str) -> None:
    """The same for one part of a schema, e.g. "suite-source.schema.json#/$defs/prompt" (a JSONL
    line is one prompt); `where` names the file and line."""
    if not _fast_check(ref).is_valid(doc):
        _raise_first(_part_validator(ref), doc, where)


def canonical_bytes(doc: Any, *, indent: int | None = 1) -> bytes:
    """Sorted keys and Python's shortest round-trip floats, as UTF-8 ending in a newline: the same
    payload gives the same bytes. Text stays readable (UTF-8) unless it holds a lone surrogate, which
    only a \\u escape can carry. `indent` None: one line, written by json's C encoder (the indenting
    one is Python, ten times slower). Bytes, not text: the encoding that checks for a surrogate is
    the one written or compared, done once (a 45 MB compare.json takes 0.05 s to encode)."""
    separators = (",", ":") if indent is None else None
    dump = partial(json.dumps, doc, sort_keys=True, indent=indent, separators=separators, allow_nan=False)
    try:
        data = dump(ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        data = dump(ensure_ascii=True).encode("ascii")
    return data + b"\n"


# Documents of a row per prompt, thousands of rows: written on one line (canonical_bytes).
ONE_LINE_DOCUMENTS = {"compare"}


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so a reader never sees half a file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """write_text_atomic for bytes (the logits files)."""
    with atomic_file(path) as handle:
        handle.write(data)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file in `path`'s folder, renamed to `path` when the block
    ends without an error and removed when it raises: for files written in pieces."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MIN_FREE_BYTES = 64 * 2**20


def ensure_writable(folder: Path, *, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Fail before any expensive work if results cannot be written to `folder`: read-only,
    not a folder, or nearly full. The error names the path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise ResultFileError(f"{folder}: cannot write results here ({err.strerror or err})") from None
    if free < min_free_bytes:
        raise ResultFileError(f"{folder}: only {free // 2**20} MiB free, need at least {min_free_bytes // 2**20} MiB for results")


def write_json(path: Path, doc: dict, name: str) -> Path:
    """Validate `doc` against schema `name`, then write it canonically and atomically."""
    validate(doc, name, path)
    write_bytes_atomic(path, canonical_bytes(doc, indent=None if name in ONE_LINE_DOCUMENTS else 1))
    return path


def read_json(path: Path, name: str | None = None) -> dict:
    """Read and validate a file. Without `name`, the schema is the one the file names itself."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultFileError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ResultFileError(f"{path}: field (top level): expected a JSON object")
    if name is None:
        tag = doc.get("schema")
        if not (isinstance(tag, str) and tag.startswith("llm-parity/") and tag.endswith("/v1")):
            raise ResultFileError(f"{path}: field schema: missing or not an llm-parity schema tag")
        name = tag.split("/")[1]
    expected = schema_tag(name)
    if doc.get("schema") != expected:
        raise ResultFileError(f"{path}: field schema: expected {expected!r}, found {doc.get('schema')!r}")
    validate(doc, name, path)
    return doc


@dataclass(frozen=True)
class RunDir:
    """The paths of one results folder, results/<run>/ (see README, "Where results go").

    `target_folder` is where the target side lives: `target`, or `variants/<name>` for a further
    target configuration of a matrix (`variant`); everything else is shared."""

    root: Path
    target_folder: str = "target"

    @classmethod
    def under(cls, results_root: Path, run: str) -> "RunDir":
        """The folder for `run` below `results_root`; a run name cannot escape the root."""
        if not run or run in (".", "..") or "/" in run or "\\" in run or run.startswith("."):
            raise ValueError(f"run name {run!r}: use a plain folder name (no '/', no leading '.')")
        return cls(Path(results_root) / run)

    def variant(self, name: str) -> "RunDir":
        """The same run with its target side in variants/<name>/ (a matrix variant)."""
        return RunDir(self.root, f"variants/{name}")

    @property
    def suite(self) -> Path:
        return self.root / "suite.json"

    @property
    def manifest(self) -> Path:
        return self.root / "model" / "manifest.json"

    def side(self, side: str) -> Path:
        return self.root / (self.target_folder if side == "target" else side)

    def generations(self, side: str) -> Path:
        return self.side(side) / "generations.records"

    def perplexity(self, side: str) -> Path:
        return self.side(side) / "perplexity.records"

    def teacher_forced(self, side: str) -> Path:
        """`side`'s scores of the other side's answers."""
        return self.root / side / "teacher-forced.records"

    def logits(self, side: str) -> Path:
        """`side`'s full-vocabulary logits on the passages: the document naming the binary file beside it."""
        return self.root / side / "logits.json"

    def provenance(self, side: str) -> Path:
        return self.side(side) / "provenance.json"

    def accuracy(self, side: str) -> Path:
        return self.root / side / "accuracy.json"

    @property
    def bench(self) -> Path:
        return self.side("target") / "bench.json"

    @property
    def dummy(self) -> Path:
        return self.side("target") / "dummy.json"

    @property
    def server_log(self) -> Path:
        return self.side("target") / "server.log"

    @property
    def compare(self) -> Path:
        return self.root / "report" / "compare.json"

    @property
    def matrix(self) -> Path:
        return self.root / "report" / "matrix.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report" / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report" / "report.html"

    @property
    def sums(self) -> Path:
        return self.root / "SHA256SUMS"

    @property
    def audit(self) -> Path:
        return self.root / "report" / "audit.json"

    @property
    def replay(self) -> Path:
        return self.root / "report" / "replay.json"

    @property
    def replayed(self) -> "RunDir":
        """Where a replay writes the sides it ran again: replay/<side>/, laid out like the run's own."""
        return RunDir(self.root / "replay")


def sha256_of(doc: Any) -> str:
    """The hash that names a JSON payload (suite, manifest) in every other file."""
    compact = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(compact.encode("utf-8", "surrogatepass")).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20, *, on_read: Callable[[int], None] | None = None) -> str:
    """The sha256 of a file's bytes, read in chunks (model shards are gigabytes); `on_read` gets
    each chunk's length, for progress."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            if on_read:
                on_read(len(block))
    return digest.hexdigest()


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is replaced (atomic writes rename a new file over it) or written in place."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class BackgroundHashes:
    """The sha256 of files hashed one after another in a background thread while the caller goes on
    with its own work: hashlib lets go of the GIL on each chunk, so the hashing (a second per GB)
    takes another core rather than adding to the caller's time. Made by `hashing_in_background`."""

    def __init__(self, paths: Iterable[Path], executor: ThreadPoolExecutor):
        self._jobs: dict[Path, Future[tuple[tuple[int, int, int, int], str]]] = {
            path: executor.submit(lambda path=path: (_identity(path), sha256_file(path))) for path in paths}

    def sha256(self, path: Path) -> str:
        """sha256_file(path), from the background once it is done there; hashed now if it was not
        handed over, could not be read there, or changed since it was."""
        job = self._jobs.get(path)
        if job is not None and job.exception() is None:
            identity, digest = job.result()
            if identity == _identity(path):
                return digest
        return sha256_file(path)


@contextmanager
def hashing_in_background(paths: Iterable[Path]) -> Iterator[BackgroundHashes]:
    """Hash `paths` in a background thread for the block's length; what it has not begun when the
    block ends is dropped, so an error does not wait on the rest."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    try:
        yield BackgroundHashes(paths, executor)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def listed_files(run: RunDir) -> list[Path]:
    """The files SHA256SUMS covers: all of the run's but SHA256SUMS itself and report/audit.json,
    the auditor's statement about the folder, written after the sums (and again at each audit)."""
    return sorted(p for p in run.root.rglob("*")
                  if p.is_file() and p not in (run.sums, run.audit) and not p.name.startswith("."))


def write_sums(run: RunDir, sha256: Callable[[Path], str] = sha256_file) -> Path:
    """SHA256SUMS over every file of the run, in `sha256sum -c` format; written last. `sha256`: where
    each file's hash comes from (BackgroundHashes.sha256 where they were hashed while the run went on)."""
    lines = [f"{sha256(p)}  {p.relative_to(run.root).as_posix()}" for p in listed_files(run)]
    write_text_atomic(run.sums, "\n".join(lines) + "\n")
    return run.sums
