"""Start `vllm serve` with a profile's flags, wait until it is healthy, keep its log, and always
tear its whole process group down."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from llm_parity import PROJECT_ROOT, is_installed
from llm_parity.http import http_session
from llm_parity.progress import note

CPU_LAUNCHER = PROJECT_ROOT / "scripts" / "vllm_cpu.py"


class ServerError(RuntimeError):
    """The server could not be started or did not become healthy; the message says why."""


@dataclass(frozen=True)
class ServerSpec:
    """Everything `vllm serve` is started with. Built from a profile by `spec_from_profile`."""

    model_dir: Path
    served_name: str
    dtype: str
    max_model_len: int
    max_num_seqs: int
    host: str = "127.0.0.1"
    port: int = 0
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    trust_remote_code: bool = False
    load_format: str | None = None
    api_key: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    env: dict[str, str] = field(default_factory=dict)  # set for the server over ours (a matrix variant's)

    @property
    def graph_mode(self) -> str:
        return "eager" if self.enforce_eager else "graph"


def spec_from_profile(profile, model_dir: Path, **overrides) -> ServerSpec:
    serve = profile.serve
    values = dict(
        model_dir=Path(model_dir),
        served_name=profile.model.get("served_name", Path(model_dir).name),
        dtype=serve["dtype"],
        max_model_len=serve["max_model_len"],
        max_num_seqs=serve["max_num_seqs"],
        host=serve.get("host", "127.0.0.1"),
        port=serve["port"],
        tensor_parallel_size=serve["tensor_parallel_size"],
        enforce_eager=serve.get("enforce_eager", False),
        trust_remote_code=profile.model.get("trust_remote_code", False),
        extra_args=tuple(serve.get("extra_args", ())),
        env=dict(serve.get("env", {})),
    )
    values.update({key: value for key, value in overrides.items() if value is not None})
    return ServerSpec(**values)


def is_vllm_cpu() -> bool:
    """True when vLLM comes from the community `vllm-cpu` distribution (needs our launcher)."""
    return is_installed("vllm-cpu")


def launcher() -> list[str]:
    if is_vllm_cpu():
        return [sys.executable, str(CPU_LAUNCHER)]
    return [shutil.which("vllm") or "vllm"]


def vllm_command(spec: ServerSpec) -> list[str]:
    """The exact `vllm serve` command line for `spec` (the API key is passed by environment)."""
    argv = launcher() + [
        "serve", str(spec.model_dir),
        "--served-model-name", spec.served_name,
        "--dtype", spec.dtype,
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--host", spec.host,
        "--port", str(spec.port),
        "--tensor-parallel-size", str(spec.tensor_parallel_size),
    ]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    if spec.trust_remote_code:
        argv.append("--trust-remote-code")
    if spec.load_format:
        argv += ["--load-format", spec.load_format]
    return argv + list(spec.extra_args)


# The flags of vllm_command that say what the model computes and how it is batched, with the serve
# setting each one sets; the model's path, host, port and served name do not change a number.
_VALUE_FLAGS = {"--dtype": ("dtype", str), "--max-model-len": ("max_model_len", int),
                "--max-num-seqs": ("max_num_seqs", int), "--tensor-parallel-size": ("tensor_parallel_size", int)}
_SWITCHES = {"--enforce-eager": "enforce_eager"}
_IGNORED_VALUE_FLAGS = ("--served-model-name", "--host", "--port", "--load-format")
_IGNORED_SWITCHES = ("--trust-remote-code",)  # the profile's model settings say it


def serve_settings(argv: list[str]) -> dict:
    """The serve settings (profile "serve" keys) a recorded `vllm_command` line was started with:
    dtype, max_model_len, max_num_seqs, tensor_parallel_size, enforce_eager and extra_args, the
    flags vllm_command does not write itself."""
    if "serve" not in argv:
        raise ValueError(f"not a `vllm serve` command line: {' '.join(argv)}")
    rest = argv[argv.index("serve") + 2:]  # past "serve" and the model's path
    settings = {"enforce_eager": False, "extra_args": []}
    index = 0
    while index < len(rest):
        flag = rest[index]
        if flag in _VALUE_FLAGS and index + 1 < len(rest):
            name, kind = _VALUE_FLAGS[flag]
            settings[name] = kind(rest[index + 1])
            index += 2
        elif flag in _IGNORED_VALUE_FLAGS:
            index += 2
        elif flag in _SWITCHES:
            settings[_SWITCHES[flag]] = True
            index += 1
        elif flag in _IGNORED_SWITCHES:
            index += 1
        else:  # vllm_command writes the profile's extra_args last, as they were given
            settings["extra_args"] = rest[index:]
            break
    return settings


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    """Refuse a port that something listens on. SO_REUSEADDR, as vLLM's own server sets it, lets
    the check pass while the port only holds TIME_WAIT connections (a server that just stopped,
    such as the dummy check's) and still fails on a live listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ServerError(f"port {port} on {host} is already in use ({err.strerror}); "
                              "stop what uses it or choose another port (port 0 picks a free one)") from None


