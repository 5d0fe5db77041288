"""Fault matrix rows that need the real vLLM server: each fault is real (a killed process, a
taken port, a signal, a fault-injecting proxy in front of the real server)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from llm_parity import PROJECT_ROOT, cli, pipeline
from llm_parity.compare import compare_runs
from llm_parity.download import ModelOrigin
from llm_parity.profiles import load_profile
from llm_parity.records import Generation, decoding_of, generations_doc, perplexity_doc
from llm_parity.results import ResultFileError, RunDir, read_json
from llm_parity.serve import ServerError, VllmServer, free_port, spec_from_profile
from llm_parity.suite import load_suite_source, render_suite
from llm_parity.target import VllmHttpClient, query_generations
from llm_parity.record_files import RecordJournal, iter_records, read_records

pytestmark = pytest.mark.integration
API_KEY = "llm-parity-test-key-0f1e2d3c"
KILL_SUITE_SIZE = 120


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (e.g. a server's unique --port)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def wait_gone(marker: str, timeout_s: float = 40) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    return processes_with(marker)


def start_task(args: list[str], results: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LLM_PARITY_RESULTS": str(results), **(env or {})})


def finished_records(journal: Path) -> int:
    """How many whole records a side's generations file holds now (one being written is not counted)."""
    try:
        return sum(1 for _ in iter_records(journal, "generations", keep_cut_off=True)[1])
    except ResultFileError:  # not there yet
        return 0


def wait_for_records(journal: Path, count: int, timeout_s: float = 600) -> None:
    """Until a side's generations file holds `count` finished records."""
    deadline = time.monotonic() + timeout_s
    while finished_records(journal) < count:
        assert time.monotonic() < deadline, f"{journal}: fewer than {count} records after {timeout_s} s"
        time.sleep(0.05)


def read_until(process: subprocess.Popen, text: str, timeout_s: float = 600) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    pytest.fail(f"never saw {text!r}; output:\n{''.join(lines[-30:])}")


def test_server_that_never_becomes_healthy_is_bounded_and_leaves_nothing(tiny_model_dir, demo_profile, tmp_path):
    """Row 1."""
    spec = spec_from_profile(demo_profile, tiny_model_dir, port=free_port("127.0.0.1"))
    server = VllmServer(spec, log_path=tmp_path / "server.log", cache_dir=tmp_path / "cache", health_timeout_s=4)
    started = time.monotonic()
    with pytest.raises(ServerError, match="not healthy after 4 s") as failed:
        server.start()
    assert time.monotonic() - started < 40
    assert "last lines" in str(failed.value)
    assert wait_gone(f"--port {spec.port}") == []


