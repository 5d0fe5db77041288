"""The seed's "Dummy 架构验证": config and tokenizer only, `vllm serve --load-format dummy`. It
shows the architecture parses, graphs compile, the KV cache is allocated and the server answers,
before any weights are downloaded."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from llm_parity.download import model_files
from llm_parity.progress import note
from llm_parity.provenance import serving_device
from llm_parity.results import schema_tag, write_json
from llm_parity.serve import ServerError, VllmServer, log_tail, spec_from_profile

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
ARCHITECTURE_LINE = re.compile(r"Resolved architecture: (\S+)")
KV_CACHE_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")
# Lines logged after the work was done, never the config lines that only say it is enabled
# ("PIECEWISE compilation enabled on NPU", the engine's config dump). vLLM's model runner, which
# vllm-ascend's NPU runner calls for ACL graphs too, logs the capture:
CAPTURE_LINE = re.compile(r"Graph capturing finished")
# ...and vLLM's compiler the compiled (or cache-loaded) graph. The CPU backend captures no graphs,
# so there a compiled graph is what graph mode means.
COMPILED_LINE = re.compile(r"(Compiling a graph for|Directly load the compiled graph|saved AOT compiled function"
                           r"|Directly load AOT compilation|torch\.compile took)")


def config_only_copy(model_dir: Path, into: Path) -> Path:
    """A copy of the model folder without any weight file."""
    for path in model_files(model_dir):
        if path.suffix not in WEIGHT_SUFFIXES and not path.name.endswith(".index.json"):
            target = into / path.relative_to(model_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return into


def _evidence(log_text: str, pattern: re.Pattern) -> str | None:
    for line in log_text.splitlines():
        if pattern.search(line) and "disabled" not in line:
            return line.split("] ", 1)[-1].strip()[:300]
    return None


def graph_evidence(log_text: str, *, enforce_eager: bool, captures_graphs: bool) -> str | None:
    """The log line that shows graph mode really ran: a finished capture where the platform
    captures graphs (NPU, GPU), a compiled graph on the CPU; None when there is none."""
    if enforce_eager:
        return "eager mode (--enforce-eager): no graph capture"
    return _evidence(log_text, CAPTURE_LINE) or (None if captures_graphs else _evidence(log_text, COMPILED_LINE))


def run_dummy(profile, model_dir: Path, *, out_path: Path, log_path: Path, cache_dir: Path,
              prompt_ids: list[int], log=note) -> dict:
    """Start vLLM on config + tokenizer with dummy weights, send one request, write dummy.json."""
    error = None
    with tempfile.TemporaryDirectory(prefix="llm-parity-dummy-") as tmp:
        folder = config_only_copy(Path(model_dir), Path(tmp) / Path(model_dir).name)
        spec = spec_from_profile(profile, folder, load_format="dummy")
        log(f"dummy: vllm serve --load-format dummy on {Path(model_dir).name} (config and tokenizer only)")
        server = VllmServer(spec, log_path=log_path, cache_dir=cache_dir,
                            health_timeout_s=profile.serve.get("health_timeout_s", 600))
        answered = False
        try:
            with server:
                from llm_parity.target import VllmHttpClient

                with VllmHttpClient(server.url, spec.served_name, timeout_s=120) as client:
                    record = client.generate({"id": "dummy", "prompt_ids": prompt_ids, "max_tokens": 4,
                                              "messages": [{"role": "user", "content": "hi"}]}, top_logprobs=1)
                answered = len(record.output_ids) > 0
        except (ServerError, OSError, ValueError, KeyError) as err:
            error = str(err).splitlines()[0]
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    architecture = _evidence(text, ARCHITECTURE_LINE)
    kv_cache = _evidence(text, KV_CACHE_LINE)
    graph = graph_evidence(text, enforce_eager=spec.enforce_eager, captures_graphs=serving_device() != "cpu")
    checks = [
        {"name": "architecture_parsed", "passed": architecture is not None, "evidence": architecture},
        {"name": "graph_compiled", "passed": graph is not None, "evidence": graph},
        {"name": "kv_cache_allocated", "passed": kv_cache is not None, "evidence": kv_cache},
        {"name": "server_answered", "passed": answered, "evidence": "one greedy request returned tokens" if answered else error},
    ]
    doc = {"schema": schema_tag("dummy"), "model": Path(model_dir).name, "load_format": "dummy",
           "graph_mode": spec.graph_mode, "argv": server.argv, "checks": checks,
           "passed": all(c["passed"] for c in checks), "error": error,
           "log_tail": None if error is None else log_tail(log_path, 15)}
    write_json(out_path, doc, "dummy")
    return doc
