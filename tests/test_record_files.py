"""Record files: JSON Lines written as records finish, rewritten in suite order, kept when the
writer is killed, and the one-document form written before still read (or refused clearly)."""
import json
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from llm_parity import PROJECT_ROOT
from llm_parity.record_files import (RecordJournal, header_of, iter_records, read_records, record_file_exists,
                                     write_records)
from llm_parity.records import (ForcedScore, Generation, PassageScore, TopK, generations_doc, teacher_forced_doc,
                                top_k_arrays)
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
    assert json.loads(lines[0])["schema"] == "llm-parity/generations/v3"
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
    path.write_text(json.dumps({**header(), "schema": "llm-parity/generations/v4"}) + "\n")
    with pytest.raises(ResultFileError, match=rf"^{path}: line 1: field schema: expected 'llm-parity/generations/v3' "
                                              r"\('llm-parity/generations/v2' written before\), found 'llm-parity/generations/v4'$"):
        iter_records(path, "generations")
    path.write_text("")
    with pytest.raises(ResultFileError, match="line 1: empty file"):
        read_records(path, "generations")


# Packed numbers (the v3 form): logprobs as "<f4|f8>:<hex>", top_logprobs as arrays.

def float32_exact(rng: random.Random) -> float:
    return float(np.float32(rng.uniform(-20.0, 0.0)))


def generation_of(prompt_id: str, logprobs: list[float], top: list[list], error: str | None = None) -> dict:
    output_ids = [pairs[0][0] if pairs else 7 for pairs in top]
    return Generation(id=prompt_id, prompt_ids=[1, 2], output_ids=output_ids, text="t", logprobs=logprobs,
                      top_logprobs=top, finish_reason="length", prompt_tokens=2, completion_tokens=len(output_ids),
                      error=error).to_json()


def varied_records() -> list[dict]:
    """float32-exact and arbitrary float64 values, ragged and empty top-k, positions with no
    alternatives, an integer logprob, -0.0, and error records."""
    rng = random.Random(7)
    exact = [[[token, float32_exact(rng)] for token in (11, 12, 13)] for _ in range(8)]
    ragged = [[[3, -0.1], [4, -0.2], [5, -0.3]], [[6, -1e-300]], [], [[8, -123456.789], [2**31 - 1, -1e300]]]
    return [
        generation_of("f4", [pairs[0][1] for pairs in exact], exact),
        generation_of("f8", [rng.uniform(-30.0, 0.0) for _ in range(4)] + [0, -0.0], ragged + [[[1, 0]], [[2, -0.0]]]),
        generation_of("no-alternatives", [-0.5, -0.25], [[], []]),
        not_run("error"),
        {**not_run("partial"), "logprobs": [-0.5], "top_logprobs": [[[3, -0.5]]], "error": "stopped"},
    ]


def packed_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_packed_records_read_back_exactly_and_rewrite_to_the_same_bytes(tmp_path):
    records = varied_records()
    path = tmp_path / "generations.jsonl"
    write_records(path, {**header(), "records": records}, "generations")
    first = path.read_bytes()
    read = read_records(path, "generations")
    assert read["schema"] == "llm-parity/generations/v3"
    assert read["records"] == records
    assert [[type(value) for value in r["logprobs"]] for r in read["records"]] == [[float] * len(r["logprobs"]) for r in records]
    write_records(path, read, "generations")
    assert path.read_bytes() == first
    write_records(tmp_path / "again.jsonl", {**header(), "records": varied_records()}, "generations")
    assert (tmp_path / "again.jsonl").read_bytes() == first
    lines = {line["id"]: line for line in packed_lines(path)}
    assert lines["f4"]["logprobs"].startswith("f4:") and lines["f4"]["top_logprobs"]["logprobs"].startswith("f4:")
    assert lines["f8"]["logprobs"].startswith("f8:") and lines["f8"]["top_logprobs"]["logprobs"].startswith("f8:")
    assert lines["f4"]["output_ids"] == [11] * 8  # ids stay plain JSON
    assert {name: lines["f8"]["top_logprobs"][name] for name in ("positions", "width")} == {"positions": 6, "width": 3}
    assert lines["error"]["logprobs"] == "f4:"
    assert lines["error"]["top_logprobs"] == {"ids": "i4:", "logprobs": "f4:", "positions": 0, "width": 0}
    assert lines["no-alternatives"]["top_logprobs"] == {"ids": "i4:", "logprobs": "f4:", "positions": 2, "width": 0}


