"""Base images pinned by digest through images.lock.json; provenance fields that apply here."""
import json
import re
import subprocess

import pytest

from llm_parity import PROJECT_ROOT, provenance
from llm_parity.images import UnpinnedImage, base_reference, load_lock, record_digest
from llm_parity.results import ResultFileError


def make_dry_run(*args):
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def make_default(name):
    return re.search(rf"^{name} \?= (.+)$", (PROJECT_ROOT / "Makefile").read_text(), re.M).group(1).strip()


def test_lock_digests_are_well_formed_and_every_default_base_is_in_the_lock():
    images = load_lock()["images"]
    for tag, entry in images.items():
        assert entry["digest"] is None or re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"]), tag
        assert entry["source"]
    ascend = f"quay.io/ascend/vllm-ascend:{make_default('ASCEND_TAG')}"
    assert ascend in images and make_default("REFERENCE_BASE") in images
    for variant in ("-a3", "-openeuler"):
        assert f"{ascend}{variant}" in images
    assert "quay.io/ascend/vllm-ascend:v0.23.0" in images


def test_malformed_lock_entry_is_rejected(tmp_path):
    lock = load_lock()
    lock["images"]["python:3.11.10-slim-bookworm"]["digest"] = "sha256:1234"
    path = tmp_path / "images.lock.json"
    path.write_text(json.dumps(lock))
    with pytest.raises(ResultFileError, match="images.lock.json: field images.python:3.11.10-slim-bookworm.digest"):
        load_lock(path)


def test_unpinned_base_is_refused_unless_opted_in(tmp_path):
    path = tmp_path / "images.lock.json"
    path.write_text((PROJECT_ROOT / "images.lock.json").read_text())
    seed = "quay.io/ascend/vllm-ascend:v0.18.0"
    with pytest.raises(UnpinnedImage, match="make pin"):
        base_reference(seed, path=path)
    with pytest.raises(UnpinnedImage, match="not in"):
        base_reference("python:latest", path=path)
    assert base_reference(seed, allow_unpinned=True, path=path) == (seed, False)
    record_digest(seed, "sha256:" + "ab" * 32, path=path)
    assert base_reference(seed, path=path) == (f"{seed}@sha256:{'ab' * 32}", True)


def test_image_builds_take_their_base_from_the_lock():
    for target, dockerfile in (("image-ascend", "Dockerfile.ascend"), ("image-reference", "Dockerfile.cpu-ref")):
        commands = make_dry_run(target)
        assert re.search(r"inv image-base --tag \S+ *\)", commands), commands  # no --allow-unpinned by default
        assert f"-f {dockerfile} --build-arg BASE_IMAGE=$base --build-arg BASE_PINNED=$pinned" in commands
    assert "--allow-unpinned" in make_dry_run("image-ascend", "ALLOW_UNPINNED=1")
    for dockerfile in ("Dockerfile.ascend", "Dockerfile.cpu-ref"):
        text = (PROJECT_ROOT / dockerfile).read_text()
        assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
        assert "LLM_PARITY_IMAGE_PINNED=${BASE_PINNED}" in text


def test_make_verify_runs_the_ascend_image_with_every_npu_mount_and_the_shared_volume():
    commands = make_dry_run("verify")
    for flag in ("--device /dev/davinci0", "--device /dev/davinci_manager", "--device /dev/devmm_svm",
                 "--device /dev/hisi_hdc", "-v /usr/local/dcmi:", "-v /usr/local/bin/npu-smi:",
                 "-v /usr/local/Ascend/driver/lib64/:", "-v /usr/local/Ascend/driver/version.info:",
                 "-v /etc/ascend_install.info:", "--shm-size=1g", f"{PROJECT_ROOT}/results:/work/results",
                 "verify --profile kollama-3-8b-instruct --run kollama-3-8b-instruct"):
        assert flag in commands, flag
    assert "--privileged" not in commands
    two_cards = make_dry_run("verify", "NPUS=0,1", "TP=2")
    assert "--device /dev/davinci0 --device /dev/davinci1" in two_cards and "--tensor-parallel-size 2" in two_cards


def test_make_reference_with_cuda_requests_gpus():
    assert "--gpus all" in make_dry_run("reference", "DEVICE=cuda")
    assert "--gpus" not in make_dry_run("reference")


def test_provenance_records_the_image_and_numerics_env_but_no_secrets(monkeypatch):
    monkeypatch.setenv("LLM_PARITY_IMAGE_REF", "quay.io/ascend/vllm-ascend:v0.18.0")
    monkeypatch.setenv("LLM_PARITY_IMAGE_DIGEST", "sha256:" + "0" * 64)
    monkeypatch.setenv("LLM_PARITY_IMAGE_PINNED", "0")
    monkeypatch.setenv("HCCL_DETERMINISTIC", "true")
    monkeypatch.setenv("VLLM_API_KEY", "secret-value")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror-user:mirror-secret@hub-mirror.invalid/hf")
    assert provenance.image() == {"reference": "quay.io/ascend/vllm-ascend:v0.18.0",
                                  "digest": "sha256:" + "0" * 64, "pinned": False}
    env = provenance.numeric_env()
    assert env["HCCL_DETERMINISTIC"] == "true"
    assert "VLLM_API_KEY" not in env and "HF_TOKEN" not in env
    assert env["HF_ENDPOINT"] == "https://***@hub-mirror.invalid/hf"
