"""`make compare` and `make audit` run tasks.py in the host environment, which has only
requirements/host.txt (base.txt, tqdm and numpy): the CLI must load and compare/audit must work without the heavy packages."""
import subprocess
import sys

from llm_parity import PROJECT_ROOT

# Installed for the sides (requirements/reference.txt, cpu-target.txt, lm-eval.txt), never in the host environment.
SIDE_ONLY = ("aiohttp", "torch", "transformers", "accelerate", "vllm", "lm_eval", "datasets")

LOAD_WITHOUT_THEM = f"""
import sys
for name in {SIDE_ONLY!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
import tasks
from llm_parity import audit, compare, pipeline
print("loaded")
"""


def test_the_cli_compare_and_audit_load_without_the_side_packages():
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_THEM], capture_output=True, text=True,
                          cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded"
