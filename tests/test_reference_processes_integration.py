"""The reference spread out, for real on this CPU: two processes started by `accelerate launch`
give the same bytes as one process (generations, perplexity, teacher-forced scores), a process
that dies is one clear line with what finished handed on, and a model split between the CPU and
disk offload by device_map="auto" gives the records of the model loaded whole."""
import os
import signal
from pathlib import Path

import pytest

from llm_parity import pipeline
from llm_parity.backend import SideSetup
from llm_parity.download import ModelOrigin
from llm_parity.processes import ProcessesFailed
from llm_parity.records import Generation, decoding_of, generations_doc
from llm_parity.reference import Placement, TransformersBackend
from llm_parity.record_files import read_records, write_records
from llm_parity.results import RunDir, read_json
from llm_parity.serve import group_alive

pytestmark = pytest.mark.integration

# Smaller than the suite's 14 prompts, so each process runs several batches, the last one partial.
BATCH_SIZE = 4
SIDE_FILES = ("generations", "perplexity", "teacher_forced")


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread in this process and in each launched one: the last bits of a batched
    computation depend on how many threads split it, and 2 processes of 1 thread fill 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def prepared(root: Path, profile, model_dir: Path) -> tuple[RunDir, dict, dict]:
    run = RunDir(root)
    suite, manifest = pipeline.prepare(run, profile, model_dir, ModelOrigin("local", model_dir.name))
    return run, suite, manifest


def setup_for(run: RunDir, suite: dict, profile, model_dir: Path, placement: Placement, log=lambda line: None):
    return SideSetup(profile=profile, model_dir=model_dir, suite=suite, run=run, log=log,
                     options={"placement": placement})


def test_two_processes_give_the_bytes_of_one(tmp_path, demo_profile, tiny_model_dir, one_thread):
    one, suite, manifest = prepared(tmp_path / "one", demo_profile, tiny_model_dir)
    alone = setup_for(one, suite, demo_profile, tiny_model_dir, Placement(batch_size=BATCH_SIZE))
    pipeline.run_side("reference", alone, manifest)
    # Answers for teacher forcing: the reference's own, as the side that ran first.
    records = [Generation.from_json(r) for r in read_records(one.generations("reference"), "generations")["records"]]
    answers = generations_doc("target", suite, manifest["sha256"], decoding_of(demo_profile.decoding, "float32"), records)
    write_records(one.generations("target"), answers, "generations")
    pipeline.cross_score_side("reference", alone, manifest)

    two, suite, manifest = prepared(tmp_path / "two", demo_profile, tiny_model_dir)
    write_records(two.generations("target"), answers, "generations")
    lines = []
    spread = setup_for(two, suite, demo_profile, tiny_model_dir, Placement(processes=2, batch_size=BATCH_SIZE),
                       lines.append)
    assert pipeline.run_side("reference", spread, manifest).errors == 0

    for kind in SIDE_FILES:
        assert getattr(two, kind)("reference").read_bytes() == getattr(one, kind)("reference").read_bytes(), kind
    notes = read_json(two.provenance("reference"), "provenance")["notes"]
    assert ("transformers: 2 processes, 1 torch thread each, batches of up to 4 (--batch-size); accelerate launch, "
            "gloo group, devices cpu") in notes
    assert "transformers: 1 process, 1 torch thread, batches of up to 4 (--batch-size)" in \
        read_json(one.provenance("reference"), "provenance")["notes"]
    shares = (two.side("reference") / "processes.log").read_text()
    assert all(f"[process {rank}] reference: 14 prompts in 4 batches of up to 4, 2 of them here" in shares
               for rank in (0, 1))


def stat_fields(pid: int) -> list[str] | None:
    """A process's /proc stat fields after "pid (comm)": state, ppid, ...; None once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The processes `pid` started: here, the launched reference processes (torchrun gives each a session of its own)."""
    return [int(path.name) for path in Path("/proc").glob("[0-9]*") if (stat_fields(int(path.name)) or [0, 0])[1] == str(pid)]


def running(pid: int) -> bool:
    stat = stat_fields(pid)
    return stat is not None and stat[0] != "Z"


def test_a_process_that_dies_is_one_line_and_what_finished_is_handed_on(tmp_path, demo_profile, tiny_model_dir,
                                                                        one_thread):
    run, suite, _ = prepared(tmp_path / "run", demo_profile, tiny_model_dir)
    handed = []
    with TransformersBackend.open(setup_for(run, suite, demo_profile, tiny_model_dir,
                                            Placement(processes=2, batch_size=1))) as backend:
        launched = children(backend.process.pid)
        assert len(launched) == 2

        def kill_one_after_the_first(record):
            handed.append(record)
            if len(handed) == 1:
                os.kill(launched[1], signal.SIGKILL)

        with pytest.raises(ProcessesFailed) as failed:
            backend.generate(suite["prompts"], top_logprobs=5, on_record=kill_one_after_the_first)
    message = str(failed.value)
    assert "\n" not in message and "accelerate launch exited with code 1 while generate" in message
    assert "Signal 9 (SIGKILL)" in message  # torchrun's root cause, not its closing rule of "="
    assert 1 <= len(handed) < len(suite["prompts"]) and all(record.error is None for record in handed)
    assert not group_alive(backend.process) and not any(running(pid) for pid in launched)


def test_a_model_split_between_the_cpu_and_disk_gives_the_records_of_the_whole_model(tmp_path, demo_profile,
                                                                                   tiny_model_dir, one_thread):
    run, suite, _ = prepared(tmp_path / "run", demo_profile, tiny_model_dir)
    # The tiny model's embeddings and output layer are 65.7 MB each. 132 MB on the CPU fits the
    # embeddings beside the room accelerate keeps for its largest layer, and nothing after them:
    # the decoder layers and the output layer go to the offload folder.
    split = Placement(batch_size=BATCH_SIZE, device_map="auto", max_memory={"cpu": "132MB"},
                      offload_folder=str(tmp_path / "offload"))
    results = {}
    for name, placement in (("whole", Placement(batch_size=BATCH_SIZE)), ("split", split)):
        records = []
        with TransformersBackend.open(setup_for(run, suite, demo_profile, tiny_model_dir, placement)) as backend:
            backend.generate(suite["prompts"][:6], top_logprobs=5, on_record=records.append)
            backend.score(suite["passages"], on_record=records.append)
            results[name] = ({record.id: record.to_json() for record in records}, backend.describe())
    assert results["split"][0] == results["whole"][0]
    where = results["split"][1]
    assert where["device"] == "cpu, disk"
    assert "device map auto, max memory {'cpu': '132MB'}" in where["notes"][1]
    assert "cpu: 1 module (model.embed_tokens); disk: 4 modules" in where["notes"][1]
