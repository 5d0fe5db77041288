"""Prompt suites: load one as people wrote it, render it once to token ids with the model's own
chat template, and hash it. Both sides consume the rendered ids, never the text."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llm_parity import PROJECT_ROOT
from llm_parity.results import ResultFileError, read_json, schema_tag, sha256_of, validate_part

DEFAULT_SUITE = PROJECT_ROOT / "suites" / "default-ko.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DEFAULT_KIND = "custom"


def load_suite_source(path: Path | str = DEFAULT_SUITE, *, limit: int | None = None) -> dict:
    """A suite as written, as a dict valid against schemas/suite-source.schema.json: either a suite
    file (JSON) or, for a .jsonl/.ndjson file, one chat request per line,
    {"id", "messages", optional "kind" (default "custom") and "max_tokens"}, named after the file's stem.

    `limit` keeps the first `limit` prompts and every passage (there are few, and each is one
    forward pass). Problems raise ResultFileError: one line naming the file, the line or field."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    path = Path(path)
    source = _read_jsonl(path) if path.suffix.lower() in JSONL_SUFFIXES else _read_suite_file(path)
    return source if limit is None else _first_prompts(source, limit)


def _read_suite_file(path: Path) -> dict:
    source = read_json(path, "suite-source")
    if "limit" in source:
        raise ResultFileError(f"{path}: field limit: set by --limit when the suite is loaded, not in the file")
    for section in ("prompts", "passages"):
        ids = [item["id"] for item in source[section]]
        if (pair := _first_duplicate(ids)) is not None:
            first, again = pair
            raise ResultFileError(f'{path}: field {section}[{again}].id: duplicate id "{ids[again]}" (first at {section}[{first}])')
    return source


def _read_jsonl(path: Path) -> dict:
    try:
        raw_lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise ResultFileError(f"{path}: file not found") from None
    numbered = [(number, _parse_line(path, number, raw)) for number, raw in enumerate(raw_lines, start=1) if raw.strip()]
    if not numbered:
        raise ResultFileError(f"{path}: no prompts: every line is blank")
    ids = [prompt["id"] for _, prompt in numbered]
    if (pair := _first_duplicate(ids)) is not None:
        first, again = pair
        raise ResultFileError(f'{path}: line {numbered[again][0]}: duplicate id "{ids[again]}" (first on line {numbered[first][0]})')
    return {"schema": schema_tag("suite-source"), "name": path.stem, "prompts": [prompt for _, prompt in numbered], "passages": []}


def _parse_line(path: Path, number: int, raw: bytes) -> dict:
    """One JSONL line as a suite prompt, checked against the suite file's own prompt schema so
    that a field is named the same way in both formats."""
    where = f"{path}: line {number}"
    try:
        request = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ResultFileError(f"{where}: not UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ResultFileError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
    prompt = {"kind": DEFAULT_KIND, **request} if isinstance(request, dict) else request
    validate_part(prompt, "suite-source.schema.json#/$defs/prompt", where)
    return prompt


def _first_duplicate(ids: list[str]) -> tuple[int, int] | None:
    """Positions of the first id seen a second time and of its first occurrence."""
    seen: dict[str, int] = {}
    for index, item_id in enumerate(ids):
        if item_id in seen:
            return seen[item_id], index
        seen[item_id] = index
    return None


def _first_prompts(source: dict, limit: int) -> dict:
    """The limit is recorded only when it cuts: a limit at or above the suite's size gives the
    whole suite, with the whole suite's hashes."""
    if limit >= len(source["prompts"]):
        return source
    return {**source, "prompts": source["prompts"][:limit], "limit": limit}


def tokenizer_sha256(model_dir: Path) -> str:
    """Hash of the files that decide how text becomes ids, chat template included."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def render_prompt_text(tokenizer, messages: list[dict]) -> str:
    """The chat template's output, ending with the assistant's header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def text_ids(tokenizer, text: str) -> list[int]:
    """Text to ids without adding special tokens: a rendered prompt already has its own, so
    this is the second of the two steps vLLM's chat endpoint takes and the ids can be checked
    against the server's."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_passage_ids(tokenizer, text: str) -> list[int]:
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + text_ids(tokenizer, text)


def stop_ids(model_dir: Path, tokenizer) -> list[int]:
    """The ids that end a generation: generation_config's eos ids and the tokenizer's."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return sorted(ids)


def _render_prompt(tokenizer, prompt: dict, default_max_tokens: int) -> dict:
    """One prompt rendered; a prompt the tokenizer cannot take (say, text that is not valid
    Unicode) keeps its place with no ids and the reason, so the rest of the suite still runs."""
    rendered = {"id": prompt["id"], "kind": prompt["kind"], "messages": prompt["messages"],
                "max_tokens": prompt.get("max_tokens", default_max_tokens)}
    try:
        rendered["prompt_text"] = render_prompt_text(tokenizer, prompt["messages"])
        rendered["prompt_ids"] = text_ids(tokenizer, rendered["prompt_text"])
    except (TypeError, ValueError, UnicodeError) as err:
        rendered["prompt_ids"] = []
        rendered["render_error"] = f"{type(err).__name__}: {err}"
    return rendered


def suite_hash(prompts: list[dict], passages: list[dict], stop: list[int]) -> str:
    """Covers every field of the prompts as stored (text, ids, max_tokens...), so audit.py can
    recompute it from suite.json alone."""
    return sha256_of({"prompts": prompts, "passages": passages, "stop_ids": stop})


def render_suite(source: dict, model_dir: Path, *, default_max_tokens: int) -> dict:
    """The rendered suite (schemas/suite.schema.json) for the tokenizer in `model_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [_render_prompt(tokenizer, prompt, default_max_tokens) for prompt in source["prompts"]]
    passages = [
        {"id": passage["id"], "text": passage["text"], "ids": render_passage_ids(tokenizer, passage["text"])}
        for passage in source["passages"]
    ]
    stop = stop_ids(model_dir, tokenizer)
    limit = {"limit": source["limit"]} if "limit" in source else {}
    return {
        "schema": schema_tag("suite"),
        "name": source["name"],
        **limit,
        "sha256": suite_hash(prompts, passages, stop),
        "stop_ids": stop,
        "source_sha256": sha256_of(source),
        "tokenizer_sha256": tokenizer_sha256(model_dir),
        "prompts": prompts,
        "passages": passages,
    }
