"""The download stage against a real Hub-compatible server (olah, offline mode) on loopback,
serving the tiny model as a git model repository."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from llm_parity import PROJECT_ROOT, progress
from llm_parity.download import DownloadError, build_manifest, fetch_hf, verify_folder
from llm_parity.serve import free_port

pytestmark = pytest.mark.integration
REPO = "llm-parity/tiny-llama-3"
TOKEN = "hf_llmParityTestTokenDoNotLeak0123456789"


def olah_cli() -> str:
    path = Path(os.environ.get("LLM_PARITY_OLAH", PROJECT_ROOT / ".venv-olah" / "bin" / "olah-cli")).absolute()
    assert path.is_file(), f"olah is not installed at {path}: run the tests with `make test`"
    return str(path)


def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=llm-parity", "-c", "user.email=tests@llm-parity.invalid", *args],
                   cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def hub(tiny_model_dir, tmp_path_factory):
    """olah serving a mirror folder that holds the tiny model as models/llm-parity/tiny-llama-3 (branch main)."""
    root = tmp_path_factory.mktemp("hub")
    repo = root / "mirrors" / "models" / REPO
    shutil.copytree(tiny_model_dir, repo)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "tiny model", cwd=repo)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    port = free_port("127.0.0.1")
    (root / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\n[accessibility]\noffline = true\n')
    log = open(root / "olah.log", "wb")
    server = subprocess.Popen([olah_cli(), "-c", str(root / "olah.toml")], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/models/{REPO}/revision/main", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"olah did not start: {(root / 'olah.log').read_text()[-2000:]}")
    yield {"url": url, "repo": repo, "commit": commit, "log": root / "olah.log"}
    os.killpg(server.pid, 15)
    server.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def downloaded(hub, tmp_path_factory):
    folder, commit = fetch_hf(REPO, revision="main", local_dir=tmp_path_factory.mktemp("dl") / "model", endpoint=hub["url"])
    return folder, commit


def test_download_through_hf_endpoint_is_byte_identical_and_pinned_to_the_commit(hub, downloaded):
    folder, commit = downloaded
    assert commit == hub["commit"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (folder / name).read_bytes() == (hub["repo"] / name).read_bytes(), name
    manifest = build_manifest(folder, source="hf", repo_id=REPO, revision="main", resolved_revision=commit)
    assert verify_folder(folder, manifest) == []


@pytest.mark.parametrize("damage", ["flip", "missing", "extra"])
def test_verify_names_a_flipped_byte_a_missing_shard_and_an_extra_file(downloaded, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(downloaded[0], folder, ignore=shutil.ignore_patterns(".cache"))
    manifest = build_manifest(folder, source="hf", repo_id=REPO, revision="main", resolved_revision=downloaded[1])
    shard = folder / "model.safetensors"
    if damage == "flip":
        with open(shard, "r+b") as handle:
            handle.seek(1000)
            byte = handle.read(1)
            handle.seek(1000)
            handle.write(bytes([byte[0] ^ 0xFF]))
        expected = f"{shard}: content differs"
    elif damage == "missing":
        shard.unlink()
        expected = f"{shard}: missing"
    else:
        (folder / "extra.safetensors").write_bytes(b"\0" * 16)
        expected = f"{folder / 'extra.safetensors'}: extra file"
    problems = verify_folder(folder, manifest)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize("mode", ["lines", "bar"])
def test_outside_a_terminal_the_hub_clients_bars_are_off_unless_bars_are_forced(hub, tmp_path, monkeypatch, capsys, mode):
    monkeypatch.setenv(progress.MODE_VARIABLE, mode)
    fetch_hf(REPO, revision="main", local_dir=tmp_path / "m", endpoint=hub["url"])
    err = capsys.readouterr().err
    if mode == "lines":
        assert "\r" not in err and "\x1b" not in err
    else:  # the same download draws huggingface_hub's file counter
        assert "\r" in err and "Fetching" in err


def test_unknown_revision_fails_fast_and_clearly(hub, tmp_path):
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"no-such-branch.*" + hub["url"].replace(".", r"\.")):
        fetch_hf(REPO, revision="no-such-branch", local_dir=tmp_path / "m", endpoint=hub["url"])
    assert time.monotonic() - started < 60


def test_unreachable_endpoint_fails_within_bounded_time(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    started = time.monotonic()
    with pytest.raises(DownloadError, match="could not fetch"):
        fetch_hf(REPO, revision="main", local_dir=tmp_path / "m", endpoint=endpoint, timeout_s=5)
    assert time.monotonic() - started < 60


def test_pickle_only_repo_is_refused(hub, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    from llm_parity.download import check_model_folder

    with pytest.raises(DownloadError, match="pickle"):
        check_model_folder(folder, allow_pickle=False)
    check_model_folder(folder, allow_pickle=True)


def test_download_task_writes_the_manifest_and_never_the_token(hub, download_task, tmp_path, capfd):
    manifest = download_task({"source": "hf", "repo_id": REPO, "revision": "main"},
                             {"HF_ENDPOINT": hub["url"], "HF_TOKEN": TOKEN})
    assert (manifest["source"], manifest["revision"], manifest["resolved_revision"]) == ("hf", "main", hub["commit"])
    assert verify_folder(tmp_path / "models" / REPO, manifest) == []
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    for path in list((tmp_path / "results").rglob("*")) + list((tmp_path / "models").rglob("*")) + [hub["log"]]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_check_model_task_exit_codes(downloaded, tmp_path):
    manifest_path = tmp_path / "manifest.json"
    from llm_parity.results import write_json

    write_json(manifest_path, build_manifest(downloaded[0], source="hf", repo_id=REPO, revision="main",
                                             resolved_revision=downloaded[1]), "manifest")
    ok = subprocess.run([sys.executable, "-m", "invoke", "check-model", "--model", str(downloaded[0]),
                         "--manifest", str(manifest_path)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert ok.returncode == 0, ok.stderr
    (downloaded[0] / "stray.txt").write_text("x")
    bad = subprocess.run([sys.executable, "-m", "invoke", "check-model", "--model", str(downloaded[0]),
                          "--manifest", str(manifest_path)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    (downloaded[0] / "stray.txt").unlink()
    assert bad.returncode == 1 and "stray.txt: extra file" in bad.stdout
