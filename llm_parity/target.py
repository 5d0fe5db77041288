"""The target side: the suite through vLLM's OpenAI-compatible HTTP API.

`VllmHttpBackend` is the target's backend (llm_parity.backend); `VllmHttpClient` builds request
payloads and parses responses into the records the reference side produces too
(llm_parity.records). Batching happens on the server, concurrency up to max-num-seqs here."""
from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from llm_parity.backend import Backend, SideSetup
from llm_parity.http import http_session
from llm_parity.progress import note
from llm_parity.provenance import VLLM_CPU_NOTE, numeric_env, serving_device
from llm_parity.records import ForcedScore, Generation, PassageScore, Record, sort_top_k
from llm_parity.serve import ServerSpec, VllmServer, is_vllm_cpu, serving

TOKEN_ID_PREFIX = "token_id:"
# The serve flags under which prompt logprobs are the whole vocabulary's raw logits.
LOGITS_SERVE_ARGS = ("--logprobs-mode", "raw_logits", "--max-logprobs", "-1")


class VllmHttpClient:
    """Greedy generations and prompt logprobs from a running vLLM server.

    Retries 5xx answers and dropped connections with backoff; a 4xx is recorded, not retried.
    Use it as a context manager: its keep-alive connections are closed on exit, so they do not
    outlive the server and hold its port."""

    def __init__(self, base_url: str, model: str, *, timeout_s: float = 120, api_key: str | None = None,
                 retries: int = 3, server_gone: Callable[[], str | None] = lambda: None):
        self.server_gone = server_gone
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.session = http_session(self.base_url)
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=0.5,
                      status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=64))
        self.session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=64))
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> "VllmHttpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.session.close()

    def _post(self, path: str, payload: dict) -> dict:
        gone = self.server_gone()
        if gone:  # fail at once instead of retrying a server that has exited
            raise requests.ConnectionError(gone)
        response = self.session.post(f"{self.base_url}{path}", json=payload, timeout=self.timeout_s)
        if response.status_code != 200:
            raise requests.HTTPError(f"HTTP {response.status_code} from {path}: {response.text[:300]}", response=response)
        return response.json()

    def server_info(self) -> dict:
        """vLLM version and the served model's max_model_len, for provenance."""
        info = {"version": None, "max_model_len": None}
        try:
            info["version"] = self.session.get(f"{self.base_url}/version", timeout=10).json().get("version")
            models = self.session.get(f"{self.base_url}/v1/models", timeout=10).json()["data"]
            info["max_model_len"] = next((m.get("max_model_len") for m in models if m["id"] == self.model), None)
        except (requests.RequestException, ValueError, KeyError):
            pass
        return info

    def generate(self, prompt: dict, *, top_logprobs: int, stop_ids: list[int] | None = None) -> Generation:
        """One suite prompt, greedy, from its rendered ids (completions endpoint). With `stop_ids`
        (the suite's), generation stops on exactly those ids and not on the model's own EOS."""
        stopping = {"ignore_eos": True, "stop_token_ids": list(stop_ids)} if stop_ids is not None else {}
        body = self._post("/v1/completions", {
            "model": self.model,
            "prompt": prompt["prompt_ids"],
            "max_tokens": prompt["max_tokens"],
            "temperature": 0,
            "logprobs": top_logprobs,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "skip_special_tokens": True,
            **stopping,
        })
        choice = body["choices"][0]
        logprobs = choice["logprobs"]
        return Generation(
            id=prompt["id"],
            prompt_ids=list(prompt["prompt_ids"]),
            chat_prompt_ids=self.chat_prompt_ids(prompt["messages"]),
            output_ids=list(choice.get("token_ids") or [_token_id(token) for token in logprobs["tokens"]]),
            text=choice["text"],
            logprobs=[float(value) for value in logprobs["token_logprobs"]],
            top_logprobs=[
                sort_top_k([(_token_id(token), value) for token, value in (entry or {}).items()], top_logprobs)
                for entry in logprobs["top_logprobs"]
            ],
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=body["usage"]["prompt_tokens"],
            completion_tokens=body["usage"]["completion_tokens"],
        )

    def chat_prompt_ids(self, messages: list[dict]) -> list[int] | None:
        """The prompt ids the server's own chat template gives the same messages; None when the
        server cannot render them (no chat template: it refuses the request) or does not say,
        so the chat-template check reads "not checked" rather than a pass."""
        try:
            body = self._post("/v1/chat/completions", {
                "model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0,
                "return_token_ids": True,
            })
        except requests.HTTPError as err:
            if err.response is not None and 400 <= err.response.status_code < 500:
                return None
            raise
        ids = body.get("prompt_token_ids") or body["choices"][0].get("prompt_token_ids")
        return list(ids) if ids is not None else None

    def prompt_logprobs(self, ids: list[int], top_logprobs: int) -> list[dict]:
        """For each token of `ids` after the first, {token id: logprob} of the `top_logprobs` best
        tokens there and of the token itself, in one request (vLLM's `prompt_logprobs`)."""
        body = self._post("/v1/completions", {
            "model": self.model, "prompt": list(ids), "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": top_logprobs,
        })
        entries = body["choices"][0].get("prompt_logprobs") or body.get("prompt_logprobs")
        return [{int(token): float(value["logprob"]) for token, value in entry.items()} for entry in entries[1:]]

    def prompt_logits(self, ids: list[int], vocab_size: int) -> list[list[float]]:
        """The full-vocabulary logits before each token of `ids` after the first, one row of
        `vocab_size` per position, in one request. Needs a server started with `--logprobs-mode
        raw_logits --max-logprobs -1` (LOGITS_SERVE_ARGS): its prompt logprobs are then raw logits."""
        rows = []
        for entry in self.prompt_logprobs(ids, -1):
            if len(entry) != vocab_size:
                raise ValueError(f"the server gave {len(entry)} logits at a position, not the vocabulary's {vocab_size}")
            rows.append([entry[token] for token in range(vocab_size)])
        if rows and _normalized(rows[0]):
            raise ValueError("the server returned log-probabilities, not raw logits: start it with "
                             + " ".join(LOGITS_SERVE_ARGS))
        return rows

    def perplexity(self, passage: dict) -> PassageScore:
        """Prompt logprobs of a passage in one request."""
        entries = self.prompt_logprobs(passage["ids"], 1)
        return PassageScore(id=passage["id"], logprobs=[entry[token] for token, entry in zip(passage["ids"][1:], entries)])

    def score_answer(self, answer: dict, *, top_logprobs: int) -> ForcedScore:
        """The other side's answer scored after its prompt, in one request: the logprob of each
        answer token and the top-k at its position."""
        entries = self.prompt_logprobs(answer["prompt_ids"] + answer["answer_ids"], top_logprobs)
        along = entries[len(answer["prompt_ids"]) - 1:]
        return ForcedScore(id=answer["id"], answer_ids=list(answer["answer_ids"]),
                           logprobs=[entry[token] for token, entry in zip(answer["answer_ids"], along)],
                           top_logprobs=[sort_top_k(entry.items(), top_logprobs) for entry in along])


