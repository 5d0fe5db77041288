"""The serving benchmark: streamed greedy completions against a running vLLM server at a sweep of
concurrencies, measured the way `vllm bench serve` measures them.

Definitions (those of vLLM's benchmarks/serve.py and its completions request function):
- a request starts when it is sent; TTFT is the time to the first streamed message that carries
  a choice (even one with empty text), ITL the gaps between successive such messages, and E2E
  latency the time to the last of them;
- TPOT of a request is (E2E - TTFT) / (output tokens - 1), only for requests with more than one
  output token; output tokens are the server's usage count;
- statistics are over successful requests only; percentiles interpolate linearly (numpy's default);
- throughputs divide the successful requests' counts by the wall time from the first send of a
  level to the end of its last request.

Per-request records are kept apart from their aggregation (`summarize`, a pure function), and a
failed request is a record with its error, never an exception."""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import cycle

import aiohttp

from llm_parity.progress import note
from llm_parity.results import schema_tag
from llm_parity.stats import percentile

ENDPOINT = "/v1/completions"
DEFAULT_CONCURRENCIES = (1, 2, 4, 8, 16)
MIN_REQUESTS_PER_LEVEL = 4
REQUEST_TIMEOUT_S = 600
PERCENTILES = {"median": 50, "p90": 90, "p99": 99}


@dataclass
class RequestRecord:
    """One measured request. Times are in seconds; `start_s` counts from the start of its level."""

    start_s: float
    prompt_tokens: int
    success: bool = False
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    latency_s: float | None = None
    output_tokens: int = 0
    error: str | None = None


def requests_at(concurrency: int, requests_per_level: int | None = None) -> int:
    """Measured requests at one concurrency: the fixed number if given, else 2 x N, at least 4."""
    if requests_per_level is not None:
        return requests_per_level
    return max(MIN_REQUESTS_PER_LEVEL, 2 * concurrency)


def total_requests(concurrencies: tuple[int, ...], requests_per_level: int | None = None) -> int:
    """Requests a sweep sends, warm-ups included: how many distinct prompts avoid any reuse."""
    return sum(requests_at(n, requests_per_level) + 1 for n in concurrencies)


def suite_prompts(suite: dict) -> list[list[int]]:
    """The rendered prompt ids of a suite document (results/<run>/suite.json)."""
    return [list(prompt["prompt_ids"]) for prompt in suite["prompts"]]


