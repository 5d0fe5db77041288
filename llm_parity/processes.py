"""The reference in several processes at once (`inv reference --processes N`): `accelerate launch`
starts N copies of the model; each runs its share of every request's batches and appends each
record as it finishes, one JSON line, to a file of its own, which this process tails and hands
on record by record, so the pipeline writes them as it does for one process.

The records are byte for byte those of one process run with the same batch size and the same
torch threads per process. Every process forms the batches one process would (the same items
sorted by length, cut at the same size: `--batch-size`, or else the smallest any process's free
memory allows) and runs whole batches, so each row is computed beside the same rows as there. A
batched float computation's last bits also depend on the threads that split it, so that number
must match too: each process gets the cores divided among the processes unless OMP_NUM_THREADS
says otherwise. Provenance records both.

A temporary work folder holds spec.json (what every process loads), job-<n>.json (one
request: its kind, items and parameters; kind "stop" ends the processes) and rank-<r>.jsonl, the
lines of process r: {"ready": {...}} once its model is loaded, {"job": n, "record": {...}} per
record, {"job": n, "done": true} after its share, {"error": "..."} when it fails."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

from llm_parity import PROJECT_ROOT
from llm_parity.backend import Backend, SideSetup
from llm_parity.records import ForcedScore, Generation, PassageScore, Record
from llm_parity.reference import (MEMORY_FRACTION, Placement, TransformersBackend, TransformersRunner, Work,
                                  answer_work, generation_work, how_it_ran, passage_work)
from llm_parity.results import write_text_atomic
from llm_parity.serve import group_alive, log_tail, stop_group

POLL_S = 0.05
# How long the processes get to end after a stop job, and torchrun after SIGINT, before the next step.
STOP_GRACE_S = 30
# What accelerate, torchrun and the processes print, in the reference's results folder.
PROCESSES_LOG = "processes.log"
# request kind -> (the items' work in one process, the record type it gives)
KINDS: dict[str, tuple[Callable[..., Work], type]] = {
    "generate": (generation_work, Generation),
    "score": (passage_work, PassageScore),
    "score_answers": (answer_work, ForcedScore),
}


class ProcessesFailed(RuntimeError):
    """A reference process failed or its launcher exited early; the message says which and why."""


def launch_command(processes: int, folder: Path) -> list[str]:
    """`accelerate launch` of this module's worker in `processes` processes on this machine.

    --multi_gpu is accelerate's torchrun launcher, the one that starts several processes on one
    machine (with --cpu, accelerate 1.15 starts a single process unless given an MPI hostfile); on
    a CPU host each process then joins a gloo group (PartialState(cpu=True)), on a GPU host an NCCL
    group with one GPU each. Port 0: a free port, so runs side by side do not collide."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "--module", "llm_parity.processes", str(folder)]


