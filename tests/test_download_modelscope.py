"""The download stage's ModelScope source: the real `modelscope` client against a loopback server
speaking the ModelScope Hub API (tests/modelscope_server.py) over a git repository of the tiny model."""
import re
import shutil
import subprocess
import time

import pytest
from modelscope_server import ModelScopeHub

from llm_parity import progress
from llm_parity.download import DownloadError, build_manifest, fetch_modelscope, verify_folder
from llm_parity.serve import free_port

pytestmark = pytest.mark.integration
REPO = "llm-parity/tiny-llama-3"
TOKEN = "ms-llmParityTestTokenDoNotLeak0123456789"


def git(*args, cwd) -> str:
    return subprocess.run(["git", "-c", "user.name=llm-parity", "-c", "user.email=tests@llm-parity.invalid", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def client_dirs(tmp_path_factory):
    """The client's cache and home in scratch folders, so the test never touches the user's."""
    root = tmp_path_factory.mktemp("modelscope-client")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELSCOPE_CACHE", str(root / "cache"))
        patch.setenv("MODELSCOPE_HOME", str(root / "home"))
        patch.setenv("MODELSCOPE_API_TOKEN", "")  # no saved login is sent unless a test sets a token
        yield root


@pytest.fixture(scope="module")
def hub(tiny_model_dir, tmp_path_factory, client_dirs):
    root = tmp_path_factory.mktemp("modelscope-hub")
    repo = root / REPO
    shutil.copytree(tiny_model_dir, repo)
    git("init", "-q", "-b", "master", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "tiny model", cwd=repo)
    with ModelScopeHub(root) as server:
        yield {"server": server, "url": server.url, "repo": repo, "commit": git("rev-parse", "HEAD", cwd=repo)}


@pytest.fixture(scope="module")
def downloaded(hub, tmp_path_factory):
    return fetch_modelscope(REPO, revision="master", local_dir=tmp_path_factory.mktemp("ms-dl") / "model",
                            endpoint=hub["url"])


def test_download_through_a_modelscope_endpoint_is_byte_identical(hub, downloaded):
    folder, resolved = downloaded
    assert resolved is None  # a branch: ModelScope names no commit, the manifest's hashes pin the files
    served = sorted(p.relative_to(hub["repo"]).as_posix() for p in hub["repo"].rglob("*")
                    if p.is_file() and ".git" not in p.parts)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == served
    for name in served:
        assert (folder / name).read_bytes() == (hub["repo"] / name).read_bytes(), name
    manifest = build_manifest(folder, source="modelscope", repo_id=REPO, revision="master", resolved_revision=None)
    assert verify_folder(folder, manifest) == []
    asked = {(r["path"], r["query"].get("Revision")) for r in hub["server"].requests_seen}
    assert (f"/api/v1/models/{REPO}/repo/files", "master") in asked


def test_outside_a_terminal_each_fetched_file_gets_a_plain_line(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_VARIABLE, "lines")
    folder, _ = fetch_modelscope(REPO, revision="master", local_dir=tmp_path / "m", endpoint=hub["url"])
    # The client's own bars still write carriage returns (TQDM_DISABLE=1 silences them), from their own
    # threads, so one may stand just before a line of ours: each of ours is what follows "download: ".
    lines = [segment[segment.index("download: "):] for segment in re.split(r"[\r\n]", capsys.readouterr().err)
             if "download: " in segment]
    fetched = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts]
    assert sorted(lines) == sorted(f"download: {p.relative_to(folder).as_posix()}: {progress.byte_size(p.stat().st_size)} "
                                   f"of {progress.byte_size(p.stat().st_size)}" for p in fetched)


def test_a_commit_id_revision_is_recorded_as_resolved(hub, tmp_path):
    folder, resolved = fetch_modelscope(REPO, revision=hub["commit"], local_dir=tmp_path / "m", endpoint=hub["url"])
    assert resolved == hub["commit"]
    assert (folder / "model.safetensors").read_bytes() == (hub["repo"] / "model.safetensors").read_bytes()


def test_unknown_revision_fails_fast_naming_repo_revision_and_endpoint(hub, tmp_path):
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"{REPO}@no-such-tag from {hub['url']}: .*no revision no-such-tag"):
        fetch_modelscope(REPO, revision="no-such-tag", local_dir=tmp_path / "m", endpoint=hub["url"])
    assert time.monotonic() - started < 10


def test_unreachable_endpoint_fails_within_bounded_time_without_the_credentials_in_its_url(client_dirs, tmp_path):
    port = free_port("127.0.0.1")
    started = time.monotonic()
    with pytest.raises(DownloadError, match=f"could not fetch {REPO}@master from http://\\*\\*\\*@127.0.0.1:{port}") as err:
        fetch_modelscope(REPO, local_dir=tmp_path / "m", endpoint=f"http://mirror:mirror-secret@127.0.0.1:{port}")
    assert time.monotonic() - started < 30  # the client's own four tries take about 7 s
    assert "mirror-secret" not in str(err.value)


def test_download_task_with_a_modelscope_profile_sends_the_token_and_writes_it_nowhere(
        hub, client_dirs, download_task, tmp_path, capfd):
    seen_before = len(hub["server"].requests_seen)
    manifest = download_task({"source": "modelscope", "repo_id": REPO, "revision": "master"},
                             {"MODELSCOPE_ENDPOINT": hub["url"], "MODELSCOPE_API_TOKEN": TOKEN})
    assert (manifest["source"], manifest["revision"], manifest["resolved_revision"]) == ("modelscope", "master", None)
    assert verify_folder(tmp_path / "models" / REPO, manifest) == []
    assert f"Bearer {TOKEN}" in {r["authorization"] for r in hub["server"].requests_seen[seen_before:]}
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    written = [tmp_path / "results", tmp_path / "models", client_dirs]
    for path in (p for folder in written for p in folder.rglob("*")):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
