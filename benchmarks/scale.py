"""Does the kit hold up at thousands of prompts? Two measurements, both run by default.

1. Pipeline scaling (--sizes 200,2000): suites of 200 and 2,000 prompts made from the default suite
   (copy n of each prompt gets the id <id>-<n> and " (n)" at the end of its last user message, so no
   two prompts are alike; the passages stay as they are), run through the real stages as a user runs
   them, each `inv` task a child process of its own into a temporary results root: reference, target
   (against one vLLM server started here once, its start printed apart), cross-score, compare (which
   writes the report and SHA256SUMS too), audit. Per stage and size: wall seconds, milliseconds per
   prompt and the child's peak memory (its own rusage, as /usr/bin/time -v reports it).
   Goal: time per prompt at 2,000 within 1.2x of that at 200, for each stage and for the whole.

2. Compare + report + audit on 10,000 records (--records 10000): a consistent synthetic results folder
   (per prompt both sides' answers of 256 tokens with the top-5 at every position, bf16-sized logprob
   noise, a few answers that split within each other's top-k, the passages' perplexity, each side's
   teacher-forced scores of the other's answers, provenance of the tiny-llama profile), written through
   llm_parity.record_files as a run writes it; then `inv compare` and `inv audit` on it, timed as child
   processes. Goal: both together in at most 10 s and at most 2 GiB peak memory, each task's processes
   together (both read and measure in two processes at once: its own and a forked one; sampled every
   0.05 s, pages they share counted twice). --cprofile runs them once more under cProfile and prints
   where the time goes (in the task's own process; the forked one's work shows as waiting for it).

    python benchmarks/scale.py [--sizes 200,2000] [--records 10000] [--rounds N] [--no-pipeline] [--no-records]

Needs the installed environment (make setup) and the tiny model (built first if missing). On 2 cores the
default run takes about 35 minutes (part 2: about 4 to write the folder of about 520 MiB, under a minute for
compare and audit, each under 1 GiB of memory)."""
from __future__ import annotations

import argparse
import os
import pstats
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil  # vLLM's own dependency: present wherever part 1 can run
from compare_10k import TOP_K, noisy, passage_scores, record_pair, splits_here, synthetic_suite

from llm_parity import PROJECT_ROOT
from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.provenance import collect
from llm_parity.record_files import RecordJournal, iter_records, write_records
from llm_parity.records import ForcedScore, decoding_of, generations_doc, perplexity_doc, teacher_forced_doc
from llm_parity.results import RunDir, schema_tag, sha256_of, write_json
from llm_parity.suite import DEFAULT_SUITE, load_suite_source
from llm_parity.tiny_model import build_tiny_model

PER_PROMPT_GOAL = 1.2
RECORDS_GOAL_S = 10.0
RECORDS_GOAL_MIB = 2048
STAGES = ("reference", "target", "cross-score", "compare", "audit")
# The target's work is done in the server: its processes' CPU seconds during the target stage, a row of its own.
SERVER_ROW = "  server cpu"
SERVER_START_LIMIT_S = 900
SERVER_URL = re.compile(r"^serve: (\S+)/v1 ", re.MULTILINE)
MIB = 1024  # ru_maxrss is in KiB on Linux
# What --cprofile names in the profiles of compare and audit, (label, file, function): each task's own steps,
# then what runs across them ("across").
BREAKDOWN = {
    "compare": (
        ("compare_runs: read every record file and measure, in one pass", "compare.py", "compare_runs"),
        ("write compare.json (canonical JSON, schema check, write)", "results.py", "write_json"),
        ("report: build, Markdown, HTML", "pipeline.py", "write_report"),
        ("SHA256SUMS: report/ hashed, the rest waited on (background)", "results.py", "write_sums"),
    ),
    "audit": (
        ("read and validate the documents, record files' headers", "audit.py", "read"),
        ("recompute the comparison, hold it to compare.json", "audit.py", "compare_json_recomputes_from_raw_files"),
        ("  of it compare_runs again, from the raw records", "compare.py", "compare_runs"),
        ("SHA256SUMS: waiting on the hashing in the background", "audit.py", "sums_cover_every_file_unchanged"),
    ),
    "across": (
        ("reading records (parse each line, schema check, the numbers after it)", "record_files.py", "_records"),
        ("  of it JSON parsing (json.loads)", "json/__init__.py", "loads"),
        ("  of it checking the lines and taking the numbers after them", "record_files.py", "_read_stored"),
        ("schema checks of whole documents (jsonschema-rs)", "results.py", "validate"),
        ("canonical JSON (json.dumps)", "results.py", "canonical_bytes"),
        ("per-prompt measures, a chunk of prompts at a time (compare_generations)", "compare.py", "compare_generations"),
        ("  of it teacher-forced measures per position (position_measures)", "divergence.py", "position_measures"),
    ),
}


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall
    cpu_s: float  # user + system: steadier than wall on a shared machine
    peak_mib: float  # its largest process
    together_mib: float = 0.0  # its processes together (TreeMemory), where run_task measured it