def test_every_kind_packs_and_reads_back(tmp_path):
    scores = {**header(), "schema": schema_tag("perplexity"), "records": [
        PassageScore(id="x", logprobs=[-1.0, -2.5, -0.125]).to_json(), PassageScore.failed({"id": "y"}, "too long").to_json()]}
    del scores["decoding"]
    forced = teacher_forced_doc("reference", SUITE, MODEL, {"side": "target", "records": []}, 2, [
        ForcedScore(id="p0", answer_ids=[3, 4], logprobs=[-0.5, -0.125], top_logprobs=[[[3, -0.5]], [[9, -0.0625], [4, -0.125]]]),
        ForcedScore.failed({"id": "p1", "answer_ids": [5]}, "out of memory")])
    for kind, doc in (("perplexity", scores), ("teacher-forced", forced)):
        path = tmp_path / f"{kind}.jsonl"
        write_records(path, doc, kind)
        assert read_records(path, kind)["records"] == doc["records"]
        assert packed_lines(path)[0]["logprobs"].startswith("f4:")
        columns = read_records(path, kind, columns=True)["records"]
        assert np.array_equal(columns[0]["logprobs"], doc["records"][0]["logprobs"])
    assert packed_lines(tmp_path / "teacher-forced.jsonl")[0]["top_logprobs"]["width"] == 2
    assert json.loads((tmp_path / "teacher-forced.jsonl").read_text().splitlines()[0])["top_logprobs"] == 2  # the header's


