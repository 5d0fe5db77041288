"""The download stage: a model snapshot at a pinned revision (Hugging Face Hub or a mirror through
HF_ENDPOINT, ModelScope or a mirror through MODELSCOPE_ENDPOINT, or a local folder) and a sha256
manifest of every file, so an audit can prove that both sides ran the very same weights."""
from __future__ import annotations

import datetime as _dt
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from llm_parity.progress import byte_size, draws_bars, note, progress
from llm_parity.provenance import without_credentials
from llm_parity.results import schema_tag, sha256_file, sha256_of

if TYPE_CHECKING:
    from llm_parity.profiles import Profile

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SKIPPED_PARTS = (".git", ".cache")
PICKLE_PATTERNS = [f"*{suffix}" for suffix in PICKLE_SUFFIXES]
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
HASH_PROGRESS_FROM_BYTES = 1 << 30  # smaller models hash in seconds


class DownloadError(RuntimeError):
    """The snapshot could not be fetched or fails its checks; the message says what to change."""


def model_files(folder: Path) -> list[Path]:
    """Every file of a snapshot, sorted, without VCS or cache folders."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and not any(part in SKIPPED_PARTS for part in p.relative_to(folder).parts))


def check_model_folder(folder: Path, *, allow_pickle: bool) -> None:
    """A Hugging Face model folder, with no pickle weights unless they are allowed."""
    if not (Path(folder) / "config.json").is_file():
        raise DownloadError(f"{folder}: no config.json; point at a folder holding a Hugging Face model")
    pickled = [p.name for p in model_files(folder) if p.suffix in PICKLE_SUFFIXES]
    if pickled and not allow_pickle:
        raise DownloadError(f"{folder}: pickle weight files {pickled} can run code when loaded; "
                            "convert them to safetensors, or allow them explicitly (allow_pickle)")


def _sha256_files(paths: list[Path], log: Callable[[str], None] | None = note) -> list[str]:
    """The sha256 of each file, with progress in bytes to `log` where they add up to a large model."""
    total = sum(p.stat().st_size for p in paths)
    if log is None or total < HASH_PROGRESS_FROM_BYTES:
        return [sha256_file(p) for p in paths]
    with progress(total, "model: sha256", unit="B", log=log) as bar:
        return [sha256_file(p, on_read=bar.advance) for p in paths]


def build_manifest(folder: Path, *, source: str, repo_id: str, revision: str | None,
                   resolved_revision: str | None) -> dict:
    """The manifest document (schemas/manifest.schema.json) of `folder` as it is now."""
    paths = model_files(folder)
    files = [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": digest}
             for p, digest in zip(paths, _sha256_files(paths))]
    return {
        "schema": schema_tag("manifest"), "source": source, "repo_id": repo_id, "revision": revision,
        "resolved_revision": resolved_revision,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files, "sha256": sha256_of(files),
    }


def _fetch_error(repo_id: str, revision: str, where: str, err: Exception) -> DownloadError:
    detail = str(err).splitlines()[0] if str(err) else ""
    return DownloadError(without_credentials(f"could not fetch {repo_id}@{revision} from {where}: "
                                             f"{type(err).__name__}: {detail}"))


def _require_safetensors(folder: Path, repo_id: str, revision: str, allow_pickle: bool) -> None:
    if not allow_pickle and not any(p.suffix == ".safetensors" for p in model_files(folder)):
        raise DownloadError(f"{repo_id}@{revision}: no safetensors weights; the repo has only pickle weights, which "
                            "can run code when loaded: allow them explicitly (allow_pickle) if you trust it")


@contextmanager
def _hub_bars_only_in_a_terminal() -> Iterator[None]:
    """huggingface_hub's bars off for the block where ours are plain lines: in a log its file
    counter would write a frame ending in a carriage return at every file."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    switch_off = not draws_bars() and not are_progress_bars_disabled()
    if switch_off:
        disable_progress_bars()
    try:
        yield
    finally:
        if switch_off:
            enable_progress_bars()