class TreeMemory:
    """The largest sum of resident memory over a process and its descendants, sampled every 0.05 s
    while it runs: a task that forks a second process holds both at once. Pages the two share since
    the fork count twice, so this is an upper bound."""

    def __init__(self, pid: int):
        self._root, self.peak_bytes = psutil.Process(pid), 0
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:  # the task has ended
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # a child that ended while being counted
                    pass
            self.peak_bytes = max(self.peak_bytes, total)

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._done.set()
        self._sampler.join()
        return self.peak_bytes / 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_sizes, default=[200, 2000],
                        help="suite sizes of part 1, comma-separated, smallest first (default 200,2000)")
    parser.add_argument("--records", type=int, default=10_000, help="records per side in part 2 (default 10000)")
    parser.add_argument("--output-len", type=int, default=256, help="output tokens per record in part 2 (default 256)")
    parser.add_argument("--splits", type=int, default=20,
                        help="records of part 2 whose answers split within top-k (default 20)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="timed rounds of compare and audit in part 2, the median printed (default 1: one round "
                             "of 10,000 records takes minutes on a small CPU)")
    parser.add_argument("--no-teacher-forced", action="store_true",
                        help="part 2 without teacher-forced files (compare then says 'not checked' for those checks)")
    parser.add_argument("--cprofile", action="store_true",
                        help="part 2: run compare and audit once more under cProfile and print where the time goes")
    parser.add_argument("--no-pipeline", action="store_true", help="skip part 1")
    parser.add_argument("--no-records", action="store_true", help="skip part 2")
    parser.add_argument("--keep", type=Path, help="write the results folders here and keep them (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, not {text!r}") from None
    if any(size < 1 for size in sizes) or sizes != sorted(sizes):
        raise argparse.ArgumentTypeError(f"sizes must be at least 1 and ascending: {text!r}")
    return sizes


def reap(child: subprocess.Popen, timeout_s: float | None = None) -> os.struct_rusage | None:
    """Wait for `child` and return its own rusage (os.wait4: /usr/bin/time's accounting; RUSAGE_CHILDREN
    would give the largest of every child so far); None when it is still running after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(child.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def run_task(task: str, *args: str, env: dict, log: Path, prefix: tuple[str, ...] = ()) -> Measured:
    """Run `inv TASK ARGS` (after `prefix`, e.g. cProfile) as a child process; its wall time and peak memory.
    Exit 1 (a failing verdict) still measures a finished run; anything else stops the benchmark."""
    with open(log, "ab") as out:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, *prefix, "-m", "invoke", task, *args], cwd=PROJECT_ROOT, env=env,
                                 stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(child.pid)
        usage = reap(child)
        seconds = time.monotonic() - started
        together = memory.stop()
    if child.returncode not in (0, 1):
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        sys.exit(f"inv {task} {' '.join(args)} failed (exit {child.returncode}); the end of {log}:\n" + "\n".join(tail))
    return Measured(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / MIB, max(together, usage.ru_maxrss / MIB))


def shown(measured: Measured) -> str:
    return (f"{measured.seconds:.1f} s (cpu {measured.cpu_s:.1f} s), peak {measured.peak_mib:.0f} MiB "
            f"(its processes together {measured.together_mib:.0f} MiB)")


def results_env(results: Path) -> dict:
    return {**os.environ, "LLM_PARITY_RESULTS": str(results)}


# Part 1: the pipeline at each size.

def varied(prompt: dict, copy: int) -> dict:
    """Copy `copy` of a suite prompt: its own id, and its last user message ending with " (copy)"."""
    messages = [dict(message) for message in prompt["messages"]]
    last_user = max(index for index, message in enumerate(messages) if message["role"] == "user")
    messages[last_user]["content"] += f" ({copy})"
    return {**prompt, "id": f"{prompt['id']}-{copy:04d}", "messages": messages}


def scaled_suite(size: int) -> dict:
    """A suite source of `size` prompts: the default suite's, copied in turn (copy 1 of each, then copy 2, ...)."""
    base = load_suite_source(DEFAULT_SUITE)
    count = len(base["prompts"])
    prompts = [varied(base["prompts"][index % count], index // count + 1) for index in range(size)]
    return {**base, "name": f"{base['name']}-x{size}", "prompts": prompts}


class Server:
    """`inv serve` of the profile as a child process in its own process group, stopped with Ctrl-C's signal."""

    def __init__(self, log: Path):
        self.log = log

    def __enter__(self) -> "Server":
        started = time.monotonic()
        with open(self.log, "wb") as out:
            self.child = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--profile", DEMO_PROFILE],
                                          cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.url = self._wait_for_url(started)
        except BaseException:
            self.__exit__()
            raise
        self.start_s = time.monotonic() - started
        return self

    def _wait_for_url(self, started: float) -> str:
        while time.monotonic() - started < SERVER_START_LIMIT_S:
            if found := SERVER_URL.search(self.log.read_text(encoding="utf-8", errors="replace")):
                return found.group(1)
            if self.child.poll() is not None:
                sys.exit(f"inv serve exited ({self.child.returncode}) before it served; see {self.log}")
            time.sleep(0.5)
        sys.exit(f"inv serve did not serve within {SERVER_START_LIMIT_S} s; see {self.log}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server's processes have used so far."""
        root = psutil.Process(self.child.pid)
        total = 0.0
        for process in (root, *root.children(recursive=True)):
            try:
                total += sum(process.cpu_times()[:2])
            except psutil.NoSuchProcess:  # a helper process that ended in between
                pass
        return total

    def __exit__(self, *exc) -> None:
        os.killpg(self.child.pid, signal.SIGINT)
        usage = reap(self.child, timeout_s=60)
        if usage is None:
            os.killpg(self.child.pid, signal.SIGKILL)
            usage = reap(self.child)
        self.peak_mib = usage.ru_maxrss / MIB


def pipeline_at(size: int, root: Path, server: Server) -> dict[str, Measured]:
    """Every stage of one run of a `size`-prompt suite, each an `inv` child process; SERVER_ROW holds the
    CPU time the server spent during the target stage."""
    suite = root / f"suite-{size}.json"
    write_json(suite, scaled_suite(size), "suite-source")
    run = f"scale-{size}"
    env, log = results_env(root / "results"), root / f"stages-{size}.log"
    side = ("--profile", DEMO_PROFILE, "--run", run, "--suite", str(suite))
    stages = {
        "reference": ("reference", *side),
        "target": ("target", *side, "--server-url", server.url),
        "cross-score": ("cross-score", *side),
        "compare": ("compare", "--profile", DEMO_PROFILE, "--run", run, "--lang", "en"),
        "audit": ("audit", "--run", run),
    }
    measured = {}
    for stage in STAGES:
        server_before = server.cpu_s()
        measured[stage] = run_task(*stages[stage], env=env, log=log)
        print(f"  {size} prompts: {stage}: {shown(measured[stage])}", flush=True)
        if stage == "target":
            server_cpu = server.cpu_s() - server_before
            measured[SERVER_ROW] = Measured(server_cpu, server_cpu, 0)
            print(f"  {size} prompts: the server during the target stage: cpu {server_cpu:.1f} s", flush=True)
    return measured


def verdict(ratio: float, goal: float) -> str:
    return f"{ratio:.2f}x (goal <= {goal:g}x: {'met' if ratio <= goal else 'NOT met'})"


def print_scaling(sizes: list[int], measured: dict[int, dict[str, Measured]]) -> None:
    """A row per stage: wall seconds, ms per prompt and peak MiB at each size, and the ratio of the
    largest size's time per prompt to the smallest's, wall (the goal's) and cpu; then the whole pipeline."""
    small, large = sizes[0], sizes[-1]
    whole = {size: Measured(sum(m.seconds for stage, m in measured[size].items() if stage in STAGES),
                            sum(m.cpu_s for stage, m in measured[size].items() if stage in STAGES), 0)
             for size in sizes}
    head = "".join(f" | {f'{size} prompts: s':>17} {'ms/prompt':>9} {'peak MiB':>8}" for size in sizes)
    print(f"{'stage':<14}{head} | {f'cpu {large}/{small}':>14} | per prompt {large}/{small}")
    for stage in (*measured[small], "whole pipeline"):
        rows = {size: whole[size] if stage == "whole pipeline" else measured[size][stage] for size in sizes}
        cells = "".join(f" | {rows[size].seconds:17.1f} {rows[size].seconds / size * 1000:9.1f} "
                        f"{f'{rows[size].peak_mib:.0f}' if rows[size].peak_mib else '':>8}" for size in sizes)
        cpu_ratio = (rows[large].cpu_s / large) / (rows[small].cpu_s / small)
        ratio = (rows[large].seconds / large) / (rows[small].seconds / small)
        print(f"{stage:<14}{cells} | {cpu_ratio:13.2f}x | {verdict(ratio, PER_PROMPT_GOAL)}")


def pipeline_part(args: argparse.Namespace, root: Path) -> None:
    build_tiny_model(log=lambda _: None)
    print(f"part 1: the pipeline on the tiny model ({DEMO_PROFILE}) at {', '.join(map(str, args.sizes))} prompts",
          flush=True)
    with Server(root / "server.log") as server:
        print(f"  one vLLM server for every target stage: started in {server.start_s:.1f} s (not counted below)",
              flush=True)
        measured = {size: pipeline_at(size, root, server) for size in args.sizes}
    print(f"  the server's peak memory: {server.peak_mib:.0f} MiB (its largest process)")
    print_scaling(args.sizes, measured)


# Part 2: compare + report + audit on a large synthetic folder.

def synthetic_manifest() -> dict:
    files = [{"path": "model.safetensors", "size": 16_000_000_000, "sha256": "e" * 64}]
    return {"schema": schema_tag("manifest"), "source": "local", "repo_id": "synthetic", "revision": None,
            "resolved_revision": None, "created": "2026-01-01T00:00:00+00:00", "files": files,
            "sha256": sha256_of(files)}


def forced_score(scorer: dict, answer: dict) -> ForcedScore:
    """The scorer's teacher-forced record of the other side's answer: up to and at the first split the
    prefix is the scorer's own, so is its top-k; past it, the answering side's top-k with noise."""
    shared = next((i for i, (a, b) in enumerate(zip(scorer["output_ids"], answer["output_ids"])) if a != b),
                  len(answer["output_ids"]))
    rng = random.Random(answer["id"])
    tops = [scorer["top_logprobs"][i] if i <= shared else noisy(rng, top) for i, top in enumerate(answer["top_logprobs"])]
    logprobs = [dict(map(tuple, top))[token] for top, token in zip(tops, answer["output_ids"])]
    return ForcedScore(id=answer["id"], answer_ids=answer["output_ids"], logprobs=logprobs, top_logprobs=tops)


def write_generations(run: RunDir, suite: dict, manifest_sha: str, decoding: dict, args: argparse.Namespace,
                      rng: random.Random) -> dict[str, dict]:
    """Both sides' generations.records, a record at a time (the whole would not fit in memory); returns
    each side's answers as teacher_forced_doc needs them (ids, prompt ids and output ids only)."""
    answers = {"target": [], "reference": []}
    with ExitStack() as stack:
        journals = {side: stack.enter_context(RecordJournal(
            run.generations(side), generations_doc(side, suite, manifest_sha, decoding, []), "generations"))
            for side in answers}
        for index, prompt in enumerate(suite["prompts"]):
            pair = record_pair(rng, prompt, args.output_len, splits=splits_here(index, args.records, args.splits))
            for side, record in zip(("target", "reference"), pair):
                journals[side].add(record.to_json())
                answers[side].append({"id": record.id, "error": None, "prompt_ids": record.prompt_ids,
                                      "output_ids": record.output_ids})
    return {side: {"side": side, "records": records} for side, records in answers.items()}


def write_teacher_forced(run: RunDir, suite: dict, manifest_sha: str, answers: dict[str, dict]) -> None:
    """Each side's teacher-forced.records, made from the generations just written, read back a pair at a time."""
    with ExitStack() as stack:
        journals = {scorer: stack.enter_context(RecordJournal(
            run.teacher_forced(scorer), teacher_forced_doc(scorer, suite, manifest_sha, answers[answered], TOP_K, []),
            "teacher-forced")) for scorer, answered in (("reference", "target"), ("target", "reference"))}
        _, targets = iter_records(run.generations("target"), "generations")
        _, references = iter_records(run.generations("reference"), "generations")
        for target, reference in zip(targets, references):
            journals["reference"].add(forced_score(reference, target).to_json())
            journals["target"].add(forced_score(target, reference).to_json())


def write_provenance(run: RunDir, suite: dict, manifest_sha: str, decoding: dict) -> None:
    profile = load_profile(DEMO_PROFILE)
    recorded = {"name": profile.name, "sha256": profile.sha256, "document": profile.document}
    for side, backend, label in (("target", "vllm-http", "vLLM (synthetic)"), ("reference", "transformers", "transformers (synthetic)")):
        write_json(run.provenance(side), collect(
            side=side, backend=backend, backend_label=label, profile=recorded, model_path="synthetic",
            manifest_sha256=manifest_sha, suite_sha256=suite["sha256"], decoding=decoding, device="cpu", duration_s=0,
            notes=["synthetic records written by benchmarks/scale.py"]), "provenance")


def write_synthetic_run(run: RunDir, args: argparse.Namespace) -> None:
    """A results folder of `args.records` prompts as both sides and teacher forcing would leave it."""
    rng = random.Random(args.seed)
    suite = synthetic_suite(rng, args.records, args.output_len)
    manifest = synthetic_manifest()
    write_json(run.suite, suite, "suite")
    write_json(run.manifest, manifest, "manifest")
    decoding = decoding_of({"top_logprobs": TOP_K}, "bfloat16")
    answers = write_generations(run, suite, manifest["sha256"], decoding, args, rng)
    for side, scores in passage_scores(rng, suite["passages"]).items():
        write_records(run.perplexity(side), perplexity_doc(side, suite, manifest["sha256"], scores), "perplexity")
    if not args.no_teacher_forced:
        write_teacher_forced(run, suite, manifest["sha256"], answers)
    write_provenance(run, suite, manifest["sha256"], decoding)


def profiled_share(path: Path, rows: tuple) -> list[tuple[str, float]]:
    """(label, cumulative seconds) of each (label, file, function) of `rows` in a cProfile file."""
    stats = pstats.Stats(str(path)).stats
    return [(label, sum(entry[3] for (file, _, function), entry in stats.items()
                        if file.endswith(f"/{suffix}") and function == name)) for label, suffix, name in rows]


def print_breakdown(root: Path, env: dict, log: Path) -> None:
    """compare and audit once more under cProfile: the time of each of their steps, then of what runs across
    them. The profiler slows Python code more than C code (json's parser), so the shares are approximate."""
    for task, args in (("compare", ("--profile", DEMO_PROFILE, "--run", "synthetic", "--lang", "en")),
                       ("audit", ("--run", "synthetic"))):
        out = root / f"{task}.prof"
        measured = run_task(task, *args, env=env, log=log, prefix=("-m", "cProfile", "-o", str(out)))
        total = pstats.Stats(str(out)).total_tt
        print(f"  inv {task} under cProfile: {measured.seconds:.1f} s wall, {total:.1f} s profiled")
        for heading, rows in (("its steps", BREAKDOWN[task]), ("across them", BREAKDOWN["across"])):
            print(f"    {heading}:")
            for label, seconds in profiled_share(out, rows):
                print(f"      {label:<62} {seconds:7.1f} s {seconds / total:6.1%}")


def records_part(args: argparse.Namespace, root: Path) -> None:
    results = root / "results"
    run = RunDir.under(results, "synthetic")
    forced = "" if args.no_teacher_forced else ", teacher-forced both ways"
    print(f"part 2: compare + report + audit on {args.records} records per side ({args.output_len} tokens, "
          f"top-{TOP_K}{forced})", flush=True)
    started = time.monotonic()
    write_synthetic_run(run, args)
    size = sum(path.stat().st_size for path in run.root.rglob("*") if path.is_file())
    print(f"  wrote the folder in {time.monotonic() - started:.1f} s: {size / 2**20:.0f} MiB", flush=True)
    env, log = results_env(results), root / "records.log"
    rounds = []
    for round_ in range(args.rounds):
        compared = run_task("compare", "--profile", DEMO_PROFILE, "--run", "synthetic", "--lang", "en", env=env, log=log)
        audited = run_task("audit", "--run", "synthetic", env=env, log=log)
        rounds.append((compared, audited))
        print(f"  round {round_ + 1}: compare (with report and SHA256SUMS) {shown(compared)}; audit {shown(audited)}",
              flush=True)
    compare_s = statistics.median(c.seconds for c, _ in rounds)
    audit_s = statistics.median(a.seconds for _, a in rounds)
    peak = max(max(c.together_mib, a.together_mib) for c, a in rounds)
    total = compare_s + audit_s
    print(f"compare+report+audit on {args.records} records: {total:.1f} s (median compare {compare_s:.1f} s + "
          f"audit {audit_s:.1f} s) = {total / RECORDS_GOAL_S:.2f}x the {RECORDS_GOAL_S:g} s goal: "
          f"{'met' if total <= RECORDS_GOAL_S else 'NOT met'}")
    print(f"peak memory, a task's processes together {peak:.0f} MiB = {peak / RECORDS_GOAL_MIB:.2f}x the {RECORDS_GOAL_MIB / 1024:g} GiB goal: "
          f"{'met' if peak <= RECORDS_GOAL_MIB else 'NOT met'}")
    if args.cprofile:
        print_breakdown(root, env, log)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not args.no_pipeline:
            pipeline_part(args, root)
        if not args.no_records:
            records_part(args, root)


if __name__ == "__main__":
    main()