def test_port_in_use_is_refused_before_loading_anything(tiny_model_dir, demo_profile, tmp_path):
    """Row 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = VllmServer(spec_from_profile(demo_profile, tiny_model_dir, port=port), log_path=tmp_path / "s.log",
                            cache_dir=tmp_path / "cache")
        started = time.monotonic()
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
        assert time.monotonic() - started < 2 and server.process is None


def test_sigterm_during_serve_ends_the_whole_process_group(tmp_path):
    """Row 4, during serve."""
    port = free_port("127.0.0.1")
    task = start_task(["target", "--profile", "tiny-llama", "--run", "term", "--port", str(port)], tmp_path)
    read_until(task, "serve: starting")
    deadline = time.monotonic() + 60
    while not processes_with(f"--port {port}") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    task.send_signal(signal.SIGTERM)
    assert task.wait(timeout=60) == 130
    assert wait_gone(f"--port {port}") == []
    generations = read_records(RunDir(tmp_path / "term").generations("target"), "generations")
    assert all(record["error"].startswith("not run") for record in generations["records"])


def test_sigint_during_query_keeps_what_finished_and_resume_completes_the_rest(tmp_path, vllm_server, capsys):
    """Rows 2 and 4: interrupted mid-suite, what finished is kept, --resume queries only the rest."""
    port = free_port("127.0.0.1")
    task = start_task(["target", "--profile", "tiny-llama", "--run", "int", "--port", str(port), "--max-num-seqs", "1"],
                      tmp_path)
    wait_for_records(RunDir(tmp_path / "int").generations("target"), 2)
    task.send_signal(signal.SIGINT)
    output = task.communicate(timeout=60)[0]
    assert task.returncode == 130, output
    assert "interrupted" in output
    assert wait_gone(f"--port {port}") == []
    run = RunDir(tmp_path / "int")
    first = read_records(run.generations("target"), "generations")["records"]
    finished = [r for r in first if not r["error"]]
    assert 2 <= len(finished) < len(first)
    assert all(r["error"].startswith("not run") for r in first if r["error"])

    capsys.readouterr()
    assert cli.target(profile="tiny-llama", run="int", results=str(tmp_path), resume=True, server_url=vllm_server.url) == 0
    log = capsys.readouterr().err
    assert f"resume: keeping {len(finished)} prompts" in log
    rest = len(first) - len(finished)
    assert f"target: generate {rest}/{rest} prompts (100.0%)" in log
    second = read_records(run.generations("target"), "generations")["records"]
    assert [r["id"] for r in second] == [r["id"] for r in first] and not any(r["error"] for r in second)
    assert [r for r in second if r["id"] in {f["id"] for f in finished}] == finished


@pytest.mark.parametrize("side", ["target", "reference"])
def test_a_side_killed_outright_mid_suite_loses_no_finished_prompt_and_resume_completes_the_rest(side, tmp_path,
                                                                                                vllm_server):
    """SIGKILL (no handler runs) after three records: each is already in the file. The target
    queries one prompt at a time, the reference runs batches of one, so records come one by one.
    The suite is long enough that the kill lands mid-suite even when a busy machine wakes the
    watcher late (the tiny model answers 14 prompts in well under a second)."""
    suite_file = tmp_path / "many.jsonl"
    suite_file.write_text("".join(json.dumps({"id": f"count-{n}", "messages": [
        {"role": "user", "content": f"{n}부터 {n + 5}까지 세어 주세요."}]}, ensure_ascii=False) + "\n" for n in range(KILL_SUITE_SIZE)))
    one_by_one = {"target": ["--server-url", vllm_server.url, "--max-num-seqs", "1"], "reference": ["--batch-size", "1"]}
    task = start_task([side, "--profile", "tiny-llama", "--run", "kill", "--suite", str(suite_file), *one_by_one[side]],
                      tmp_path)
    journal = RunDir(tmp_path / "kill").generations(side)
    wait_for_records(journal, 3)
    os.kill(task.pid, signal.SIGKILL)
    task.wait(timeout=30)
    finished = read_records(journal, "generations", keep_cut_off=True)["records"]
    suite_ids = [p["id"] for p in read_json(RunDir(tmp_path / "kill").suite, "suite")["prompts"]]
    assert 3 <= len(finished) < len(suite_ids) and not any(r["error"] for r in finished)

    again = {"target": {"server_url": vllm_server.url}, "reference": {}}
    assert getattr(cli, side)(profile="tiny-llama", run="kill", results=str(tmp_path), resume=True, **again[side]) == 0
    completed = read_records(journal, "generations")["records"]
    assert [r["id"] for r in completed] == suite_ids and not any(r["error"] for r in completed)
    assert [r for r in completed if r["id"] in {f["id"] for f in finished}] == finished


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir, demo_profile, tmp_path_factory):
    """A second real server, started with an API key, for the rows that kill it."""
    folder = tmp_path_factory.mktemp("keyed")
    spec = spec_from_profile(demo_profile, tiny_model_dir, api_key=API_KEY, port=free_port("127.0.0.1"))
    with VllmServer(spec, log_path=folder / "server.log", cache_dir=Path(".cache"), health_timeout_s=900) as server:
        yield server


def test_api_key_is_required_and_sent_and_never_written(keyed_server, tiny_model_dir, demo_profile, tmp_path, monkeypatch):
    """Rows 11 and 12."""
    payload = {"model": keyed_server.spec.served_name, "prompt": [128000], "max_tokens": 1}
    assert requests.post(f"{keyed_server.url}/v1/completions", json=payload, timeout=30).status_code == 401
    monkeypatch.setenv("HF_TOKEN", "hf_neverWrittenAnywhere42")
    run = RunDir(tmp_path / "keyed")
    suite, manifest = pipeline.prepare(run, demo_profile, tiny_model_dir, ModelOrigin("local", "tiny"))
    suite = {**suite, "prompts": suite["prompts"][:3]}
    errors = pipeline.target_side(run, demo_profile, tiny_model_dir, suite, manifest, running=keyed_server,
                                  cache_dir=Path(".cache"))
    assert errors == 0
    for path in [*run.root.rglob("*"), keyed_server.log_path]:
        if path.is_file():
            data = path.read_bytes()
            assert API_KEY.encode() not in data and b"hf_neverWrittenAnywhere42" not in data, path


def test_server_killed_mid_suite_keeps_finished_prompts_and_records_the_rest(keyed_server, tiny_model_dir, demo_profile, tmp_path,
                                                                           monkeypatch):
    """Row 2 with a real kill: the server's process group dies after the second answer. Runs last in
    this module: it ends the keyed server."""
    run = RunDir(tmp_path / "killed")
    suite, manifest = pipeline.prepare(run, demo_profile, tiny_model_dir, ModelOrigin("local", "tiny"))
    profile = demo_profile.with_serve(max_num_seqs=1)
    add = RecordJournal.add

    def add_then_kill_after_the_second(journal, record):
        add(journal, record)
        if journal.kind == "generations" and finished_records(journal.path) == 2:
            os.killpg(keyed_server.process.pid, signal.SIGKILL)

    monkeypatch.setattr(RecordJournal, "add", add_then_kill_after_the_second)
    spec = keyed_server.spec
    keyed_server.spec = spec.__class__(**{**spec.__dict__, "max_num_seqs": 1})
    started = time.monotonic()
    errors = pipeline.target_side(run, profile, tiny_model_dir, suite, manifest, running=keyed_server,
                                  cache_dir=Path(".cache"), log=lambda message: None)
    assert time.monotonic() - started < 120
    records = read_records(run.generations("target"), "generations")["records"]
    finished = sum(1 for r in records if not r["error"])
    assert 2 <= finished <= 3  # the request already in flight at the kill may still have been answered
    assert errors == len(records) - finished + len(suite["passages"])
    assert "exited with code -9" in records[-1]["error"]  # later prompts fail at once, naming the cause


class FaultProxy(ThreadingHTTPServer):
    """Forwards to the real server, after `fail_first` 503 answers, or after `delay_s`."""

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream, self.fail_first, self.delay_s, self.requests = upstream, 0, 0.0, 0
        self.refuse_chat = False  # answer the chat endpoint as a server without a chat template does


class ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        proxy = self.server
        proxy.requests += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if proxy.fail_first > 0:
            proxy.fail_first -= 1
            return self._answer(503, b'{"error": "injected"}')
        if proxy.refuse_chat and self.path == "/v1/chat/completions":
            return self._answer(400, b'{"error": {"message": "this model has no chat template", "code": 400}}')
        time.sleep(proxy.delay_s)
        upstream = requests.post(proxy.upstream + self.path, data=body, headers={"Content-Type": "application/json"}, timeout=60)
        self._answer(upstream.status_code, upstream.content)


@pytest.fixture
def proxy(vllm_server):
    server = FaultProxy(vllm_server.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def one_prompt(tiny_model_dir):
    return render_suite({"name": "one", "prompts": [{"id": "p", "kind": "t", "messages": [{"role": "user", "content": "안녕"}]}],
                         "passages": []}, tiny_model_dir, default_max_tokens=4)["prompts"][0]


def test_5xx_is_retried_4xx_recorded_timeouts_bounded(proxy, vllm_server, tiny_model_dir):
    """Row 10."""
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    prompt = one_prompt(tiny_model_dir)
    proxy.fail_first = 2
    record = VllmHttpClient(url, vllm_server.spec.served_name, timeout_s=30).generate(prompt, top_logprobs=2)
    assert record.output_ids and proxy.requests == 4  # 2 injected 503s, then completion + chat

    proxy.requests, done = 0, {}
    query_generations(VllmHttpClient(url, "no-such-model", timeout_s=30), [prompt], top_logprobs=2, concurrency=1,
                      on_record=lambda record: done.__setitem__(record.id, record))
    assert "HTTP 404" in done["p"].error and proxy.requests == 1  # recorded, not retried

    proxy.requests, proxy.delay_s, done = 0, 3.0, {}
    started = time.monotonic()
    query_generations(VllmHttpClient(url, vllm_server.spec.served_name, timeout_s=1, retries=1), [prompt],
                      top_logprobs=2, concurrency=1, on_record=lambda record: done.__setitem__(record.id, record))
    assert "timed out" in done["p"].error.lower() and time.monotonic() - started < 15


def test_a_server_that_cannot_render_the_chat_template_leaves_the_check_not_checked(proxy, vllm_server, tiny_model_dir):
    """The chat-template check used to pass when the server gave no ids to check."""
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    prompt = one_prompt(tiny_model_dir)
    proxy.refuse_chat = True
    with VllmHttpClient(url, vllm_server.spec.served_name, timeout_s=30) as client:
        record = client.generate(prompt, top_logprobs=2)
    assert record.output_ids and record.error is None  # the generation itself stands
    assert record.chat_prompt_ids is None and "chat_prompt_ids" not in record.to_json()
    reference = Generation.from_json({**record.to_json()})
    suite = {"sha256": "a" * 64, "stop_ids": [], "prompts": [prompt]}
    docs = {side: generations_doc(side, suite, "b" * 64, decoding_of({"top_logprobs": 2}, "float32"), [one])
            for side, one in (("target", record), ("reference", reference))}
    scores = {side: perplexity_doc(side, suite, "b" * 64, []) for side in docs}
    result = compare_runs(suite=suite, target=docs["target"], reference=docs["reference"], target_ppl=scores["target"],
                          reference_ppl=scores["reference"], thresholds=load_profile("tiny-llama").thresholds("float32"),
                          profile="tiny-llama")
    chat = next(check for check in result["checks"] if check["name"] == "chat_template")
    assert chat["status"] == "not_checked" and chat["passed"] is not True


def test_prompts_that_cannot_run_are_recorded_and_the_run_goes_on(vllm_server, tiny_model_dir, demo_profile, tmp_path):
    """Row 9: longer than max-model-len, empty, not valid Unicode."""
    source = {"schema": "llm-parity/suite-source/v1", "name": "faulty", "prompts": [
        {"id": "fine", "kind": "t", "messages": [{"role": "user", "content": "안녕하세요"}]},
        {"id": "too-long", "kind": "t", "messages": [{"role": "user", "content": "가나다라 " * 900}]},
        {"id": "empty", "kind": "t", "messages": [{"role": "user", "content": ""}]},
        {"id": "bad-unicode", "kind": "t", "messages": [{"role": "user", "content": "broken \ud800 text"}]},
    ], "passages": [{"id": "short", "text": "짧은 글입니다."}]}
    suite_path = tmp_path / "faulty.json"
    suite_path.write_text(json.dumps(source))
    run = RunDir(tmp_path / "faulty")
    suite, manifest = pipeline.prepare(run, demo_profile, tiny_model_dir, ModelOrigin("local", "tiny"),
                                       suite_source=load_suite_source(suite_path))
    assert pipeline.target_side(run, demo_profile, tiny_model_dir, suite, manifest, running=vllm_server,
                                cache_dir=Path(".cache")) == 2
    assert pipeline.reference_side(run, demo_profile, tiny_model_dir, suite, manifest) == 2
    for side in ("target", "reference"):
        records = {r["id"]: r for r in read_records(run.generations(side), "generations")["records"]}
        assert records["fine"]["error"] is None and records["empty"]["error"] is None
        assert "exceeds max-model-len 1024" in records["too-long"]["error"]
        assert "could not render" in records["bad-unicode"]["error"]
    result = pipeline.compare(run, demo_profile).result
    statuses = {p["id"]: p["status"] for p in result["prompts"]}
    assert statuses == {"fine": "identical", "too-long": "error", "empty": "identical", "bad-unicode": "error"}


def test_load_at_max_num_seqs_loses_and_duplicates_nothing(vllm_server, demo_run):
    """Row 14: the suite at concurrency 16, several rounds, against the real server."""
    suite = read_json(demo_run.suite, "suite")
    client = VllmHttpClient(vllm_server.url, vllm_server.spec.served_name, timeout_s=120)
    prompts = [dict(p, id=f"{p['id']}-{copy}") for copy in range(3) for p in suite["prompts"]]
    rounds = []
    for _ in range(3):
        done = {}
        query_generations(client, prompts, top_logprobs=5, concurrency=16,
                          on_record=lambda record: done.__setitem__(record.id, record), log=lambda m: None)
        assert sorted(done) == sorted(p["id"] for p in prompts)
        assert not any(r.error for r in done.values())
        rounds.append({key: r.output_ids for key, r in done.items()})
    assert rounds[0] == rounds[1] == rounds[2]
