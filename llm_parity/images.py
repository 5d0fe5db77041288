"""Base images pinned by digest: images.lock.json maps each tag to its digest and says where the
digest was read. A build from a tag with no digest is refused unless the user opts in, and the
image then records that its base was unpinned."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from llm_parity import PROJECT_ROOT
from llm_parity.results import read_json, write_json

LOCK_PATH = PROJECT_ROOT / "images.lock.json"


class UnpinnedImage(ValueError):
    """A base image with no digest in the lock, and no opt-in to build from the bare tag."""


def load_lock(path: Path = LOCK_PATH) -> dict:
    return read_json(path, "images-lock")


def base_reference(tag: str, *, allow_unpinned: bool = False, mirror: str | None = None,
                   path: Path = LOCK_PATH) -> tuple[str, bool]:
    """`tag@digest` and True when the lock pins `tag`; the bare tag and False when it does not
    and `allow_unpinned` is set. With `mirror` (a registry prefix such as `mirror.example/`) the
    image is pulled through it under the same digest, so the bytes are the ones the lock names."""
    entry = load_lock(path)["images"].get(tag)
    pulled = f"{mirror.rstrip('/')}/{tag}" if mirror else tag
    if entry and entry["digest"]:
        return f"{pulled}@{entry['digest']}", True
    if not allow_unpinned:
        why = "is not in" if entry is None else "has no digest in"
        raise UnpinnedImage(f"{path}: field images.{tag}: the base image {why} the lock; run `make pin` on a host "
                            "that reaches the registry, or build unpinned with ALLOW_UNPINNED=1 (the report will say so)")
    return pulled, False


def record_digest(tag: str, digest: str, *, path: Path = LOCK_PATH) -> None:
    """Write a digest resolved from the registry (by `make pin`) into the lock."""
    lock = load_lock(path)
    today = _dt.date.today().isoformat()
    lock["images"][tag] = {"digest": digest, "source": f"resolved from the registry by `make pin` on {today}"}
    write_json(path, lock, "images-lock")
