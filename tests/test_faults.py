"""Fault matrix rows that need no server: shared-volume writers, unusable results folders,
malformed input to audit, safe defaults of the server command line."""
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from llm_parity import cli
from llm_parity.audit import audit_run
from llm_parity.profiles import load_profile
from llm_parity.results import ResultFileError, RunDir, ensure_writable, read_json, write_json
from llm_parity.serve import ServerSpec, vllm_command


def big_generations(marker: int) -> dict:
    record = {"id": f"p{marker}", "prompt_ids": list(range(2000)), "output_ids": [marker] * 3000, "text": "x" * 5000,
              "logprobs": [-0.5] * 3000, "top_logprobs": [], "finish_reason": "length",
              "usage": {"prompt_tokens": 2000, "completion_tokens": 3000}, "error": None}
    return {"schema": "llm-parity/generations/v1", "side": "target", "suite_sha256": "a" * 64,
            "model_manifest_sha256": "b" * 64, "decoding": {"temperature": 0, "top_logprobs": 5, "dtype": "float32"},
            "records": [record]}


def test_two_writers_and_a_reader_never_see_a_partial_file(tmp_path):
    """Row 6: atomic temp file + rename on the shared volume."""
    path = tmp_path / "generations.json"
    write_json(path, big_generations(0), "generations")
    stop = time.monotonic() + 3
    errors = []

    def writer(marker):
        while time.monotonic() < stop:
            write_json(path, big_generations(marker), "generations")

    def reader():
        reads = 0
        while time.monotonic() < stop:
            try:
                doc = read_json(path, "generations")
                assert doc["records"][0]["output_ids"][0] in (0, 1, 2)
                reads += 1
            except (ResultFileError, AssertionError) as err:
                errors.append(err)
        errors.append(reads) if reads == 0 else None

    threads = [threading.Thread(target=writer, args=(m,)) for m in (1, 2)] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["generations.json"]  # no temporary files left


@pytest.fixture
def mounted(tmp_path):
    """A tmpfs of our own: read-only, or tiny (a full disk)."""
    mounts = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)


def test_read_only_results_folder_fails_before_any_work_naming_the_path(mounted, tiny_model_dir):
    """Row 5: read-only."""
    root = mounted("ro,size=1m")
    with pytest.raises(ResultFileError, match=f"{root}/run/target: cannot write results here"):
        ensure_writable(RunDir.under(root, "run").side("target"))
    started = time.monotonic()
    with pytest.raises(cli.StageFailed) as failed:
        cli.target(profile="tiny-llama", run="run", model=str(tiny_model_dir), results=str(root))
    assert failed.value.code == 2 and f"{root}/run: cannot write results here" in str(failed.value)
    assert time.monotonic() - started < 10


def test_full_disk_fails_before_any_work_naming_the_path(mounted):
    """Row 5: disk full (a 1 MiB filesystem)."""
    root = mounted("size=1m")
    with pytest.raises(ResultFileError, match=f"{root}/run: only 1 MiB free"):
        ensure_writable(root / "run")


def test_malformed_file_given_to_audit_names_it_and_exits_2(tmp_path, capsys):
    """Row 7 for audit (compare: tests/test_demo_integration.py::test_compare_task_exit_codes)."""
    run = RunDir.under(tmp_path, "r")
    run.root.mkdir()
    run.suite.write_text('{"schema": "llm-parity/suite/v1", "name": ')
    result = audit_run(run)
    assert result.unreadable and any(str(run.suite) in problem and "not valid JSON" in problem for problem in result.problems)
    assert cli.audit(run="r", results=str(tmp_path)) == 2
    assert run.suite.read_text() == '{"schema": "llm-parity/suite/v1", "name": '


def test_server_defaults_bind_loopback_and_never_trust_remote_code():
    """Rows 12 and 13: the command line the profiles produce."""
    for name in ("tiny-llama", "kollama-3-8b-instruct"):
        profile = load_profile(name)
        assert profile.serve["host"] == "127.0.0.1"
        assert profile.model.get("trust_remote_code") is False and profile.model.get("allow_pickle") is False
    argv = vllm_command(ServerSpec(model_dir=Path("m"), served_name="m", dtype="float32", max_model_len=64, max_num_seqs=1,
                                   api_key="not-on-the-command-line"))
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--trust-remote-code" not in argv
    assert "not-on-the-command-line" not in json.dumps(argv)  # the key travels by environment, not argv