def _normalized(row: list[float]) -> bool:
    """Whether a row is log-probabilities (its probabilities sum to one), not raw logits."""
    top = max(row)
    return abs(top + math.log(sum(math.exp(x - top) for x in row))) < 1e-3


def _token_id(token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise ValueError(f"expected '{TOKEN_ID_PREFIX}N' tokens (return_tokens_as_token_ids), got {token!r}")
    return int(token[len(TOKEN_ID_PREFIX):])


def run_concurrently(items: list[dict], work: Callable[[dict], Record], on_error: Callable[[dict, str], Record],
                     *, concurrency: int, label: str, on_record: Callable[[Record], None], log=note) -> None:
    """Run `work` on every item with up to `concurrency` in flight; each record goes to
    `on_record` as soon as it finishes, so an interrupted run keeps what finished. A failed
    request becomes that item's error record, and a line; progress is the caller's."""

    def guarded(item: dict) -> Record:
        try:
            return work(item)
        except (requests.RequestException, ValueError, KeyError, TypeError, IndexError) as err:
            return on_error(item, f"{type(err).__name__}: {err}")

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {pool.submit(guarded, item): item for item in items}
        for future in as_completed(futures):
            record = future.result()
            on_record(record)
            if record.error:
                log(f"{label}: {record.id}: {record.error}")
    finally:
        # On an interrupt, do not wait for requests still in flight.
        pool.shutdown(wait=False, cancel_futures=True)


def query_generations(client: VllmHttpClient, prompts: list[dict], *, top_logprobs: int, concurrency: int,
                      on_record: Callable[[Generation], None], stop_ids: list[int] | None = None, log=note) -> None:
    run_concurrently(prompts, lambda prompt: client.generate(prompt, top_logprobs=top_logprobs, stop_ids=stop_ids),
                     Generation.failed, concurrency=concurrency, label="query", on_record=on_record, log=log)


def query_perplexity(client: VllmHttpClient, passages: list[dict], *, concurrency: int,
                     on_record: Callable[[PassageScore], None], log=note) -> None:
    run_concurrently(passages, client.perplexity, PassageScore.failed, concurrency=concurrency,
                     label="query perplexity", on_record=on_record, log=log)


def query_answer_scores(client: VllmHttpClient, answers: list[dict], *, top_logprobs: int, concurrency: int,
                        on_record: Callable[[ForcedScore], None], log=note) -> None:
    run_concurrently(answers, lambda answer: client.score_answer(answer, top_logprobs=top_logprobs),
                     ForcedScore.failed, concurrency=concurrency, label="query teacher-forced", on_record=on_record,
                     log=log)


class VllmHttpBackend(Backend):
    """The target: a `vllm serve` started with the profile's flags (or one already running),
    queried over its OpenAI-compatible API with up to max-num-seqs requests in flight, or
    `setup.options["concurrency"]` (a matrix variant's)."""

    name = "vllm-http"
    label = "vLLM (HTTP)"

    def __init__(self, stack: ExitStack, client: VllmHttpClient, server: VllmServer | None, spec: ServerSpec,
                 url: str, stop_ids: list[int], server_env: dict | None, log, concurrency: int):
        self._stack, self.client, self.server, self.spec, self.url = stack, client, server, spec, url
        self._stop_ids, self._server_env, self._log, self.concurrency = stop_ids, server_env, log, concurrency
        self._info = client.server_info()

    @classmethod
    def open(cls, setup: SideSetup) -> "VllmHttpBackend":
        stack = ExitStack()
        try:
            url, server, spec = stack.enter_context(serving(
                setup.profile, setup.model_dir, log_path=setup.run.server_log, cache_dir=setup.cache_dir,
                server_url=setup.server_url, running=setup.running, api_key=setup.api_key, log=setup.log))
            client = stack.enter_context(VllmHttpClient(
                url, spec.served_name, timeout_s=setup.profile.decoding.get("request_timeout_s", 120),
                api_key=setup.api_key or spec.api_key, server_gone=server.exited if server else lambda: None))
            inside = numeric_env(server.group_environment()) if server else None
            concurrency = setup.options.get("concurrency") or spec.max_num_seqs
            return cls(stack, client, server, spec, url, setup.suite["stop_ids"], inside, setup.log, concurrency)
        except BaseException:
            stack.close()
            raise

    @property
    def max_model_len(self) -> int:
        return self.spec.max_model_len

    def generate(self, prompts: list[dict], *, top_logprobs: int, on_record: Callable[[Generation], None]) -> None:
        query_generations(self.client, prompts, top_logprobs=top_logprobs, concurrency=self.concurrency,
                          on_record=on_record, stop_ids=self._stop_ids, log=self._log)

    def score(self, passages: list[dict], *, on_record: Callable[[PassageScore], None]) -> None:
        query_perplexity(self.client, passages, concurrency=self.concurrency, on_record=on_record, log=self._log)

    def score_answers(self, answers: list[dict], *, top_logprobs: int,
                      on_record: Callable[[ForcedScore], None]) -> None:
        query_answer_scores(self.client, answers, top_logprobs=top_logprobs, concurrency=self.spec.max_num_seqs,
                            on_record=on_record, log=self._log)

    def describe(self) -> dict:
        ours = self.server is not None
        return {"device": serving_device() if ours else "server",
                "notes": [VLLM_CPU_NOTE] if ours and is_vllm_cpu() else [],
                "server": {"url": self.url, "argv": self.server.argv if ours else None,
                           "graph_mode": self.spec.graph_mode if ours else "unknown",
                           "tensor_parallel_size": self.spec.tensor_parallel_size, "env": self._server_env,
                           "env_set": self.spec.env, "concurrency": self.concurrency, **self._info}}

    def close(self) -> None:
        self._stack.close()