def _file_lines() -> type:
    """A ModelScope progress callback (a class: the client makes one per file) that prints one
    plain line as each file ends. Its own bars cannot be switched off from here (TQDM_DISABLE=1 can)."""
    from modelscope.hub.callback import ProgressCallback

    class FileLine(ProgressCallback):
        received = 0

        def update(self, size: int) -> None:
            self.received += size

        def end(self) -> None:
            note(f"download: {self.filename}: {byte_size(self.received)} of {byte_size(self.file_size)}")

    return FileLine


def fetch_hf(repo_id: str, *, revision: str | None = None, local_dir: Path, token: str | None = None,
             endpoint: str | None = None, allow_pickle: bool = False, timeout_s: float = 30) -> tuple[Path, str]:
    """Download a Hub snapshot into `local_dir` at the commit `revision` resolves to.

    Args:
        repo_id: the model repository, e.g. "ShanXi/KoLlama-3-8B-Instruct".
        revision: branch, tag or commit (default "main"); a branch is resolved to its commit once
            and every file is fetched at that commit.
        local_dir: where the files go; an interrupted download resumes there.
        token: Hub token (default: HF_TOKEN); never written anywhere.
        endpoint: Hub or mirror URL (default: HF_ENDPOINT, else the Hub).
        allow_pickle: also fetch .bin/.pt weights (they can run code when loaded).
        timeout_s: per-request timeout, so an unreachable endpoint fails in bounded time.

    Returns: (the local folder, the resolved commit hash).
    Raises: DownloadError saying what to change."""
    from huggingface_hub import HfApi, snapshot_download

    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, timeout=timeout_s)
        commit = info.sha
        with _hub_bars_only_in_a_terminal():
            path = snapshot_download(repo_id, revision=commit, local_dir=local_dir, token=token, endpoint=endpoint,
                                     ignore_patterns=None if allow_pickle else PICKLE_PATTERNS)
    except Exception as err:  # noqa: BLE001 - the Hub client raises its HTTP library's errors (httpx, httpx2, ...) as well as its own
        where = endpoint or "the Hugging Face Hub (set HF_ENDPOINT for a mirror)"
        raise _fetch_error(repo_id, revision or "main", where, err) from None
    _require_safetensors(Path(path), repo_id, commit, allow_pickle)
    return Path(path), commit


def fetch_modelscope(repo_id: str, *, revision: str | None = None, local_dir: Path, token: str | None = None,
                     endpoint: str | None = None, allow_pickle: bool = False) -> tuple[Path, str | None]:
    """Download a ModelScope snapshot into `local_dir`.

    ModelScope's download API names no commit: a branch or tag is fetched as it stands, so unless
    `revision` is itself a commit id, the resolved revision is None and the manifest's per-file
    sha256 is what pins the weights (the report says so).

    Args:
        repo_id: the model repository, "owner/name".
        revision: branch, tag or commit id (default "master", ModelScope's default branch).
        local_dir: where the files go; an interrupted download resumes there.
        token: ModelScope token (default: MODELSCOPE_API_TOKEN, else a saved login); never written anywhere.
        endpoint: ModelScope or mirror URL with its scheme (default: MODELSCOPE_ENDPOINT, else ModelScope).
        allow_pickle: also fetch .bin/.pt weights (they can run code when loaded).

    An unreachable endpoint fails after the client's own retries (about 7 s when the connection is
    refused; MODELSCOPE_REPO_TREE_PAGE_TIMEOUT_SECONDS and _MAX_ATTEMPTS bound a silent one).

    Returns: (the local folder, the commit id or None).
    Raises: DownloadError saying what to change."""
    from modelscope import snapshot_download

    revision = revision or "master"
    # The client reads these variables once per process; reading them here honours later changes.
    endpoint = endpoint or os.environ.get("MODELSCOPE_ENDPOINT")
    token = token or os.environ.get("MODELSCOPE_API_TOKEN")
    try:
        path = snapshot_download(repo_id, revision=revision, local_dir=str(local_dir), token=token, endpoint=endpoint,
                                 ignore_file_pattern=None if allow_pickle else PICKLE_PATTERNS,
                                 progress_callbacks=None if draws_bars() else [_file_lines()])
    except Exception as err:  # noqa: BLE001 - the client raises requests', urllib3's and its own errors
        where = endpoint or "ModelScope (set MODELSCOPE_ENDPOINT for a mirror)"
        raise _fetch_error(repo_id, revision, where, err) from None
    _require_safetensors(Path(path), repo_id, revision, allow_pickle)
    return Path(path), revision if COMMIT_ID.fullmatch(revision) else None


