"""llm-parity: prove that a model served by vLLM answers the same as a transformers reference."""
from pathlib import Path

__version__ = "0.1.0"

# Schemas, profiles and suites live beside the package in the repository (installed editable).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