def synthetic_prompts(count: int, input_len: int, *, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """`count` prompts of `input_len` token ids drawn uniformly from [0, vocab_size), seeded."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(input_len)] for _ in range(count)]


def _stats_ms(values_s: list[float]) -> dict:
    if not values_s:
        return {"mean": None, **{name: None for name in PERCENTILES}}
    values_ms = [value * 1000 for value in values_s]
    return {"mean": statistics.fmean(values_ms),
            **{name: percentile(values_ms, q) for name, q in PERCENTILES.items()}}


def summarize(records: list[RequestRecord], duration_s: float) -> dict:
    """Aggregate one level's records over its wall time `duration_s` (> 0); failures are counted
    and left out of every latency statistic and throughput."""
    done = [record for record in records if record.success]
    input_tokens = sum(record.prompt_tokens for record in done)
    output_tokens = sum(record.output_tokens for record in done)
    return {
        "requests": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration_s,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "request_throughput": len(done) / duration_s,
        "output_throughput": output_tokens / duration_s,
        "total_token_throughput": (input_tokens + output_tokens) / duration_s,
        "ttft_ms": _stats_ms([record.ttft_s for record in done]),
        "tpot_ms": _stats_ms([(record.latency_s - record.ttft_s) / (record.output_tokens - 1)
                              for record in done if record.output_tokens > 1]),
        "itl_ms": _stats_ms([gap for record in done for gap in record.itl_s]),
        "e2el_ms": _stats_ms([record.latency_s for record in done]),
    }


def _sse_data(line: bytes) -> str | None:
    """The payload of one server-sent-events line, or None for blank lines and comments."""
    text = line.decode("utf-8").strip()
    if not text.startswith("data:"):
        return None
    return text[len("data:"):].strip()


async def _stream_one(session: aiohttp.ClientSession, url: str, payload: dict, level_start: float) -> RequestRecord:
    """Send one streamed completion and time its messages; every failure ends up in the record."""
    sent = time.perf_counter()
    record = RequestRecord(start_s=sent - level_start, prompt_tokens=len(payload["prompt"]))
    last = sent
    try:
        async with session.post(url, json=payload) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return record
            async for line in response.content:
                arrived = time.perf_counter()
                data = _sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    break
                message = json.loads(data)
                if "error" in message:
                    record.error = f"server error in stream: {str(message['error'])[:300]}"
                    return record
                if message.get("choices"):
                    if record.ttft_s is None:
                        record.ttft_s = arrived - sent
                    else:
                        record.itl_s.append(arrived - last)
                    last = arrived
                if usage := message.get("usage"):
                    record.output_tokens = usage["completion_tokens"]
                    record.prompt_tokens = usage["prompt_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as err:
        record.error = f"{type(err).__name__}: {err}"
        return record
    if record.ttft_s is None:
        record.error = "the stream ended before any token arrived"
        return record
    record.latency_s = last - sent
    # A server that sends no usage: count the streamed messages instead.
    record.output_tokens = record.output_tokens or len(record.itl_s) + 1
    record.success = True
    return record


async def _run_level(session: aiohttp.ClientSession, url: str, payloads: list[dict],
                     concurrency: int) -> tuple[list[RequestRecord], float]:
    """All `payloads` with at most `concurrency` in flight; records in payload order, wall time."""
    records: list[RequestRecord | None] = [None] * len(payloads)
    queue = iter(enumerate(payloads))
    start = time.perf_counter()

    async def worker() -> None:
        for index, payload in queue:  # shared iterator: each worker takes the next payload
            records[index] = await _stream_one(session, url, payload, start)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(payloads)))))
    return records, time.perf_counter() - start


def _payload(model: str, prompt: list[int], output_len: int) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def _level_line(concurrency: int, summary: dict) -> str:
    return (f"bench: concurrency {concurrency}: {summary['completed']}/{summary['requests']} ok, "
            f"{summary['output_throughput']:.1f} output tok/s, "
            f"TTFT median {_fmt(summary['ttft_ms']['median'])} ms, TPOT median {_fmt(summary['tpot_ms']['median'])} ms")


async def _sweep(base_url: str, model: str, prompts: Iterator[list[int]], output_len: int,
                 concurrencies: tuple[int, ...], requests_per_level: int | None, api_key: str | None,
                 log) -> list[dict]:
    """Every level in turn over one connection pool: warm-up, measured requests, summary."""
    url = f"{base_url.rstrip('/')}{ENDPOINT}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    levels = []
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                                     connector=aiohttp.TCPConnector(limit=max(concurrencies))) as session:
        for concurrency in concurrencies:
            count = requests_at(concurrency, requests_per_level)
            warmup = await _stream_one(session, url, _payload(model, next(prompts), output_len), time.perf_counter())
            if not warmup.success:
                log(f"bench: concurrency {concurrency}: warm-up failed: {warmup.error}")
            log(f"bench: concurrency {concurrency}: {count} requests, {output_len} output tokens each")
            payloads = [_payload(model, next(prompts), output_len) for _ in range(count)]
            records, duration_s = await _run_level(session, url, payloads, concurrency)
            summary = summarize(records, duration_s)
            log(_level_line(concurrency, summary))
            levels.append({"concurrency": concurrency, "summary": summary,
                           "records": [asdict(record) for record in records]})
    return levels


def run_bench(base_url: str, model: str, *, prompts: list[list[int]], output_len: int,
              concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES, requests_per_level: int | None = None,
              api_key: str | None = None, log=note) -> dict:
    """Sweep `concurrencies` against the server at `base_url`; the bench document (schemas/bench).

    At each concurrency N: one warm-up request, then `requests_per_level` requests (default 2 x N,
    at least 4) with at most N in flight. Prompts are taken in order across the whole sweep,
    cycling when used up; `total_requests` distinct prompts keep the prefix cache out of it."""
    if not prompts or not all(prompts):
        raise ValueError("run_bench needs at least one prompt, and no empty prompt")
    counts = [output_len, *concurrencies, *([requests_per_level] if requests_per_level is not None else [])]
    if not concurrencies or min(counts) < 1:
        raise ValueError("give at least one concurrency; output_len, concurrencies and requests_per_level must be >= 1")
    levels = asyncio.run(_sweep(base_url, model, cycle(prompts), output_len, tuple(concurrencies),
                                requests_per_level, api_key, log))
    lengths = [len(prompt) for prompt in prompts]
    return {
        "schema": schema_tag("bench"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_url": base_url,
        "model": model,
        "settings": {
            "endpoint": ENDPOINT, "stream": True, "temperature": 0, "ignore_eos": True,
            "output_len": output_len, "concurrencies": list(concurrencies),
            "requests_per_level": requests_per_level, "warmup_requests": 1,
            "prompts": len(prompts), "input_len_min": min(lengths), "input_len_max": max(lengths),
        },
        "levels": levels,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _stats_cell(stats: dict) -> str:
    return " / ".join(_fmt(stats[name]) for name in ("mean", "median", "p90", "p99"))


def render_bench(doc: dict) -> str:
    """A Markdown table of a bench document, one row per concurrency (latencies in ms)."""
    settings = doc["settings"]
    lines = [
        (f"Serving benchmark of `{doc['model']}` at {doc['base_url']}: {settings['output_len']} output tokens "
         f"per request, {settings['input_len_min']}-{settings['input_len_max']} input tokens, greedy, streamed."),
        "",
        ("| concurrency | requests | failed | duration s | req/s | output tok/s | total tok/s "
         "| TTFT ms mean / median / p90 / p99 | TPOT ms mean / median / p90 / p99 "
         "| ITL ms mean / median / p90 / p99 | E2E ms mean / median / p90 / p99 |"),
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for level in doc["levels"]:
        s = level["summary"]
        lines.append(
            f"| {level['concurrency']} | {s['requests']} | {s['failed']} | {s['duration_s']:.2f} "
            f"| {s['request_throughput']:.2f} | {s['output_throughput']:.1f} | {s['total_token_throughput']:.1f} "
            f"| {_stats_cell(s['ttft_ms'])} | {_stats_cell(s['tpot_ms'])} | {_stats_cell(s['itl_ms'])} "
            f"| {_stats_cell(s['e2el_ms'])} |")
    return "\n".join(lines) + "\n"
