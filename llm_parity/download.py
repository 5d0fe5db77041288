"""The download stage: a model snapshot at a pinned revision (Hugging Face Hub, mirrors through
HF_ENDPOINT, or a local folder) and a sha256 manifest of every file, so an audit can prove that
both sides ran the very same weights."""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

from llm_parity.results import schema_tag, sha256_of, write_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SKIPPED_PARTS = (".git", ".cache")


class DownloadError(RuntimeError):
    """The snapshot could not be fetched or fails its checks; the message says what to change."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_files(folder: Path) -> list[Path]:
    """Every file of a snapshot, sorted, without VCS or cache folders."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and not any(part in SKIPPED_PARTS for part in p.relative_to(folder).parts))


def refuse_pickle(folder: Path, *, allow_pickle: bool) -> None:
    pickled = [p.name for p in model_files(folder) if p.suffix in PICKLE_SUFFIXES]
    if pickled and not allow_pickle:
        raise DownloadError(f"{folder}: pickle weight files {pickled} can run code when loaded; "
                            "convert them to safetensors, or allow them explicitly (allow_pickle)")


def build_manifest(folder: Path, *, source: str, repo_id: str, revision: str | None,
                   resolved_revision: str | None) -> dict:
    """The manifest document (schemas/manifest.schema.json) of `folder` as it is now."""
    files = [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in model_files(folder)]
    return {
        "schema": schema_tag("manifest"), "source": source, "repo_id": repo_id, "revision": revision,
        "resolved_revision": resolved_revision,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files, "sha256": sha256_of(files),
    }


def write_local_manifest(folder: Path, manifest_path: Path, *, allow_pickle: bool = False) -> dict:
    """Manifest of a model that is already on disk (source `local`)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DownloadError(f"{folder}: no config.json; point at a folder holding a Hugging Face model")
    refuse_pickle(folder, allow_pickle=allow_pickle)
    manifest = build_manifest(folder, source="local", repo_id=folder.name, revision=None, resolved_revision=None)
    write_json(manifest_path, manifest, "manifest")
    return manifest
