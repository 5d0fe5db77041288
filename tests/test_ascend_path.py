"""The Ascend path where it can run here: the port check after a server stops, the client on
loopback, the image's entrypoint, the Makefile's docker command line, NPU provenance parsed from
recorded samples, the preflight, and image mirrors."""
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llm_parity import PROJECT_ROOT, ascend, cli, pipeline, provenance
from llm_parity.http import http_session, is_loopback
from llm_parity.profiles import load_profile
from llm_parity.results import read_json, write_json
from llm_parity.serve import ServerError, ensure_port_free, spec_from_profile, vllm_command
from llm_parity.target import VllmHttpClient

SAMPLES = Path(__file__).parent / "samples" / "ascend"


def port_in_time_wait() -> int:
    """A port whose only socket is in TIME_WAIT: the side that accepted closed first, as a
    server does when it shuts down with a client's keep-alive connection open."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()
        time.sleep(0.1)
        client.close()
    return port


def test_a_port_left_in_time_wait_is_free_for_the_next_server():
    port = port_in_time_wait()
    with socket.socket() as plain:  # what the old check did, and why it refused
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    ensure_port_free("127.0.0.1", port)


@pytest.mark.parametrize("bound_host", ["127.0.0.1", "0.0.0.0"])
def test_a_live_listener_is_still_refused(bound_host):
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        listener.bind((bound_host, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            ensure_port_free("127.0.0.1", port)


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 - the standard library's name
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy_and_server():
    """Two real HTTP servers on loopback: one stands for a proxy the environment names."""
    servers = []
    for _ in range(2):
        handler = type("Handler", (_Recorder,), {"seen": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_loopback_requests_ignore_proxy_variables(proxy_and_server, monkeypatch):
    proxy, server = proxy_and_server
    proxy_url = f"http://127.0.0.1:{proxy.server_port}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    url = f"http://127.0.0.1:{server.server_port}"
    with VllmHttpClient(url, "m") as client:
        assert client.session.get(f"{url}/health", timeout=5).status_code == 200
    assert server.RequestHandlerClass.seen == ["/health"]
    assert proxy.RequestHandlerClass.seen == []


def test_remote_urls_keep_the_environments_proxy_settings():
    assert is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost:1") and is_loopback("http://[::1]:9")
    assert is_loopback("http://127.3.2.1:80")
    assert not is_loopback("http://10.0.0.1:8000") and not is_loopback("https://hub.invalid")
    assert http_session("https://hub.invalid").trust_env
    assert not http_session("http://127.0.0.1:8000").trust_env


def write_script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def cann_root(tmp_path):
    """A stand-in for /usr/local/Ascend with the three set_env.sh scripts the CANN image's own
    entrypoint sources; the atb one turns determinism off, as the real one does."""
    root = tmp_path / "Ascend"
    bisheng = root / "cann-8.5.1" / "share" / "info" / "ascendnpu-ir" / "bin"
    write_script(bisheng / "bishengir-compile", "#!/bin/sh\necho bishengir\n")
    write_script(root / "ascend-toolkit" / "set_env.sh",
                 'export ASCEND_TOOLKIT_HOME="$LLM_PARITY_ASCEND_ROOT/cann-8.5.1"\n'
                 'export LD_LIBRARY_PATH="$ASCEND_TOOLKIT_HOME/lib64:$LD_LIBRARY_PATH"\n')
    write_script(bisheng / "set_env.sh", f'export PATH="{bisheng}:$PATH"\n')
    write_script(root / "nnal" / "atb" / "set_env.sh",
                 "export ATB_MATMUL_SHUFFLE_K_ENABLE=1\nexport LCCL_DETERMINISTIC=0\nexport LCCL_PARALLEL=0\n"
                 'export ATB_HOME_PATH="$UNSET_BY_ANYONE/atb"\n')
    return root


def run_entrypoint(command: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LCCL_DETERMINISTIC")}
    return subprocess.run([str(PROJECT_ROOT / "scripts" / "entrypoint.sh"), *command], env={**base, **env},
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_entrypoint_sources_the_cann_scripts_then_restores_determinism(cann_root):
    probe = ("import json, os, shutil; print(json.dumps({'compiler': shutil.which('bishengir-compile'), "
             "'env': {k: os.environ.get(k) for k in ('LCCL_DETERMINISTIC', 'ATB_MATMUL_SHUFFLE_K_ENABLE', "
             "'HCCL_DETERMINISTIC', 'ATB_LLM_LCOC_ENABLE', 'LCCL_PARALLEL', 'ASCEND_TOOLKIT_HOME')}}))")
    out = run_entrypoint(["python3", "-c", probe], {"LLM_PARITY_ASCEND_ROOT": str(cann_root)})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["compiler"] and seen["compiler"].endswith("ascendnpu-ir/bin/bishengir-compile")
    assert seen["env"] == {"LCCL_DETERMINISTIC": "1", "ATB_MATMUL_SHUFFLE_K_ENABLE": "0", "HCCL_DETERMINISTIC": "true",
                           "ATB_LLM_LCOC_ENABLE": "0", "LCCL_PARALLEL": "0",
                           "ASCEND_TOOLKIT_HOME": str(cann_root / "cann-8.5.1")}


def test_the_preflight_passes_in_the_entrypoints_environment_and_names_what_is_missing(cann_root):
    check = ("from llm_parity.ascend import preflight; "
             "print([(c.name, c.passed) for c in preflight(count_npus=lambda: (1, ''))])")
    inside = run_entrypoint([sys.executable, "-c", check], {"LLM_PARITY_ASCEND_ROOT": str(cann_root)}, cwd=PROJECT_ROOT)
    assert inside.stdout.strip() == "[('npu_visible', True), ('kernel_compiler', True)]", inside.stderr
    outside = ascend.preflight(count_npus=lambda: (0, "torch_npu cannot be imported (no module)"), which=lambda _: None)
    assert [c.passed for c in outside] == [False, False]
    assert "no NPU is visible" in outside[0].detail and "NPUS=" in outside[0].detail
    assert "bishengir-compile is not on PATH" in outside[1].detail and "set_env.sh" in outside[1].detail


def test_verify_stops_before_downloading_when_the_preflight_fails(capsys):
    failing = [ascend.PreflightCheck("npu_visible", False, "no NPU is visible")]
    with pytest.raises(cli.StageFailed) as stopped:
        cli.guarded(lambda: pipeline.preflight(on_ascend=True, checks=lambda: failing))
    assert stopped.value.code == cli.EXIT_SERVER and "npu_visible" in str(stopped.value)
    assert "preflight: FAIL npu_visible: no NPU is visible" in capsys.readouterr().out
    assert pipeline.preflight(on_ascend=False) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root, as in the container")
def test_entrypoint_hands_what_the_run_wrote_to_the_caller(tmp_path, cann_root):
    results = tmp_path / "results"
    results.mkdir()
    writer = "import pathlib, sys; p = pathlib.Path('results/run/target'); p.mkdir(parents=True); (p / 'x.json').write_text('{}'); sys.exit(3)"
    out = run_entrypoint(["python3", "-c", writer], {"LLM_PARITY_ASCEND_ROOT": str(cann_root), "LLM_PARITY_OWNER": "4321:4322",
                                                     "LLM_PARITY_RESULTS": "results"}, cwd=tmp_path)
    assert out.returncode == 3, out.stderr  # the command's exit code comes through
    for path in (results / "run", results / "run" / "target" / "x.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root, as in the container")
def test_entrypoint_forwards_sigterm_and_still_hands_over_the_files(tmp_path, cann_root):
    (tmp_path / "results").mkdir()
    waiter = ("import pathlib, signal, sys, time\n"
              "def stop(*_):\n    pathlib.Path('results/partial.json').write_text('{}'); sys.exit(130)\n"
              "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    process = subprocess.Popen([str(PROJECT_ROOT / "scripts" / "entrypoint.sh"), "python3", "-c", waiter], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "LLM_PARITY_ASCEND_ROOT": str(cann_root), "LLM_PARITY_OWNER": "4321:4321"})
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 130
    assert (tmp_path / "results" / "partial.json").stat().st_uid == 4321


def test_npu_provenance_from_recorded_npu_smi_and_install_info(monkeypatch):
    outputs = {("npu-smi", "info"): (SAMPLES / "npu-smi-info.txt").read_text(),
               ("npu-smi", "info", "-t", "board", "-i", "4"): (SAMPLES / "npu-smi-board.txt").read_text()}
    monkeypatch.setenv("LLM_PARITY_HOST_NPUS", "4,5")
    doc = ascend.host_description(lambda argv: outputs.get(tuple(argv)), root=SAMPLES / "root")
    assert doc == {
        "cards": [{"id": 4, "name": "910B3", "health": "OK", "memory_mb": 65536},
                  {"id": 5, "name": "910B3", "health": "OK", "memory_mb": 65536}],
        "npu_smi_version": "24.1.rc2", "driver_version": "24.1.rc2.2", "firmware_version": "7.5.0.1.129",
        "cann_version": "8.5.1", "host_npus": "4,5"}
    assert ascend.accelerator_line(doc) == "2 x Ascend 910B3 (driver 24.1.rc2.2, firmware 7.5.0.1.129, CANN 8.5.1)"


def test_npu_provenance_without_npu_smi_says_nothing_rather_than_guessing(tmp_path):
    doc = ascend.host_description(lambda argv: None, root=tmp_path)
    assert doc["cards"] == [] and doc["driver_version"] is None and doc["cann_version"] is None
    assert ascend.accelerator_line(doc) is None


def test_the_target_on_an_ascend_host_records_its_npus(monkeypatch, tmp_path):
    """The target side used to record device "server", so npu-smi was never asked."""
    monkeypatch.setattr(ascend, "is_ascend", lambda: True)
    monkeypatch.setattr(ascend, "ASCEND_ROOT", SAMPLES / "root")
    samples = {"info": (SAMPLES / "npu-smi-info.txt").read_text(), "board": (SAMPLES / "npu-smi-board.txt").read_text()}
    monkeypatch.setattr(provenance, "command_stdout",
                        lambda argv: samples["board" if "board" in argv else "info"] if argv[0] == "npu-smi" else None)
    assert provenance.serving_device() == "npu"
    doc = provenance.collect(side="target", backend="vllm-http", backend_label="vLLM (HTTP)",
                             profile={"name": "p", "sha256": "c" * 64}, model_path="m", manifest_sha256="a" * 64,
                             suite_sha256="b" * 64, decoding={"temperature": 0, "top_logprobs": 5, "dtype": "bfloat16"},
                             device=provenance.serving_device(), duration_s=1.0)
    write_json(tmp_path / "provenance.json", doc, "provenance")  # valid against the schema
    hardware = read_json(tmp_path / "provenance.json", "provenance")["hardware"]
    assert hardware["accelerator"].startswith("2 x Ascend 910B3 (driver 24.1.rc2.2")
    assert hardware["ascend"]["firmware_version"] == "7.5.0.1.129"


def make_dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)


def docker_run_line(*args: str) -> str:
    out = make_dry_run("verify", *args)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.replace("\\\n", " ").splitlines() if line.startswith("docker run"))


def test_make_verify_mounts_the_chosen_cards_and_leaves_their_numbering_to_the_runtime():
    line = docker_run_line("NPUS=4,5", "TP=2")
    assert "--device /dev/davinci4 --device /dev/davinci5" in line and "/dev/davinci0" not in line
    assert "ASCEND_RT_VISIBLE_DEVICES" not in line  # host ids would be invalid inside: the mounted cards are 0..N-1
    assert "-e LLM_PARITY_HOST_NPUS=4,5" in line and "-e LLM_PARITY_OWNER=$(id -u):$(id -g)" in line


def served_by(line: str) -> list[str]:
    """The `vllm serve` command line that the inv task at the end of a docker line would run."""
    words = line.split(" verify ", 1)[1].split()
    options = {word[2:].replace("-", "_"): (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--")
                                             else True) for i, word in enumerate(words) if word.startswith("--")}
    serve = {name: int(options[name]) for name in ("max_model_len", "max_num_seqs", "port") if name in options}
    profile = load_profile(options["profile"]).with_serve(dtype=options.get("dtype"), **serve,
                                                          enforce_eager=options.get("enforce_eager"))
    return vllm_command(spec_from_profile(profile, Path("/work/models/m")))


def test_make_verify_passes_only_the_knobs_the_user_set():
    tiny = docker_run_line("PROFILE=tiny-llama")
    assert tiny.endswith("verify --profile tiny-llama --run tiny-llama")
    served = " ".join(served_by(tiny))  # so the tiny profile's own flags are served, not the seed's
    assert "--dtype float32 --max-model-len 1024 --max-num-seqs 16" in served and "--port 0" in served
    assert "--max-model-len 8192" not in served and "--dtype bfloat16" not in served
    seed = " ".join(served_by(docker_run_line()))
    assert "--dtype bfloat16 --max-model-len 8192 --max-num-seqs 16" in seed and "--port 8000" in seed
    set_knobs = docker_run_line("PROFILE=tiny-llama", "DTYPE=float32", "PORT=9000", "MAX_NUM_SEQS=4", "EAGER=1")
    assert set_knobs.endswith("--dtype float32 --max-num-seqs 4 --port 9000 --enforce-eager")


def test_make_refuses_the_310p_variant_with_the_reason():
    out = make_dry_run("verify", "ASCEND_VARIANT=-310p")
    assert out.returncode != 0
    assert "-310p is not supported" in out.stderr and "float16" in out.stderr and "CANN 9.0.0" in out.stderr


def test_make_refuses_a_python_older_than_3_10_before_creating_anything(tmp_path):
    old_python = write_script(tmp_path / "python3.8", "#!/bin/sh\n# answers like Python 3.8: version_info < (3, 10)\nexit 1\n")
    out = subprocess.run(["make", f"PYTHON={old_python}", f"HOST_VENV={tmp_path / 'host'}", "compare"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"llm-parity needs Python 3.10 or newer, and {old_python} is older" in out.stderr
    assert not (tmp_path / "host").exists()


def test_a_mirror_prefix_keeps_the_locked_digest(tmp_path):
    from llm_parity.images import base_reference, load_lock

    tag = "quay.io/ascend/vllm-ascend:v0.23.0"
    digest = load_lock()["images"][tag]["digest"]
    assert base_reference(tag, mirror="mirror.example/") == (f"mirror.example/{tag}@{digest}", True)
    assert "--mirror mirror.example" in make_dry_run("image-ascend", "IMAGE_MIRROR=mirror.example").stdout


def test_the_build_context_leaves_models_and_results_out():
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    for entry in ("models/", "results/", ".venv/", ".cache/", ".git"):
        assert entry in ignored


CONFIG_LINES = (
    "(EngineCore pid=1) INFO 04-30 10:00:00 [core.py:133] Initializing a V1 LLM engine (v0.18.0) with config: "
    "model='/work/models/m', compilation_config={'mode': 3, 'cudagraph_mode': 'PIECEWISE'}\n"
    "(EngineCore pid=1) INFO 04-30 10:00:01 [platform.py:300] PIECEWISE compilation enabled on NPU. use_inductor not "
    "supported - using only ACL Graph mode\n")


def test_graph_evidence_is_a_finished_capture_not_a_config_line():
    from llm_parity.dummy import graph_evidence

    assert graph_evidence(CONFIG_LINES, enforce_eager=False, captures_graphs=True) is None
    captured = CONFIG_LINES + ("(Worker_TP0 pid=271) INFO 04-30 10:00:40 [gpu_model_runner.py:4587] "
                               "Graph capturing finished in 15 secs, took 0.04 GiB\n")
    assert graph_evidence(captured, enforce_eager=False, captures_graphs=True) == "Graph capturing finished in 15 secs, took 0.04 GiB"
    compiled_on_cpu = CONFIG_LINES + ("(Worker pid=5) INFO 11-29 10:54:13 [decorators.py:743] [backbone] saved AOT "
                                      "compiled function to /cache/torch_aot_compile/rank_0_0/model\n")
    assert graph_evidence(compiled_on_cpu, enforce_eager=False, captures_graphs=True) is None
    assert "saved AOT compiled function" in graph_evidence(compiled_on_cpu, enforce_eager=False, captures_graphs=False)
    assert graph_evidence(CONFIG_LINES, enforce_eager=True, captures_graphs=True).startswith("eager mode")
