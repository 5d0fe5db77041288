"""The reference side: the suite through Hugging Face transformers on CPU or CUDA, from exactly
the same prompt ids as the target, greedy, with per-token logprobs by log_softmax in float32.

Prompts and passages run in batches sized from the memory left after the model is loaded. One
decoding step reads every weight once however many rows it carries, and on a CPU that read is
most of the step for a large model, so a step for a batch of prompts costs little more than one.
Prefill is compute, not reads, so where the model's cache allows it each prompt is prefilled
alone and only decoding is shared."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from functools import partial
from collections.abc import Callable, Iterable
from pathlib import Path

from llm_parity.backend import Backend, SideSetup
from llm_parity.progress import note
from llm_parity.records import ForcedScore, Generation, PassageScore, Record, sort_top_k

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
# Share of the free memory a batch may take: the estimate counts the KV cache and the logits,
# not the transient activations of the forward pass, which the other half leaves room for.
MEMORY_FRACTION = 0.5
# A logits row is held three times at the peak: as the model returns it, as float32, as log_softmax.
LOGITS_COPIES = 3
FLOAT32_BYTES = 4
# Any id in the vocabulary: padded positions are masked out, and what a finished row is fed is ignored.
PAD_ID = 0
# Padded tokens one more passage may add to a perplexity batch: past that, a forward pass of its
# own costs less (on CPUs a forward pass costs about what some tens of tokens do).
PASSAGE_PADDING_LIMIT = 32
ITEM_ERRORS = (RuntimeError, ValueError, IndexError)
# transformers' own names for placing a model's layers over the devices there are.
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")


@dataclass(frozen=True)
class Placement:
    """Where the reference runs, beyond `--device`: `processes` copies of the model started by
    `accelerate launch`, each running a share of the batches (llm_parity.processes); `batch_size`
    fixed instead of sized from free memory; `device_map` (transformers': "auto", ...) spreading
    one model's layers over the GPUs, then the CPU, then `offload_folder` on disk, each device
    holding at most its `max_memory` ({0: "70GiB", "cpu": "200GiB"})."""

    processes: int = 1
    batch_size: int | None = None
    device_map: str | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None

    def __post_init__(self):
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, not {self.processes}")
        _check_batch_size(self.batch_size)
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ValueError(f"device map {self.device_map!r}: choose one of {', '.join(DEVICE_MAPS)}")
        if self.device_map is None and (self.max_memory or self.offload_folder):
            raise ValueError("max memory and an offload folder place a model's layers: they need a device map "
                             "(--device-map auto)")
        if self.device_map is not None and self.processes > 1:
            raise ValueError("a device map and several processes cannot be combined: each process would spread "
                             "its model over every device; choose one")

    def load_kwargs(self) -> dict:
        """What `from_pretrained` is given to place the model."""
        if self.device_map is None:
            return {}
        # A copy: transformers rewrites the sizes in the dict it is given.
        max_memory = dict(self.max_memory) if self.max_memory else None
        return {"device_map": self.device_map, "max_memory": max_memory, "offload_folder": self.offload_folder}


def parse_max_memory(text: str) -> dict:
    """"0=70GiB,cpu=200GiB" as transformers takes it: GPU indices as ints, "cpu" and "disk" as they are."""
    limits = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        device, sep, size = part.partition("=")
        if not sep or not device or not size:
            raise ValueError(f"max memory {text!r}: write DEVICE=SIZE pairs separated by commas, "
                             "e.g. 0=70GiB,cpu=200GiB")
        limits[int(device) if device.isdigit() else device] = size
    return limits


def device_name(device: int | str) -> str:
    """A device map's entry as torch names it: GPU index 0 is "cuda:0"."""
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def main_device(device_map: dict | None) -> str:
    """Where the ids go for a model placed by `device_map`: its first accelerator, as accelerate
    runs offloaded layers there too; the CPU when the map has none (or when nothing was split)."""
    accelerators = [device for device in (device_map or {}).values() if device not in ("cpu", "disk")]
    return device_name(accelerators[0]) if accelerators else "cpu"


def available_memory(device: str) -> int:
    """Bytes free now on `device`: what the CUDA driver reports free, else the RAM the OS can hand
    out (psutil counts reclaimable page cache; without it, sysconf's free pages)."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return psutil.virtual_memory().available


def batch_size_for(budget_bytes: int, bytes_per_sequence: int, items: int) -> int:
    """How many sequences of `bytes_per_sequence` fit in `budget_bytes` at once, capped at the
    number of items; at least 1, so a budget too small for one sequence still runs one at a time."""
    return max(1, min(items, budget_bytes // max(1, bytes_per_sequence)))


@dataclass
class _Decoding:
    """One row of a batched greedy decode; done once `finish_reason` is set."""

    max_tokens: int
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list] = field(default_factory=list)
    finish_reason: str | None = None

    def take(self, token: int, logprob: float, top: list[list], stop_ids: set[int]) -> None:
        self.output_ids.append(token)
        self.logprobs.append(logprob)
        self.top.append(top)
        if token in stop_ids:
            self.finish_reason = "stop"
        elif len(self.output_ids) >= self.max_tokens:
            self.finish_reason = "length"


class TransformersRunner:
    """A causal LM loaded once; `generate_batch` and `perplexity_batch` (and their one-item forms
    `generate` and `perplexity`) give the same records as the target.

    Use as a context manager to free the model on exit."""

    def __init__(self, model_dir: Path, *, dtype: str, stop_ids: Iterable[int], device: str = "cpu",
                 trust_remote_code: bool = False, placement: Placement = Placement(),
                 memory_fraction: float = MEMORY_FRACTION):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.memory_fraction = memory_fraction
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, DTYPES[dtype]), trust_remote_code=trust_remote_code,
            use_safetensors=True, **placement.load_kwargs(),
        )
        # With a device map, accelerate's hooks move each layer's inputs where its weights are;
        # the ids start on the map's first accelerator, where offloaded layers also run.
        self.device_map = getattr(self.model, "hf_device_map", None) if placement.device_map else None
        self.device = main_device(self.device_map) if placement.device_map else device
        if not placement.device_map:
            self.model.to(device)
        self.model.eval()
        # The suite's stop ids, rendered once for both sides, not the model's own configs: the
        # target stops on exactly these too.
        self.stop_ids = set(stop_ids)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # Only the last position's logits are needed while decoding; models that cannot say so
        # compute them all and the last row is taken.
        keeps_last = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._decode_kwargs = {"logits_to_keep": 1} if keeps_last else {}
        # One token through the model shows its cache's layout, which decides how batches are built.
        with torch.inference_mode():
            probe = self.model(input_ids=torch.tensor([[PAD_ID]], device=self.device), use_cache=True).past_key_values
        self._joins_rows, self._drops_rows = _cache_abilities(probe)

    def __enter__(self) -> "TransformersRunner":
        return self

    def __exit__(self, *exc) -> None:
        del self.model

    def sequence_bytes(self, tokens: int, logit_rows: int) -> int:
        """Memory one sequence of a batch needs beyond the weights: its KV cache over `tokens`
        tokens (K and V, every layer, from the model config) and `logit_rows` vocabulary-wide rows
        of float32 logits, each held LOGITS_COPIES times."""
        config = self.model.config.get_text_config()
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        kv_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize
        return kv_per_token * tokens + logit_rows * config.vocab_size * FLOAT32_BYTES * LOGITS_COPIES

    def _batch_size(self, bytes_per_sequence: int, items: int) -> int:
        return batch_size_for(int(available_memory(self.device) * self.memory_fraction), bytes_per_sequence, items)

    def prompt_batch_size(self, prompts: list[dict]) -> int:
        """Prompts per batch: every row of a batch is as long as its longest prompt plus the most
        new tokens, with one row of logits at a time."""
        tokens = (max((len(p["prompt_ids"]) for p in prompts), default=0)
                  + max((p["max_tokens"] for p in prompts), default=0))
        return self._batch_size(self.sequence_bytes(tokens, logit_rows=1), len(prompts))

    def forward_batch_size(self, lengths: list[int]) -> int:
        """Sequences (passages, prompt + answer) per batch of one forward pass, which holds logits
        for every position of every row."""
        tokens = max(lengths, default=0)
        return self._batch_size(self.sequence_bytes(tokens, logit_rows=tokens), len(lengths))

    def _forward(self, input_ids, attention_mask, position_ids, past_key_values=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, use_cache=True, **self._decode_kwargs)

    def _prefill(self, prompts: list[dict]):
        """The last position's logits of every prompt, the KV cache and the attention mask, rows
        left-padded to the longest prompt.

        Where the model's cache allows it, each prompt is prefilled alone, so prefill computes no
        padding (a padded batch computes every row at the longest prompt's length), and the caches
        are joined with zeros on the left, which the mask hides. Other caches (sliding windows,
        recurrent state) come from one padded batch prefill."""
        sequences = [prompt["prompt_ids"] for prompt in prompts]
        self._check_ids(sequences)
        input_ids, mask = self._left_padded(sequences)
        if not self._joins_rows:
            out = self._forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
            return out.logits[:, -1], out.past_key_values, mask
        last_logits, caches = [], []
        for ids in sequences:
            out = self._forward_alone(ids)
            last_logits.append(out.logits[:, -1])
            caches.append(out.past_key_values)
            del out  # the full output holds every position's logits where the model cannot keep only the last
        return self.torch.cat(last_logits), _left_joined(caches, mask.shape[1]), mask

    def _left_padded(self, sequences: list[list[int]]):
        """Input ids and attention mask with every row right-aligned, so the last column is each
        row's last real token."""
        width = max(len(ids) for ids in sequences)
        ids = [[PAD_ID] * (width - len(row)) + list(row) for row in sequences]
        mask = [[0] * (width - len(row)) + [1] * len(row) for row in sequences]
        return self.torch.tensor(ids, device=self.device), self.torch.tensor(mask, device=self.device)

    def _check_ids(self, sequences: list[list[int]]) -> None:
        """An id outside the vocabulary would index out of the embedding, which on CUDA is a
        device-side assert that breaks every later call: refuse it before the forward pass."""
        vocab_size = self.model.get_input_embeddings().num_embeddings
        for ids in sequences:
            bad = next((token for token in ids if not 0 <= token < vocab_size), None)
            if bad is not None:
                raise ValueError(f"token id {bad} is outside the model's vocabulary of {vocab_size} "
                                 "(tokenizer and model do not match)")

    def _forward_alone(self, ids: list[int]):
        row = self.torch.tensor([ids], device=self.device)
        return self._forward(row, self.torch.ones_like(row), self.torch.arange(len(ids), device=self.device)[None])

    def generate_batch(self, prompts: list[dict], *, top_logprobs: int) -> list[Generation]:
        """Greedy decoding of several prompts at once with the KV cache, each row stopping at an
        EOS id or its own max_tokens. A finished row leaves the batch where the model's cache
        allows it, so the rows left decode faster; otherwise it is fed padding until all finish.

        Position ids count only a row's real tokens, so a padded row sees the same positions as
        alone (transformers 5 takes positions from the cache length when none are given, which
        would shift them by the padding)."""
        torch = self.torch
        rows = [_Decoding(prompt["max_tokens"]) for prompt in prompts]
        active = rows
        with torch.inference_mode():
            logits, cache, mask = self._prefill(prompts)
            while True:
                self._take_step(active, logits, top_logprobs)
                going_on = [i for i, row in enumerate(active) if not row.finish_reason]
                if not going_on:
                    break
                if self._drops_rows and len(going_on) < len(active):
                    kept = torch.tensor(going_on, device=self.device)
                    cache.batch_select_indices(kept)
                    mask, active = mask[kept], [active[i] for i in going_on]
                fed = torch.tensor([[PAD_ID if row.finish_reason else row.output_ids[-1]] for row in active],
                                   device=self.device)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = self._forward(fed, mask, mask.sum(-1, keepdim=True) - 1, past_key_values=cache)
                logits, cache = out.logits[:, -1], out.past_key_values
        return [self._generation_record(prompt, row) for prompt, row in zip(prompts, rows)]

    def _take_step(self, rows: list[_Decoding], last_logits, top_logprobs: int) -> None:
        """The greedy token of each unfinished row, its logprob and the top-k, from one step's logits."""
        torch = self.torch
        scores = torch.log_softmax(last_logits.float(), dim=-1)
        values, indices = torch.topk(scores, top_logprobs, dim=-1)
        tokens = torch.argmax(scores, dim=-1)
        chosen = scores.gather(1, tokens.unsqueeze(1)).squeeze(1)
        for row, token, logprob, top_ids, top_values in zip(
                rows, tokens.tolist(), chosen.tolist(), indices.tolist(), values.tolist()):
            if not row.finish_reason:
                row.take(token, logprob, sort_top_k(zip(top_ids, top_values), top_logprobs), self.stop_ids)

    def _generation_record(self, prompt: dict, row: _Decoding) -> Generation:
        return Generation(id=prompt["id"], prompt_ids=list(prompt["prompt_ids"]), output_ids=row.output_ids,
                          text=self.tokenizer.decode(row.output_ids, skip_special_tokens=True), logprobs=row.logprobs,
                          top_logprobs=row.top, finish_reason=row.finish_reason,
                          prompt_tokens=len(prompt["prompt_ids"]), completion_tokens=len(row.output_ids))

    def generate(self, prompt: dict, *, top_logprobs: int) -> Generation:
        """One prompt: a batch of one."""
        return self.generate_batch([prompt], top_logprobs=top_logprobs)[0]

    def _scored(self, sequences: list[list[int]], starts: list[int], top_logprobs: int) -> list[tuple[list, list]]:
        """One forward pass over right-padded sequences; for each, from token `start` on, the
        logprob of every token given the ones before it and the top-k there (none when
        `top_logprobs` is 0). Padding comes after a row's tokens, so it never sits in their context."""
        torch = self.torch
        self._check_ids(sequences)
        width = max(len(ids) for ids in sequences)
        ids = torch.tensor([list(row) + [PAD_ID] * (width - len(row)) for row in sequences], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in sequences], device=self.device)
        scored = []
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            for index, (tokens, start) in enumerate(zip(sequences, starts)):
                scores = torch.log_softmax(logits[index, start - 1:len(tokens) - 1].float(), dim=-1)
                chosen = scores.gather(1, ids[index, start:len(tokens)].unsqueeze(1)).squeeze(1).tolist()
                if not top_logprobs:
                    scored.append((chosen, []))
                    continue
                values, indices = torch.topk(scores, top_logprobs, dim=-1)
                scored.append((chosen, [sort_top_k(zip(i, v), top_logprobs)
                                        for i, v in zip(indices.tolist(), values.tolist())]))
        return scored

    def perplexity_batch(self, passages: list[dict]) -> list[PassageScore]:
        """Logprob of each passage token given the ones before it, one forward pass for the batch."""
        scored = self._scored([passage["ids"] for passage in passages], [1] * len(passages), 0)
        return [PassageScore(id=passage["id"], logprobs=chosen) for passage, (chosen, _) in zip(passages, scored)]

    def score_answers_batch(self, answers: list[dict], *, top_logprobs: int) -> list[ForcedScore]:
        """Teacher forcing: each answer scored after its prompt, one forward pass for the batch."""
        scored = self._scored([a["prompt_ids"] + a["answer_ids"] for a in answers],
                              [len(a["prompt_ids"]) for a in answers], top_logprobs)
        return [ForcedScore(id=answer["id"], answer_ids=list(answer["answer_ids"]), logprobs=chosen, top_logprobs=top)
                for answer, (chosen, top) in zip(answers, scored)]

    def prompt_logits(self, ids: list[int]) -> list[list[float]]:
        """The full-vocabulary logits before each token of `ids` after the first, as float32 rows:
        what the target's server gives with LOGITS_SERVE_ARGS."""
        self._check_ids([ids])
        with self.torch.inference_mode():
            logits = self.model(input_ids=self.torch.tensor([ids], device=self.device), use_cache=False).logits
        return logits[0, :len(ids) - 1].float().tolist()

    def perplexity(self, passage: dict) -> PassageScore:
        """One passage: a batch of one."""
        return self.perplexity_batch([passage])[0]


def _cache_abilities(cache) -> tuple[bool, bool]:
    """What a model's KV cache allows: (rows prefilled alone can be joined into one batch,
    finished rows can leave the batch). Only plain per-layer keys and values can be joined;
    sliding-window layers can also drop rows; recurrent state and custom caches can do neither."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = [type(layer) for layer in cache.layers] if type(cache) is DynamicCache else [None]
    return (all(layer is DynamicLayer for layer in layers),
            all(layer in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers))


def _left_joined(caches: list, width: int):
    """One cache holding every row of `caches` (each a batch of one), left-padded with zeros to `width`."""
    import torch
    from transformers import DynamicCache

    def padded(states):
        return torch.cat([torch.nn.functional.pad(state, (0, 0, width - state.shape[-2], 0)) for state in states])

    return DynamicCache([(padded([k for k, _v, _w in layer]), padded([v for _k, v, _w in layer]))
                         for layer in zip(*caches)])


def _batch_or_alone(batch: list[dict], run_batch: Callable[[list[dict]], list[Record]],
                    failed: Callable[[dict, str], Record]) -> list[Record]:
    """The batch's records; if the batch fails, each item alone, so one bad item becomes its own
    error record instead of taking the others down."""
    try:
        return run_batch(batch)
    except ITEM_ERRORS as err:
        error = f"{type(err).__name__}: {err}"
    # Retried here, not in the except block, so the failed batch's traceback (and the tensors its
    # frames hold) is released before the first retry.
    if len(batch) == 1:
        return [failed(batch[0], error)]
    return [record for item in batch for record in _batch_or_alone([item], run_batch, failed)]


def length_batches(lengths: list[int], size: int, padding_limit: int | None = None) -> list[list[int]]:
    """Indices of items in batches of at most `size`, shortest first. With a `padding_limit`, a
    batch also ends where the next item would add more padded tokens than that."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        batch = batches[-1] if batches else []
        # Sorted, so the item is the longest yet: every row already in the batch grows by the difference.
        added_padding = len(batch) * (lengths[index] - lengths[batch[-1]]) if batch else 0
        if batch and len(batch) < size and (padding_limit is None or added_padding <= padding_limit):
            batch.append(index)
        else:
            batches.append([index])
    return batches


@dataclass(frozen=True)
class Work:
    """One request's items and how the reference runs them: sorted by `lengths` into batches of
    up to a batch size (cut where one more item would add over `padding_limit` padded tokens),
    `run_batch` on each, `failed` for an item that fails alone. `memory_batch_size` is the batch
    size the free memory allows."""

    noun: str  # what the items are, for the log
    label: str  # how a failed item's line names its kind
    items: list[dict]
    lengths: list[int]
    padding_limit: int | None
    memory_batch_size: Callable[[], int]
    run_batch: Callable[[list[dict]], list[Record]]
    failed: Callable[[dict, str], Record]

    def batches(self, size: int) -> list[list[int]]:
        """Indices of the items in batches of at most `size`, shortest first."""
        return length_batches(self.lengths, size, self.padding_limit)

    def run(self, batches: list[list[int]], *, log: Callable[[str], None],
            on_record: Callable[[Record], None]) -> list[Record | None]:
        """The items of `batches` (lists of indices), each record to `on_record` as it comes (the
        caller counts progress) and a line for each that failed; the records in the items' order
        (None for items in no batch)."""
        records: list[Record | None] = [None] * len(self.items)
        for indices in batches:
            for index, record in zip(indices, _batch_or_alone([self.items[i] for i in indices], self.run_batch,
                                                              self.failed)):
                records[index] = record
                on_record(record)
                if record.error:
                    log(f"reference: {self.label}{record.id}: {record.error}")
        return records


def generation_work(runner: TransformersRunner, prompts: list[dict], *, top_logprobs: int) -> Work:
    """Greedy decoding of `prompts`. No padding limit: where prompts are prefilled one by one,
    padding only widens the masked part of the cache that each decoding step attends over."""
    return Work("prompts", "", prompts, [len(prompt["prompt_ids"]) for prompt in prompts], None,
                partial(runner.prompt_batch_size, prompts), partial(runner.generate_batch, top_logprobs=top_logprobs),
                Generation.failed)


def passage_work(runner: TransformersRunner, passages: list[dict]) -> Work:
    """Prompt logprobs of `passages`."""
    lengths = [len(passage["ids"]) for passage in passages]
    return Work("passages", "perplexity ", passages, lengths, PASSAGE_PADDING_LIMIT,
                partial(runner.forward_batch_size, lengths), runner.perplexity_batch, PassageScore.failed)


def answer_work(runner: TransformersRunner, answers: list[dict], *, top_logprobs: int) -> Work:
    """Teacher-forced scores of the other side's answers."""
    lengths = [len(answer["prompt_ids"]) + len(answer["answer_ids"]) for answer in answers]
    return Work("answers", "teacher-forced ", answers, lengths, PASSAGE_PADDING_LIMIT,
                partial(runner.forward_batch_size, lengths),
                partial(runner.score_answers_batch, top_logprobs=top_logprobs), ForcedScore.failed)


def run_work(work: Work, *, batch_size: int | None = None, log=note,
             on_record: Callable[[Record], None] = lambda record: None) -> list[Record]:
    """Every item of `work`, in its order; a failure becomes that item's error record.
    `batch_size` forces the batch size (1: one at a time); None sizes batches from the free memory."""
    _check_batch_size(batch_size)
    size = batch_size or work.memory_batch_size()
    log(f"reference: {len(work.items)} {work.noun} in batches of up to {size}")
    return work.run(work.batches(size), log=log, on_record=on_record)


def run_reference(runner: TransformersRunner, suite: dict, *, top_logprobs: int, log=note,
                  batch_size: int | None = None) -> tuple[list[Generation], list[PassageScore]]:
    """Every prompt and passage of the suite, in suite order."""
    return (run_work(generation_work(runner, suite["prompts"], top_logprobs=top_logprobs), log=log,
                     batch_size=batch_size),
            run_work(passage_work(runner, suite["passages"]), log=log, batch_size=batch_size))


def how_it_ran(processes: int, threads: int, batch_size: int | None) -> str:
    """Provenance's line on what decides the last bits of a reference's logprobs besides the
    device: how many processes, torch threads each, and how batches were sized."""
    sized = f"batches of up to {batch_size} (--batch-size)" if batch_size else "batches sized from free memory"
    each = " each" if processes > 1 else ""
    return (f"transformers: {processes} process{'es' if processes > 1 else ''}, {threads} torch "
            f"thread{'s' if threads > 1 else ''}{each}, {sized}")


def _first_names(names: list[str], shown: int = 4) -> str:
    """A map over 80 decoder layers stays one readable line: the first few names, then "..."."""
    return ", ".join(names) if len(names) <= shown else ", ".join(names[:shown - 1]) + ", ..."


def device_map_note(placement: Placement, device_map: dict | None) -> str:
    """Which of the model's modules each device of a device map holds."""
    held: dict[str, list[str]] = {}
    for module, device in (device_map or {"": "cpu"}).items():
        held.setdefault(device_name(device), []).append(module or "the whole model")
    where = "; ".join(f"{device}: {len(modules)} module{'s' if len(modules) > 1 else ''} ({_first_names(modules)})"
                      for device, modules in held.items())
    limits = f", max memory {placement.max_memory}" if placement.max_memory else ""
    folder = f", offload folder {placement.offload_folder}" if placement.offload_folder else ""
    return f"device map {placement.device_map}{limits}{folder}: {where}"


class TransformersBackend(Backend):
    """The reference: the model in transformers on the CPU or a GPU, batched greedy decoding with
    the suite's stop ids. With `setup.options["placement"]` asking for several processes, the
    work goes to that many copies of the model (llm_parity.processes)."""

    name = "transformers"
    label = "transformers"

    def __init__(self, runner: TransformersRunner, max_model_len: int, log, placement: Placement):
        self.runner, self._max_model_len, self._log, self.placement = runner, max_model_len, log, placement

    @classmethod
    def open(cls, setup: SideSetup) -> Backend:
        placement = setup.options.get("placement", Placement())
        if placement.processes > 1:
            from llm_parity.processes import ProcessesBackend

            return ProcessesBackend.open(setup)
        profile = setup.profile
        setup.log(f"reference: loading {setup.model_dir} ({profile.dtype}, {setup.device})")
        runner = TransformersRunner(setup.model_dir, dtype=profile.dtype, device=setup.device,
                                    stop_ids=setup.suite["stop_ids"],
                                    trust_remote_code=profile.model.get("trust_remote_code", False),
                                    placement=placement)
        # The target's limit: prompts it could not serve are not run here either.
        return cls(runner, profile.serve["max_model_len"], setup.log, placement)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def _run(self, work: Work, on_record: Callable[[Record], None]) -> None:
        run_work(work, batch_size=self.placement.batch_size, log=self._log, on_record=on_record)

    def generate(self, prompts: list[dict], *, top_logprobs: int, on_record: Callable[[Generation], None]) -> None:
        self._run(generation_work(self.runner, prompts, top_logprobs=top_logprobs), on_record)

    def score(self, passages: list[dict], *, on_record: Callable[[PassageScore], None]) -> None:
        self._run(passage_work(self.runner, passages), on_record)

    def score_answers(self, answers: list[dict], *, top_logprobs: int,
                      on_record: Callable[[ForcedScore], None]) -> None:
        self._run(answer_work(self.runner, answers, top_logprobs=top_logprobs), on_record)

    def describe(self) -> dict:
        notes = [how_it_ran(1, self.runner.torch.get_num_threads(), self.placement.batch_size)]
        if self.placement.device_map:
            notes.append(device_map_note(self.placement, self.runner.device_map))
        devices = {device_name(device): None for device in (self.runner.device_map or {}).values()}
        return {"device": ", ".join(devices) or self.runner.device, "server": None, "notes": notes}

    def close(self) -> None:
        self.runner.__exit__()
