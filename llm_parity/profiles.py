"""Model profiles: where the model comes from, how it is served and decoded, and the thresholds
the comparison is held to. Profiles are JSON files in profiles/ (schema: schemas/profile.schema.json)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

from llm_parity import PROJECT_ROOT
from llm_parity.results import ResultFileError, read_json, sha256_of

PROFILE_DIR = PROJECT_ROOT / "profiles"
DEFAULT_PROFILE = "kollama-3-8b-instruct"
DEMO_PROFILE = "tiny-llama"


@dataclass(frozen=True)
class Profile:
    name: str
    model: dict
    serve: dict
    decoding: dict
    thresholds_by_dtype: dict
    path: Path
    sha256: str  # of the profile file's content: the sides record it, compare checks it
    document: dict  # the profile file's content, recorded whole in each side's provenance so a replay needs no other copy
    variants: dict | None = None  # the configuration matrix's variants, when the profile names its own

    @classmethod
    def from_document(cls, doc: dict, path: Path) -> "Profile":
        """A profile from its (validated) document; `path` is where it was read, for error messages."""
        return cls(doc["name"], doc["model"], doc["serve"], doc["decoding"], doc["thresholds"], path, sha256_of(doc), doc,
                   doc.get("variants"))

    @property
    def dtype(self) -> str:
        return self.serve["dtype"]

    def thresholds(self, dtype: str | None = None) -> dict:
        dtype = dtype or self.dtype
        try:
            return self.thresholds_by_dtype[dtype]
        except KeyError:
            raise ResultFileError(f"{self.path}: field thresholds.{dtype}: no thresholds for dtype {dtype!r}") from None

    def with_serve(self, **changes) -> "Profile":
        """A copy with some serve settings replaced (None values are ignored)."""
        serve = copy.deepcopy(self.serve)
        serve.update({key: value for key, value in changes.items() if value is not None})
        profile = replace(self, serve=serve)
        profile.thresholds()  # fail early on a dtype the profile cannot judge
        return profile


def profile_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or candidate.exists():
        return candidate
    return PROFILE_DIR / f"{name_or_path}.json"


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> Profile:
    """Load a profile by name (profiles/<name>.json) or by path, validated against its schema."""
    path = profile_path(name_or_path)
    return Profile.from_document(read_json(path, "profile"), path)