FETCHERS = {"hf": fetch_hf, "modelscope": fetch_modelscope}


def verify_folder(folder: Path, manifest: dict, *, log: Callable[[str], None] | None = None) -> list[str]:
    """Re-hash `folder` against `manifest`: every changed, missing or extra file, named; `log` gets
    the hashing's progress (_sha256_files)."""
    folder = Path(folder)
    expected = {entry["path"]: entry for entry in manifest["files"]}
    present = {p.relative_to(folder).as_posix(): p for p in model_files(folder)}
    problems = [f"{folder / name}: missing (listed in the manifest)" for name in sorted(set(expected) - set(present))]
    problems += [f"{folder / name}: extra file, not in the manifest" for name in sorted(set(present) - set(expected))]
    shared = sorted(set(expected) & set(present))
    same_size = [name for name in shared if present[name].stat().st_size == expected[name]["size"]]
    digests = dict(zip(same_size, _sha256_files([present[name] for name in same_size], log)))
    problems += [f"{folder / name}: content differs from the manifest (sha256)" for name in shared
                 if digests.get(name) != expected[name]["sha256"]]
    return problems


@dataclass(frozen=True)
class ModelOrigin:
    """Where the model files came from, as the manifest records it."""

    source: str
    repo_id: str
    revision: str | None = None
    resolved_revision: str | None = None


def resolve_model(profile: Profile, model: str | None = None, *, models_root: Path = Path("models"),
                  log=note) -> tuple[Path, ModelOrigin]:
    """The local folder of the profile's model and where it came from: a folder given explicitly,
    the tiny model (built), a local folder, or a Hugging Face or ModelScope snapshot downloaded
    into `models_root`."""
    if model:
        return Path(model), ModelOrigin("local", Path(model).name)
    source, repo_id = profile.model["source"], profile.model["repo_id"]
    if source == "tiny":
        from llm_parity.tiny_model import build_tiny_model

        folder = build_tiny_model(variant=profile.model.get("tiny_variant", "default"), log=log)
        return folder, ModelOrigin("local", folder.name)
    if source == "local":
        return Path(repo_id), ModelOrigin("local", Path(repo_id).name)
    revision = profile.model.get("revision")
    log(f"download: {repo_id}@{revision or 'default branch'} from {source} into {models_root / repo_id}")
    folder, resolved = FETCHERS[source](repo_id, revision=revision, local_dir=models_root / repo_id,
                                        allow_pickle=profile.model.get("allow_pickle", False))
    return folder, ModelOrigin(source, repo_id, revision, resolved)


def recorded_model(manifest: dict, manifest_path: Path, profile: Profile, model: str | None = None, *,
                   models_root: Path = Path("models"), log=note) -> Path:
    """The model a results folder ran, for a replay: `model` if given, else the manifest's Hub or
    ModelScope snapshot at its resolved revision, else the profile's own (the tiny model, a local
    folder); then every file checked against the manifest, so nothing runs on other weights."""
    source = manifest["source"]
    if model:
        folder = Path(model)
    elif source in FETCHERS:
        revision = manifest["resolved_revision"] or manifest["revision"]
        log(f"download: {manifest['repo_id']}@{revision or 'default branch'} from {source} (the manifest's revision)")
        folder, _ = FETCHERS[source](manifest["repo_id"], revision=revision, local_dir=models_root / manifest["repo_id"],
                                     allow_pickle=profile.model.get("allow_pickle", False))
    else:
        folder, _ = resolve_model(profile, models_root=models_root, log=log)
    if not folder.is_dir():
        raise DownloadError(f"{manifest_path}: field source: the model came from a local folder ({manifest['repo_id']}), "
                            f"and {folder} is not one here: pass --model with a copy of it")
    problems = verify_folder(folder, manifest, log=log)
    if problems:
        raise DownloadError(f"{manifest_path}: field files: model folder {folder} does not match the manifest, so "
                            f"nothing was run: {'; '.join(problems)}")
    return folder