def processes_in_group(pgid: int) -> list[int]:
    """Pids of the live processes whose process group is `pgid` (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # after "pid (comm)": state, ppid, pgrp
            pids.append(int(stat.parent.name))
    return pids


def server_env(cache_dir: Path, api_key: str | None, rpc_dir: str, settings: dict[str, str] | None = None) -> dict:
    """The environment for the server: caches in a folder we own; vllm-cpu's CPU settings; then
    `settings` (the profile's serve env), which win over ours and the caller's."""
    env = dict(os.environ)
    for name, sub in (("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        env.setdefault(name, str(Path(cache_dir).resolve() / sub))
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    # vLLM's IPC sockets live here; a socket path must stay under 108 bytes, so not below cache_dir.
    env.setdefault("VLLM_RPC_BASE_PATH", rpc_dir)
    if is_vllm_cpu():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
    env.update(settings or {})
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


def group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the group `process` leads (started with start_new_session) is left."""
    process.poll()  # reap the leader, or its zombie keeps the group "alive"
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGINT to the whole process group `process` leads, then SIGKILL what is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10)):
        if not group_alive(process):
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while group_alive(process) and time.monotonic() < deadline:
            time.sleep(0.2)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


class VllmServer:
    """A running `vllm serve`; use as a context manager so the process group always ends.

    `url` is the OpenAI-compatible base URL (http://host:port)."""

    def __init__(self, spec: ServerSpec, *, log_path: Path, cache_dir: Path, health_timeout_s: float = 600):
        if spec.port == 0:
            spec = ServerSpec(**{**spec.__dict__, "port": free_port(spec.host)})
        self.spec = spec
        self.log_path = Path(log_path)
        self.cache_dir = Path(cache_dir)
        self.health_timeout_s = health_timeout_s
        self.process: subprocess.Popen | None = None
        self.argv = vllm_command(spec)
        self._rpc_dir: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.port}"

    def exited(self) -> str | None:
        """Why the server is gone (it exited), or None while it runs."""
        if self.process is None or self.process.poll() is None:
            return None
        return f"vllm serve exited with code {self.process.returncode}; see {self.log_path}"

    def start(self) -> "VllmServer":
        ensure_port_free(self.spec.host, self.spec.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._rpc_dir = tempfile.mkdtemp(prefix="llm-parity-rpc-")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=server_env(self.cache_dir, self.spec.api_key, self._rpc_dir, self.spec.env), start_new_session=True,
            )
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        import requests  # loaded by http_session; named here for its exception (see llm_parity.http)

        deadline = time.monotonic() + self.health_timeout_s
        started = last_note = time.monotonic()
        with http_session(self.url) as session:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise ServerError(f"vllm serve exited with code {code} before it was healthy; "
                                      f"log {self.log_path}, last lines:\n{log_tail(self.log_path)}")
                try:
                    if session.get(f"{self.url}/health", timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() - last_note >= 15:
                    last_note = time.monotonic()
                    print(f"serve: waiting for {self.url}/health ({last_note - started:.0f} s)", flush=True)
                time.sleep(0.5)
        raise ServerError(f"vllm serve was not healthy after {self.health_timeout_s:.0f} s; "
                          f"log {self.log_path}, last lines:\n{log_tail(self.log_path)}")

    def stop(self, grace_s: float = 20) -> None:
        """SIGINT to the whole process group, then SIGKILL what is left after `grace_s`."""
        if self.process is None:
            return
        stop_group(self.process, grace_s)
        if self._rpc_dir:
            shutil.rmtree(self._rpc_dir, ignore_errors=True)

    def group_environment(self) -> dict[str, str]:
        """The environments of the server's processes as each started, merged (later pids win).
        What vLLM or its platform plugin sets inside the server (PYTORCH_NPU_ALLOC_CONF on Ascend)
        shows in the environments of the processes it starts after."""
        merged: dict[str, str] = {}
        for pid in sorted(processes_in_group(self.process.pid)) if self.process else ():
            try:
                raw = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            merged.update(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)
        return merged

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()



@contextmanager
def serving(profile, model_dir: Path, *, log_path: Path, cache_dir: Path, server_url: str | None = None,
            running: VllmServer | None = None, api_key: str | None = None, log=note):
    """Yield (base URL, our server or None, its spec): a server already running (`running`, ours,
    or a bare `server_url`), or a `vllm serve` started now with the profile's flags and torn
    down on exit, whatever happens."""
    spec = running.spec if running else spec_from_profile(profile, model_dir, api_key=api_key)
    if running or server_url:
        yield (running.url if running else server_url), running, spec
        return
    server = VllmServer(spec, log_path=log_path, cache_dir=cache_dir, health_timeout_s=profile.serve.get("health_timeout_s", 600))
    log(f"serve: starting vLLM ({spec.dtype}, max-num-seqs {spec.max_num_seqs}); log: {log_path}")
    with server:
        yield server.url, server, spec
