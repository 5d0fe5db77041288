"""The images cannot be built here, so they are checked by construction: linted, and installing
through the same script and pinned files as the tested local setup."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_parity import PROJECT_ROOT

DOCKERFILES = ("Dockerfile.ascend", "Dockerfile.cpu-ref")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
    result = subprocess.run([tool("hadolint"), str(PROJECT_ROOT / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert found, f"{name} is installed by requirements/test.txt"
    return found


def test_shellcheck_passes_on_the_scripts():
    scripts = sorted(str(path) for path in (PROJECT_ROOT / "scripts").glob("*.sh"))
    assert any(path.endswith("entrypoint.sh") for path in scripts)
    result = subprocess.run([tool("shellcheck"), *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name, flavour", [("Dockerfile.ascend", "ascend"), ("Dockerfile.cpu-ref", "reference")])
def test_images_install_through_the_shared_script(name, flavour):
    text = (PROJECT_ROOT / name).read_text()
    assert re.search(rf"RUN scripts/install\.sh {flavour}\b", text)
    assert "pip install" not in text  # every install goes through scripts/install.sh and requirements/
    assert (PROJECT_ROOT / "requirements" / f"{flavour}.txt").is_file()


def test_local_setup_uses_the_same_script_and_files():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "scripts/install.sh dev" in makefile
    install = (PROJECT_ROOT / "scripts" / "install.sh").read_text()
    assert 'requirements/cpu-target.txt' in install
    cpu_target = (PROJECT_ROOT / "requirements" / "cpu-target.txt").read_text()
    assert "-r reference.txt" in cpu_target  # the local reference is the image's reference


def test_every_requirement_is_pinned_and_explained():
    for path in Path(PROJECT_ROOT / "requirements").glob("*.txt"):
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "-r ")):
                continue
            assert re.match(r"^[A-Za-z0-9_.,\-\[\]]+==[^ ]+\s+# \S", line), f"{path.name}: unpinned or unexplained: {line}"