def write_earlier_form(path, records: list[dict], form: str) -> None:
    """A record file as the writers before packed numbers left it: every number as JSON text."""
    if form == "v1":
        write_json(path.with_suffix(".json"), {**header(), "records": records}, "generations")
        return
    lines = [{**header_of(header(), "generations"), "schema": "llm-parity/generations/v2"}, *records]
    path.write_text("".join(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n" for line in lines))


@pytest.mark.parametrize("form", ["v1", "v2", "v3"])
def test_columns_are_the_arrays_of_the_list_form_whatever_the_file_form(tmp_path, form):
    records = varied_records()
    path = tmp_path / "generations.jsonl"
    if form == "v3":
        write_records(path, {**header(), "records": records}, "generations")
    else:
        write_earlier_form(path, records, form)
    assert read_records(path, "generations")["records"] == records
    read = read_records(path, "generations", columns=True)["records"]
    if form != "v1":
        assert [r["id"] for r in iter_records(path, "generations", columns=True)[1]] == [r["id"] for r in records]
    for record, columns in zip(records, read):
        assert isinstance(columns["top_logprobs"], TopK)
        # as stored: float32 where every value is one, else float64 (compare measures in float64)
        assert columns["logprobs"].dtype in (np.float32, np.float64) and columns["logprobs"].tolist() == record["logprobs"]
        expected = top_k_arrays(record["top_logprobs"])
        assert columns["top_logprobs"].ids.dtype == np.int32 and columns["top_logprobs"].logprobs.dtype in (np.float32, np.float64)
        assert np.array_equal(columns["top_logprobs"].ids, expected.ids)
        assert np.array_equal(columns["top_logprobs"].logprobs, expected.logprobs)
        assert columns["top_logprobs"].ids.shape == (len(record["top_logprobs"]), expected.ids.shape[1])
        assert {k: v for k, v in columns.items() if k not in ("logprobs", "top_logprobs")} == \
            {k: v for k, v in record.items() if k not in ("logprobs", "top_logprobs")}


def test_a_journal_of_the_earlier_form_is_resumed_into_the_packed_form(tmp_path):
    path = tmp_path / "generations.jsonl"
    write_earlier_form(path, [generation("p0"), generation("p1")], "v2")
    kept = read_records(path, "generations", keep_cut_off=True)["records"]
    with RecordJournal(path, header(), "generations", kept) as journal:
        journal.add(generation("p2"))
        journal.finish(IDS[:3], not_run)
    assert json.loads(path.read_text().splitlines()[0])["schema"] == "llm-parity/generations/v3"
    assert read_records(path, "generations")["records"] == [generation(p) for p in IDS[:3]]


def f4(values) -> str:
    return "f4:" + np.asarray(values, "<f4").tobytes().hex()


def i4(values) -> str:
    return "i4:" + np.asarray(values, "<i4").tobytes().hex()


@pytest.mark.parametrize("field, mutate, message", [
    ("logprobs", lambda r: r.update(logprobs="f4:0000zz00"), "not hexadecimal"),
    ("logprobs", lambda r: r.update(logprobs="f4:000000"), "3 bytes, not a whole number of f4 values"),
    ("logprobs", lambda r: r.update(logprobs="f8:" + f4([-0.5, -1.5, -2.5])[3:]), "12 bytes, not a whole number of f8"),
    ("logprobs", lambda r: r.update(logprobs="f4:0000 0000"), "not lower-case hexadecimal digits only"),
    ("logprobs", lambda r: r.update(logprobs="f4:0000803F"), "not lower-case hexadecimal digits only"),
    ("logprobs", lambda r: r.update(logprobs="f2:0000"), "does not match"),
    ("logprobs", lambda r: r.update(logprobs=f4([-0.5, np.nan])), "holds nan, expected finite numbers"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(ids=r["top_logprobs"]["ids"][:-1]), "not hexadecimal"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(ids=r["top_logprobs"]["ids"][:-2]),
     "15 bytes, not a whole number of i4 values"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(ids="i4:" + (b"\0" * 12).hex()),
     r"3 values, expected width 2 x 2 positions = 4"),
    ("top_logprobs.logprobs", lambda r: r["top_logprobs"].update(logprobs=f4([-0.5, -1.5, -0.25])),
     r"3 values, expected width 2 x 2 positions = 4"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(width=1),
     r"4 values, expected width 1 x 2 positions = 2"),
    ("top_logprobs.width", lambda r: r["top_logprobs"].update(width=-1), "less than the minimum"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(ids=i4([-1, 5, 4, 6])), "padding only ends a row"),
    ("top_logprobs.logprobs", lambda r: r["top_logprobs"].update(logprobs=f4([-0.5, -np.inf, -0.25, -2.0])),
     "expected a finite logprob for each token id"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(ids=i4([-2, 5, 4, 6])), "holds -2, expected token ids"),
    ("top_logprobs.width", lambda r: r["top_logprobs"].update(width=3, ids=i4([3, 5, -1, 4, 6, -1]), logprobs=f4(
        [-0.5, -1.5, -np.inf, -0.25, -2.0, -np.inf])), "3, but no position has 3 alternatives"),
    ("top_logprobs", lambda r: r.update(top_logprobs=[[[3, -0.5]]]), "is not of type 'object'"),
])
def test_a_bad_packed_field_names_the_file_the_line_and_the_field(tmp_path, field, mutate, message):
    path = tmp_path / "generations.jsonl"
    write_records(path, {**header(), "records": [generation("p0"), generation("p1")]}, "generations")
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[2])
    mutate(record)
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))
    for columns in (False, True):
        with pytest.raises(ResultFileError) as caught:
            read_records(path, "generations", columns=columns)
        assert str(caught.value).startswith(f"{path}: line 3: field {field}: ")
        assert re.search(message, str(caught.value)) and "\n" not in str(caught.value)


def test_a_record_that_json_cannot_hold_is_refused_on_write(tmp_path):
    path = tmp_path / "generations.jsonl"
    with pytest.raises(ValueError, match=r"record 'p0': field logprobs: holds inf"):
        write_records(path, {**header(), "records": [{**generation("p0"), "logprobs": [-0.5, float("inf")]}]},
                      "generations")
    assert not path.exists()
