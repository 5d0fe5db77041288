"""The accuracy stage: lm-evaluation-harness on one side, its per-sample outputs turned into our own
files. The target is lm-eval's `local-completions` model against the served model (token ids in,
the same server and flags as the target side); the reference is its `hf` backend on the model
folder in transformers. Both get the same tasks, few-shot setting, limit, context length and BOS
rule, and each records the token ids it really scored, so compare can refuse sides that did not
score the same thing.

    <side>/accuracy.json            lm-eval's version, the model it drove, per task: version,
                                    config hash, metric, accuracy, its per-sample file and hash
    <side>/accuracy/<task>.json     one record per document: hashes, the ids of every request,
                                    log-likelihoods or generated text, the prediction, correct or not
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path

from llm_parity.results import ResultFileError, RunDir, read_json, schema_tag, sha256_file, sha256_of, write_json

PROJECT_TASKS_DIR = Path(__file__).parent / "eval_tasks"
# The per-sample metric each task type is judged by: lm-eval's acc (the chosen answer is the
# gold one) for multiple choice, its exact_match for generation.
SCORED_METRICS = ("acc", "exact_match")
LOGLIKELIHOOD, GENERATE = "loglikelihood", "generate_until"


@dataclass(frozen=True)
class AccuracyRequest:
    """What both sides run: lm-eval task names (ours in llm_parity/eval_tasks, or lm-eval's own),
    the first `limit` documents of each, `num_fewshot` (None: each task's own), whether a BOS
    starts every scored sequence, and the context length both score within."""

    tasks: tuple[str, ...]
    max_length: int
    limit: int | None = None
    num_fewshot: int | None = None
    add_bos_token: bool = True


def project_tasks() -> list[str]:
    """The names of the tasks the project ships (llm_parity/eval_tasks/*.yaml)."""
    return sorted(path.stem for path in PROJECT_TASKS_DIR.glob("*.yaml"))


def parse_tasks(text: str) -> tuple[str, ...]:
    """"T1,T2" -> ("T1", "T2"); refuses an empty list."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ValueError(f"--tasks {text!r}: give one or more lm-eval task names, e.g. {','.join(project_tasks())}")
    return names


def _project_task(name: str) -> dict:
    """One of our task YAMLs as an lm-eval config, its data files resolved beside it."""
    import yaml

    path = PROJECT_TASKS_DIR / f"{name}.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {split: str(PROJECT_TASKS_DIR / file) for split, file in files.items()}
    return config


def task_specs(names: tuple[str, ...]) -> list[str | dict]:
    """What lm-eval is given: our own tasks as configs, any other name as lm-eval's task name."""
    ours = set(project_tasks())
    return [_project_task(name) if name in ours else name for name in names]


def comparable_config(config: dict) -> dict:
    """A task config without what differs between machines or sides: the model arguments lm-eval
    copies into its metadata (the version stays) and the folder of local data files."""
    kept = {key: value for key, value in config.items() if key != "metadata"}
    kept["version"] = (config.get("metadata") or {}).get("version")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        kept["dataset_kwargs"] = {**config["dataset_kwargs"],
                                  "data_files": {split: Path(str(file)).name for split, file in files.items()}}
    return kept


def target_model_args(request: AccuracyRequest, *, model_dir: Path, url: str, served_name: str,
                      api_key: str | None) -> dict:
    """lm-eval's local-completions model against the served model, sending token ids."""
    return {"base_url": f"{url}/v1/completions", "model": served_name, "tokenizer": str(model_dir),
            "tokenizer_backend": "huggingface", "tokenized_requests": True, "add_bos_token": request.add_bos_token,
            "max_length": request.max_length, "num_concurrent": 1, "api_key": api_key}


def reference_model_args(request: AccuracyRequest, *, model_dir: Path, dtype: str, device: str) -> dict:
    """lm-eval's hf backend on the model folder in transformers."""
    return {"pretrained": str(model_dir), "dtype": dtype, "device": device, "add_bos_token": request.add_bos_token,
            "max_length": request.max_length, "batch_size": 1}


def run_lm_eval(side: str, request: AccuracyRequest, model_args: dict) -> tuple[dict, dict]:
    """Run lm-eval on one side; returns its results (samples included) and the ids each request fed."""
    import lm_eval

    from llm_parity.lm_eval_models import RecordingCompletions, RecordingHF

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model = (RecordingCompletions if side == "target" else RecordingHF)(**model_args)
    results = lm_eval.simple_evaluate(model=model, tasks=task_specs(request.tasks), limit=request.limit,
                                      num_fewshot=request.num_fewshot, log_samples=True, bootstrap_iters=0)
    return results, model.fed_ids


def _metric(task: str, sample: dict) -> str:
    for metric in SCORED_METRICS:
        if metric in sample:
            return metric
    raise ResultFileError(f"lm-eval task {task}: its samples report none of {', '.join(SCORED_METRICS)} "
                          f"(found {', '.join(sample.get('metrics', []))}); llm-parity compares those")


def _fed(fed_ids: dict, key: tuple, task: str, doc_id: int) -> list[int]:
    try:
        return fed_ids[key]
    except KeyError:
        raise ResultFileError(f"lm-eval task {task} document {doc_id}: the model recorded no token ids for "
                              "this request (a cached response?); rerun without a request cache") from None


def sample_record(task: str, sample: dict, fed_ids: dict, metric: str) -> dict:
    """Our record of one lm-eval sample: the ids each request scored or generated from, with its
    log-likelihood or text, the prediction and whether lm-eval's metric counted it correct."""
    doc_id = sample["doc_id"]
    record = {"doc_id": doc_id, "doc_hash": sample["doc_hash"], "prompt_hash": sample["prompt_hash"],
              "target": str(sample["target"]), "score": float(sample[metric]), "correct": float(sample[metric]) == 1.0}
    if metric == "acc":
        requests = [{"ids": _fed(fed_ids, tuple(args), task, doc_id), "loglikelihood": float(ll), "is_greedy": bool(greedy)}
                    for args, (ll, greedy) in zip(sample["arguments"], sample["filtered_resps"])]
        lls = [r["loglikelihood"] for r in requests]
        return {**record, "kind": LOGLIKELIHOOD, "requests": requests, "prediction": lls.index(max(lls))}
    (context, _), = sample["arguments"]
    text = sample["filtered_resps"][0] if isinstance(sample["filtered_resps"], list) else sample["filtered_resps"]
    return {**record, "kind": GENERATE, "requests": [{"ids": _fed(fed_ids, (context,), task, doc_id), "text": text}],
            "prediction": text}


def _bos_id(results: dict) -> int | None:
    """The BOS id of the side's tokenizer, as lm-eval reports it ([token, "id"]), or None."""
    bos = results.get("tokenizer_bos_token")
    return int(bos[1]) if bos and bos[1] not in (None, "None") else None


def samples_path(run: RunDir, side: str, task: str) -> Path:
    return run.side(side) / "accuracy" / f"{task}.json"


def write_side(run: RunDir, side: str, request: AccuracyRequest, results: dict, fed_ids: dict, *,
               backend: str, model_args: dict, manifest_sha256: str, dtype: str) -> Path:
    """Write the per-sample files, then <side>/accuracy.json naming each with its hash."""
    tasks = []
    for task in request.tasks:
        samples = sorted(results["samples"].get(task, []), key=lambda sample: sample["doc_id"])
        if not samples:
            raise ResultFileError(f"lm-eval task {task}: no samples came back (is it a group? name its subtasks)")
        metric = _metric(task, samples[0])
        records = [sample_record(task, sample, fed_ids, metric) for sample in samples]
        path = write_json(samples_path(run, side, task), {
            "schema": schema_tag("accuracy-samples"), "side": side, "task": task, "metric": metric,
            "samples": records}, "accuracy-samples")
        tasks.append({
            "name": task, "version": str(results["versions"].get(task)), "num_fewshot": results["n-shot"].get(task),
            "config_sha256": sha256_of(comparable_config(results["configs"][task])), "metric": metric,
            "samples": len(records), "lm_eval_accuracy": results["results"][task][f"{metric},none"],
            "samples_file": path.relative_to(run.side(side)).as_posix(), "samples_sha256": sha256_file(path)})
    shown_args = {key: value for key, value in model_args.items() if key != "api_key"}
    return write_json(run.accuracy(side), {
        "schema": schema_tag("accuracy"), "side": side, "backend": backend,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lm_eval_version": results["lm_eval_version"], "model_args": shown_args,
        "model_manifest_sha256": manifest_sha256, "dtype": dtype, "limit": request.limit,
        "num_fewshot": request.num_fewshot, "add_bos_token": request.add_bos_token, "max_length": request.max_length,
        "bos_token_id": _bos_id(results), "tasks": tasks}, "accuracy")


def read_side(run: RunDir, side: str) -> dict | None:
    """A side's accuracy.json with its per-sample documents under "sample_docs" (task -> document),
    each checked against the hash accuracy.json gives it; None when the side has no accuracy.json."""
    if not run.accuracy(side).is_file():
        return None
    summary = read_json(run.accuracy(side), "accuracy")
    docs = {}
    for task in summary["tasks"]:
        path = run.side(side) / task["samples_file"]
        doc = read_json(path, "accuracy-samples")
        if sha256_file(path) != task["samples_sha256"]:
            raise ResultFileError(f"{path}: sha256 {sha256_file(path)} is not the {task['samples_sha256']} "
                                  f"that {run.accuracy(side)} records for it")
        docs[task["name"]] = doc
    return {**summary, "sample_docs": docs}
