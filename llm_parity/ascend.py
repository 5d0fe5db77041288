"""What an Ascend host is: the cards `npu-smi` shows, the driver, firmware and CANN versions from
the files the driver and toolkit install, and the preflight that `inv verify` runs before it
loads any weights."""
from __future__ import annotations

import os
import platform
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_parity import is_installed

ASCEND_ROOT = Path(os.environ.get("LLM_PARITY_ASCEND_ROOT", "/usr/local/Ascend"))
# triton-ascend compiles its kernels with this; the CANN image's set_env.sh scripts put it on PATH.
KERNEL_COMPILER = "bishengir-compile"
NPU_SMI_VERSION = re.compile(r"npu-smi\s+\S+\s+Version:\s*(\S+)")
# The first of the two table rows of each card: "| 0     910B3     | OK     | 93.6  38  ..."
NPU_SMI_CARD = re.compile(r"^\|\s*(\d+)\s+([A-Za-z0-9][\w.-]*)\s*\|\s*([A-Za-z]+)\s*\|")
# The second row ends with the card's memory: "... | 3161 / 65536 |"
NPU_SMI_MEMORY = re.compile(r"(\d+)\s*/\s*(\d+)\s*\|\s*$")


def is_ascend() -> bool:
    """True where vllm-ascend is installed: the target image on an Ascend host."""
    return is_installed("vllm-ascend")


def parse_npu_smi(text: str) -> dict:
    """`npu-smi info` as {"version", "cards": [{"id", "name", "health", "memory_mb"}]}; memory_mb is
    the total of the last "used / total" pair of the card's second row (HBM on 910 cards)."""
    version = NPU_SMI_VERSION.search(text)
    cards: list[dict] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = NPU_SMI_CARD.match(line)
        if not match or match.group(2).isdigit():
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        memory = NPU_SMI_MEMORY.search(following)
        cards.append({"id": int(match.group(1)), "name": match.group(2), "health": match.group(3),
                      "memory_mb": int(memory.group(2)) if memory else None})
    return {"version": version.group(1) if version else None, "cards": cards}


def read_key_values(path: Path) -> dict[str, str]:
    """A `key=value` file such as the driver's version.info or the toolkit's install info; {} when
    it is missing or unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip().lower(): value.strip() for key, value in pairs}


def cann_version(root: Path | None = None) -> str | None:
    """The toolkit's version from `<arch>-linux/ascend_toolkit_install.info`, where vllm-ascend's
    own collect_env reads it."""
    arch = f"{platform.machine()}-linux"
    root = root or ASCEND_ROOT
    for toolkit in (root / "ascend-toolkit" / "latest", root / "cann"):
        info = read_key_values(toolkit / arch / "ascend_toolkit_install.info")
        if info.get("version"):
            return info["version"]
    return None


def firmware_version(npu_smi_board: str) -> str | None:
    """From `npu-smi info -t board -i N` ("Firmware Version : 7.x.y")."""
    match = re.search(r"Firmware Version\s*:\s*(\S+)", npu_smi_board or "")
    return match.group(1) if match else None


def driver_version(root: Path | None = None) -> str | None:
    """The driver package's version from driver/version.info (package_version, which newer drivers
    keep apart from an inner Version)."""
    info = read_key_values((root or ASCEND_ROOT) / "driver" / "version.info")
    return info.get("package_version") or info.get("version")


def host_description(run: Callable[[list[str]], str | None], root: Path | None = None) -> dict:
    """The Ascend part of provenance: cards, npu-smi, driver, firmware and CANN versions, and the
    host's card ids as mounted (the container numbers them from 0). `run` returns a command's
    standard output, or None when it cannot run."""
    smi = parse_npu_smi(run(["npu-smi", "info"]) or "")
    cards = smi["cards"]
    board = run(["npu-smi", "info", "-t", "board", "-i", str(cards[0]["id"])]) if cards else None
    return {
        "cards": cards,
        "npu_smi_version": smi["version"],
        "driver_version": driver_version(root),
        "firmware_version": firmware_version(board),
        "cann_version": cann_version(root),
        "host_npus": os.environ.get("LLM_PARITY_HOST_NPUS"),
    }


def accelerator_line(ascend: dict) -> str | None:
    """One line for the report: "2 x 910B3 (driver ..., firmware ..., CANN ...)"."""
    names = sorted({card["name"] for card in ascend["cards"]})
    if not names:
        return None
    versions = ", ".join(f"{label} {ascend[key]}" for label, key in
                         (("driver", "driver_version"), ("firmware", "firmware_version"), ("CANN", "cann_version"))
                         if ascend[key])
    return f"{len(ascend['cards'])} x Ascend {'/'.join(names)}" + (f" ({versions})" if versions else "")


@dataclass(frozen=True)
class PreflightCheck:
    name: str
    passed: bool
    detail: str


def visible_npus() -> tuple[int, str]:
    """How many NPUs torch_npu sees, and why none when it sees none."""
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError as err:
        return 0, f"torch_npu cannot be imported ({err})"
    try:
        return torch.npu.device_count(), ""
    except RuntimeError as err:
        return 0, str(err).splitlines()[0]


def preflight(count_npus=visible_npus, which=shutil.which) -> list[PreflightCheck]:
    """What must hold before 16 GB of weights are worth loading on an Ascend host."""
    count, why = count_npus()
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "(unset)")
    npu = PreflightCheck("npu_visible", count > 0,
                         f"{count} NPU(s) visible (ASCEND_RT_VISIBLE_DEVICES={visible})" if count else
                         f"no NPU is visible to torch_npu (ASCEND_RT_VISIBLE_DEVICES={visible}): {why or 'device_count() is 0'}; "
                         "check the --device /dev/davinciN mounts (make verify NPUS=...) and `npu-smi info` on the host")
    compiler = which(KERNEL_COMPILER)
    kernels = PreflightCheck("kernel_compiler", compiler is not None,
                             f"{KERNEL_COMPILER} at {compiler}" if compiler else
                             f"{KERNEL_COMPILER} is not on PATH: the CANN set_env.sh scripts were not sourced "
                             "(the image's entrypoint, scripts/entrypoint.sh, sources them)")
    return [npu, kernels]
