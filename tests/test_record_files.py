"""Record files: JSON Lines written as records finish, rewritten in suite order, kept when the
writer is killed, and the one-document form written before still read (or refused clearly)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from llm_parity import PROJECT_ROOT
from llm_parity.record_files import RecordJournal, iter_records, read_records, record_file_exists, write_records
from llm_parity.records import Generation, generations_doc
from llm_parity.results import ResultFileError, RunDir, schema_tag, write_json

SUITE = {"sha256": "a" * 64}
MODEL = "b" * 64
DECODING = {"temperature": 0, "top_logprobs": 2, "dtype": "float32"}
IDS = [f"p{index}" for index in range(6)]


def generation(prompt_id: str) -> dict:
    return Generation(id=prompt_id, prompt_ids=[1, 2], output_ids=[3, 4], text="ab", logprobs=[-0.5, -0.25],
                      top_logprobs=[[[3, -0.5], [5, -1.5]], [[4, -0.25], [6, -2.0]]], finish_reason="length",
                      prompt_tokens=2, completion_tokens=2).to_json()


def not_run(prompt_id: str) -> dict:
    return Generation.failed({"id": prompt_id, "prompt_ids": [1, 2]}, "not run").to_json()


def header() -> dict:
    return generations_doc("target", SUITE, MODEL, DECODING, [])


def journal_bytes(path, finishing_order: list[str]) -> bytes:
    with RecordJournal(path, header(), "generations") as journal:
        for prompt_id in finishing_order:
            journal.add(generation(prompt_id))
        errors = journal.finish(IDS, not_run)
    assert errors == len(IDS) - len(finishing_order)
    return path.read_bytes()


def test_a_journal_ends_in_suite_order_with_the_same_bytes_whatever_order_records_finished(tmp_path):
    first = journal_bytes(tmp_path / "a.jsonl", IDS[:4])
    second = journal_bytes(tmp_path / "b.jsonl", list(reversed(IDS[:4])))
    assert first == second
    lines = first.decode().splitlines()
    assert json.loads(lines[0])["schema"] == "llm-parity/generations/v2"
    assert [json.loads(line)["id"] for line in lines[1:]] == IDS
    assert [json.loads(line)["error"] for line in lines[1:]] == [None] * 4 + ["not run"] * 2
    assert all(line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
               for line in lines)
    assert read_records(tmp_path / "a.jsonl", "generations")["records"][0] == generation("p0")


WRITER = """
import sys
from llm_parity.record_files import RecordJournal
from tests.test_record_files import generation, header
with RecordJournal(sys.argv[1], header(), "generations") as journal:
    for index in range(3):
        journal.add(generation(f"p{index}"))
    journal._handle.write('{"id": "p3", "outp')  # killed in the middle of a line
    journal._handle.flush()
    print("written", flush=True)
    sys.stdin.read()
"""


def test_a_killed_writer_keeps_every_finished_record_and_the_cut_line_is_named(tmp_path):
    path = tmp_path / "generations.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "written"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    kept = read_records(path, "generations", keep_cut_off=True)["records"]
    assert [record["id"] for record in kept] == ["p0", "p1", "p2"]
    with pytest.raises(ResultFileError, match=r"generations\.jsonl: line 5: the last line is cut off.*--resume"):
        read_records(path, "generations")


def test_a_bad_record_line_names_the_file_the_line_and_the_field(tmp_path):
    path = tmp_path / "generations.jsonl"
    write_records(path, {**header(), "records": [generation("p0"), generation("p1")]}, "generations")
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"output_ids":[3,4]', '"output_ids":[3,-4]')
    path.write_text("".join(lines))
    with pytest.raises(ResultFileError, match=rf"^{path}: line 3: field output_ids\[1\]: -4 is less than the minimum"):
        read_records(path, "generations")
    with pytest.raises(ResultFileError, match=rf"^{path}: record 1: field error"):
        write_records(path, {**header(), "records": [{**generation("p0"), "error": 3}]}, "generations")


def test_a_folder_written_before_record_files_still_reads(tmp_path):
    run = RunDir(tmp_path)
    old = {**header(), "schema": schema_tag("generations"), "records": [generation("p0")]}
    write_json(run.side("target") / "generations.json", old, "generations")
    assert record_file_exists(run.generations("target"))
    assert read_records(run.generations("target"), "generations") == old
    write_records(run.generations("target"), old, "generations")  # rewriting it replaces the old form
    assert not (run.side("target") / "generations.json").exists()
    assert read_records(run.generations("target"), "generations")["records"] == old["records"]


def test_a_record_file_of_an_unknown_version_is_refused_clearly(tmp_path):
    path = tmp_path / "generations.jsonl"
    path.write_text(json.dumps({**header(), "schema": "llm-parity/generations/v3"}) + "\n")
    with pytest.raises(ResultFileError, match=rf"^{path}: line 1: field schema: expected 'llm-parity/generations/v2', "
                                              r"found 'llm-parity/generations/v3'$"):
        iter_records(path, "generations")
    path.write_text("")
    with pytest.raises(ResultFileError, match="line 1: empty file"):
        read_records(path, "generations")
