"""The reference's placement options without a model: what is refused and how it reads, the
`accelerate launch` command as accelerate itself parses it, the processes' threads, reading a
process's lines as they are written, a process's error as one line, and the knobs of
`make reference`."""
import json
import subprocess

import pytest

from llm_parity import PROJECT_ROOT, cli
from llm_parity.backend import SideSetup
from llm_parity.processes import ProcessesBackend, ProcessesFailed, _Tail, launch_command, launch_env
from llm_parity.profiles import load_profile
from llm_parity.records import Generation
from llm_parity.reference import Placement, main_device, parse_max_memory
from llm_parity.results import RunDir
from llm_parity.serve import stop_group
from test_ascend_path import make_dry_run


@pytest.mark.parametrize(("options", "says"), [
    ({"processes": 0}, "processes must be at least 1"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"device_map": "everywhere"}, "choose one of auto, balanced, balanced_low_0, sequential"),
    ({"max_memory": {"cpu": "1GiB"}}, "need a device map"),
    ({"offload_folder": "off"}, "need a device map"),
    ({"device_map": "auto", "processes": 2}, "cannot be combined"),
])
def test_a_placement_that_cannot_run_is_refused_with_the_reason(options, says):
    with pytest.raises(ValueError, match=says):
        Placement(**options)


def test_max_memory_reads_as_transformers_takes_it():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    with pytest.raises(ValueError, match="DEVICE=SIZE pairs"):
        parse_max_memory("70GiB")


def test_ids_go_to_the_first_accelerator_of_a_device_map():
    assert main_device({"model.embed_tokens": 1, "model.layers": 0, "lm_head": "cpu"}) == "cuda:1"
    assert main_device({"model.embed_tokens": "cpu", "lm_head": "disk"}) == "cpu"
    assert main_device(None) == "cpu"


def test_the_task_refuses_a_bad_placement_on_one_line_before_anything_runs(tmp_path):
    with pytest.raises(cli.StageFailed) as failed:
        cli.reference(profile="tiny-llama", run="r", results=str(tmp_path), placement={"processes": "0"})
    assert failed.value.code == cli.EXIT_UNUSABLE
    assert str(failed.value) == "error: processes must be at least 1, not 0"
    assert not (tmp_path / "r").exists()


def test_accelerate_launch_reads_the_command_as_n_processes_of_the_worker_module(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    argv = launch_command(3, tmp_path)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(argv[3:])
    # --multi_gpu is accelerate's launcher of several processes; on a CPU host the workers join gloo.
    assert (args.multi_gpu, args.num_processes, args.num_machines, args.main_process_port) == (True, 3, 1, 0)
    assert (args.module, args.training_script, args.training_script_args) == (True, "llm_parity.processes",
                                                                               [str(tmp_path)])


def test_the_processes_share_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert launch_env(2, {})["OMP_NUM_THREADS"] == "4"
    assert launch_env(16, {})["OMP_NUM_THREADS"] == "1"
    assert launch_env(2, {"OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "1"
    assert launch_env(2, {"PYTHONPATH": "elsewhere"})["PYTHONPATH"].split(":") == [str(PROJECT_ROOT), "elsewhere"]


def test_a_line_still_being_written_waits_for_the_next_read(tmp_path):
    path = tmp_path / "rank-0.jsonl"
    tail = _Tail(path)
    assert tail.lines() == []  # the process has not written yet
    path.write_text('{"ready": {"device": "cpu"}}\n{"job": 0, "rec')
    assert tail.lines() == [{"ready": {"device": "cpu"}}]
    with path.open("a") as handle:
        handle.write('ord": {"id": "p1"}}\n')
    assert tail.lines() == [{"job": 0, "record": {"id": "p1"}}]
    assert tail.lines() == []


def test_an_error_line_fails_at_once_after_the_records_written_before_it(tmp_path):
    prompts = [{"id": name, "prompt_ids": [1, 2], "max_tokens": 4} for name in ("p1", "p2")]
    (tmp_path / "rank-0.jsonl").write_text(json.dumps({"job": 0, "record": Generation.failed(prompts[0], "x").to_json()})
                                           + "\n")
    (tmp_path / "rank-1.jsonl").write_text(json.dumps({"error": "OSError: no safetensors weights in /m"}) + "\n")
    setup = SideSetup(profile=load_profile("tiny-llama"), model_dir=tmp_path, suite={}, run=RunDir(tmp_path),
                      options={"placement": Placement(processes=2)})
    launcher = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a launcher that is still running
    try:
        handed = []
        with pytest.raises(ProcessesFailed) as failed:
            ProcessesBackend(setup, tmp_path, launcher, tmp_path / "processes.log").generate(
                prompts, top_logprobs=5, on_record=handed.append)
    finally:
        stop_group(launcher, grace_s=5)
    assert str(failed.value) == (f"reference process 1: OSError: no safetensors weights in /m while generate "
                                 f"(log {tmp_path / 'processes.log'})")
    assert [record.id for record in handed] == ["p1"]


def test_a_failed_reference_process_exits_3_on_one_line():
    def fail():
        raise ProcessesFailed("reference process 1: OSError: gone while generate (log x)")

    with pytest.raises(cli.StageFailed) as failed:
        cli.guarded(fail)
    assert (failed.value.code, str(failed.value)) == (cli.EXIT_SERVER, "error: reference process 1: OSError: gone "
                                                                        "while generate (log x)")


def reference_command(*knobs: str) -> str:
    out = make_dry_run("reference", "PROFILE=tiny-llama", *knobs)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.replace("\\\n", " ").splitlines() if line.startswith("docker run"))


def test_make_reference_passes_the_placement_knobs_the_user_set():
    plain = reference_command()
    assert plain.endswith("reference --profile tiny-llama --run tiny-llama --device cpu")
    assert "--shm-size" not in plain and "/work/offload" not in plain and "-e OMP_NUM_THREADS" in plain
    spread = reference_command("PROCESSES=2", "BATCH_SIZE=8")
    assert spread.endswith("--device cpu --processes 2 --batch-size 8") and "--shm-size=1g" in spread
    mapped = reference_command("DEVICE_MAP=auto", "MAX_MEMORY=0=70GiB,cpu=200GiB", f"OFFLOAD_FOLDER={PROJECT_ROOT}/off")
    assert mapped.endswith("--device-map auto --max-memory 0=70GiB,cpu=200GiB --offload-folder /work/offload")
    assert f"-v {PROJECT_ROOT}/off:/work/offload" in mapped