def launch_env(processes: int, environ: dict[str, str]) -> dict[str, str]:
    """The processes' environment: `environ` with the cores divided among them (torchrun would
    give each one thread) unless OMP_NUM_THREADS is set, and this llm_parity first on the path,
    wherever another copy is installed."""
    env = dict(environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // processes)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PROJECT_ROOT), environ.get("PYTHONPATH"))))
    return env


def last_words(log_path: Path) -> str:
    """The log's last line that says something: torchrun ends its report of a failed process with
    the first failure's cause ("Signal 9 (SIGKILL) received by PID ...") and then a rule of "="."""
    lines = [line.strip() for line in log_tail(log_path, lines=40).splitlines()]
    return next((line for line in reversed(lines) if any(c.isalnum() for c in line)), "(nothing in the log)")


class _Tail:
    """The lines a process has appended to its file since the last read (a line still being
    written waits for the next)."""

    def __init__(self, path: Path):
        self.path, self._offset, self._partial = path, 0, b""

    def lines(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(line) for line in complete if line.strip()]


class ProcessesBackend(Backend):
    """The transformers reference in `placement.processes` processes (see the module docstring);
    opened by TransformersBackend.open when more than one is asked for."""

    name = TransformersBackend.name
    label = TransformersBackend.label

    def __init__(self, setup: SideSetup, folder: Path, process: subprocess.Popen, log_path: Path):
        self.placement: Placement = setup.options["placement"]
        self._max_model_len, self._log = setup.profile.serve["max_model_len"], setup.log
        self.folder, self.process, self.log_path = folder, process, log_path
        self._tails = [_Tail(folder / f"rank-{rank}.jsonl") for rank in range(self.placement.processes)]
        self._ready: dict[int, dict] = {}
        self._jobs = count()
        self._idle = False  # every process loaded and waiting for a job

    @classmethod
    def open(cls, setup: SideSetup) -> "ProcessesBackend":
        placement, profile = setup.options["placement"], setup.profile
        folder = Path(tempfile.mkdtemp(prefix="llm-parity-reference-"))
        spec = {"model_dir": str(setup.model_dir), "dtype": profile.dtype, "device": setup.device,
                "stop_ids": setup.suite["stop_ids"], "trust_remote_code": profile.model.get("trust_remote_code", False),
                "batch_size": placement.batch_size, "parent": os.getpid()}
        write_text_atomic(folder / "spec.json", json.dumps(spec))
        # Beside target/server.log, in the reference's folder: this backend is the reference's.
        log_path = setup.run.side("reference") / PROCESSES_LOG
        setup.log(f"reference: loading {setup.model_dir} ({profile.dtype}, {setup.device}) in {placement.processes} "
                  f"processes (accelerate launch; log {log_path})")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(launch_command(placement.processes, folder), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=launch_env(placement.processes, dict(os.environ)), start_new_session=True)
        backend = cls(setup, folder, process, log_path)
        try:
            backend._wait(lambda: len(backend._ready) < placement.processes, "loading the model",
                          lambda rank, line: None)
        except BaseException:
            backend.close()
            raise
        backend._idle = True
        return backend

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def _wait(self, waiting: Callable[[], bool], doing: str, take: Callable[[int, dict], None]) -> None:
        """Hand every line of the processes to `take` (after noting readiness) until `waiting()`
        is false; ProcessesFailed as soon as a process reports an error or the launcher exits
        first, once every line written before has been handed on."""
        while waiting():
            exited = self.process.poll() is not None
            errors = []
            for rank, tail in enumerate(self._tails):
                for line in tail.lines():
                    if "error" in line:
                        errors.append(f"process {rank}: {line['error']}")
                    elif "ready" in line:
                        self._ready[rank] = line["ready"]
                    else:
                        take(rank, line)
            if errors:
                raise ProcessesFailed(f"reference {'; '.join(errors)} while {doing} (log {self.log_path})")
            if exited and waiting():
                raise ProcessesFailed(f"reference processes: accelerate launch exited with code "
                                      f"{self.process.returncode} while {doing}: {last_words(self.log_path)} "
                                      f"(log {self.log_path})")
            time.sleep(POLL_S)

    def _request(self, kind: str, items: list[dict], on_record: Callable[[Record], None], **params) -> None:
        """One request through every process; each record to `on_record` as it arrives."""
        if not items:
            return
        job = next(self._jobs)
        self._idle = False
        write_text_atomic(self.folder / f"job-{job}.json", json.dumps({"kind": kind, "items": items, "params": params}))
        record_type, pending, received = KINDS[kind][1], set(range(self.placement.processes)), []

        def take(rank: int, line: dict) -> None:
            if line.get("done"):
                pending.discard(rank)
                return
            record = record_type.from_json(line["record"])
            received.append(record.id)
            on_record(record)
            if record.error:
                self._log(f"reference: {kind} {record.id} (process {rank}): {record.error}")

        self._wait(lambda: bool(pending), kind, take)
        self._idle = True
        if sorted(received) != sorted(item["id"] for item in items):
            raise ProcessesFailed(f"reference processes: {kind} gave records for {len(received)} items, not each of "
                                  f"the {len(items)} once (log {self.log_path})")

    def generate(self, prompts: list[dict], *, top_logprobs: int, on_record: Callable[[Generation], None]) -> None:
        self._request("generate", prompts, on_record, top_logprobs=top_logprobs)

    def score(self, passages: list[dict], *, on_record: Callable[[PassageScore], None]) -> None:
        self._request("score", passages, on_record)

    def score_answers(self, answers: list[dict], *, top_logprobs: int,
                      on_record: Callable[[ForcedScore], None]) -> None:
        self._request("score_answers", answers, on_record, top_logprobs=top_logprobs)

    def describe(self) -> dict:
        ready = [self._ready[rank] for rank in sorted(self._ready)]
        devices = ", ".join(dict.fromkeys(process["device"] for process in ready))
        line = how_it_ran(self.placement.processes, ready[0]["threads"], self.placement.batch_size)
        return {"device": devices, "server": None,
                "notes": [f"{line}; accelerate launch, {ready[0]['backend']} group, devices {devices}"]}

    def close(self) -> None:
        """Idle processes are told to stop and end by themselves; busy ones (an interrupted or failed
        request) are signalled at once: SIGINT makes torchrun end every process it started."""
        if self._idle:
            write_text_atomic(self.folder / f"job-{next(self._jobs)}.json", json.dumps({"kind": "stop"}))
            deadline = time.monotonic() + STOP_GRACE_S
            while group_alive(self.process) and time.monotonic() < deadline:
                time.sleep(POLL_S)
        stop_group(self.process, grace_s=STOP_GRACE_S)
        shutil.rmtree(self.folder, ignore_errors=True)


# The worker: what each launched process runs.

def _agreed_batch_size(state, work: Work) -> int:
    """The batch size every process can hold: the smallest any one's free memory allows, and no
    larger than gives each process a batch."""
    from accelerate.utils import gather_object

    fits = min(gather_object([work.memory_batch_size()]))
    return max(1, min(fits, math.ceil(len(work.items) / state.num_processes)))


def _run_share(state, runner: TransformersRunner, request: dict, batch_size: int | None,
               on_record: Callable[[Record], None]) -> None:
    """This process's share of a request: every process forms the same batches and runs every N-th
    (batches are sorted by length, so contiguous slices would give the last process all the longest)."""
    def log(line: str) -> None:
        print(f"[process {state.process_index}] {line}", flush=True)

    work = KINDS[request["kind"]][0](runner, request["items"], **request["params"])
    size = batch_size or _agreed_batch_size(state, work)
    batches = work.batches(size)
    share = batches[state.process_index::state.num_processes]
    log(f"reference: {len(work.items)} {work.noun} in {len(batches)} batches of up to {size}, {len(share)} of them here")
    work.run(share, log=log, on_record=on_record)


def _left_behind(launcher: int, parent: int) -> bool:
    """Whether this process lost its launcher (torchrun puts each process in a session of its own,
    so it outlives a launcher that was killed) or the process that launched it."""
    if os.getppid() != launcher:
        return True
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return True
    return False


def _next_request(path: Path, launcher: int, parent: int) -> dict:
    """The job at `path` once the parent has written it; a stop when the parent or the launcher is gone."""
    while not path.exists():
        if _left_behind(launcher, parent):
            return {"kind": "stop"}
        time.sleep(POLL_S)
    return json.loads(path.read_text(encoding="utf-8"))


def worker(folder: Path) -> None:
    """Load the model as spec.json says, then run this process's share of each job until "stop"."""
    import torch
    from accelerate import PartialState

    launcher = os.getppid()
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    on_cpu = spec["device"] == "cpu"
    state = PartialState(cpu=on_cpu)
    with open(folder / f"rank-{state.process_index}.jsonl", "a", encoding="utf-8") as out:
        def send(line: dict) -> None:
            out.write(json.dumps(line) + "\n")
            out.flush()

        try:
            device = "cpu" if on_cpu else str(state.device)
            # On the CPU the processes share one memory, so each sizes its batches from its part of it.
            runner = TransformersRunner(Path(spec["model_dir"]), dtype=spec["dtype"], stop_ids=spec["stop_ids"],
                                        device=device, trust_remote_code=spec["trust_remote_code"],
                                        memory_fraction=MEMORY_FRACTION / (state.num_processes if on_cpu else 1))
            send({"ready": {"device": device, "threads": torch.get_num_threads(), "backend": state.backend}})
            for job in count():
                request = _next_request(folder / f"job-{job}.json", launcher, spec["parent"])
                if request["kind"] == "stop":
                    return
                _run_share(state, runner, request, spec["batch_size"],
                           lambda record: send({"job": job, "record": record.to_json()}))
                send({"job": job, "done": True})
        except Exception as err:
            send({"error": " ".join(f"{type(err).__name__}: {err}".split())})  # one line, whatever the message
            raise


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
