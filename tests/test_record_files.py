"""Record files: records written as they finish, rewritten in suite order, kept when the writer is
killed, each bad field named, and the forms written before still read (or refused clearly)."""
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
from llm_parity.record_files import (BATCH, RecordJournal, header_of, iter_records, read_records, record_bytes,
                                     record_file_exists, stored_floats, stored_top_k, write_records)
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


def stored(path) -> tuple[dict, list[tuple[dict, dict]]]:
    """A record file of the v4 form as (header, [(line, {field: array})]), read independently of the reader."""
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    header_doc, records, at = json.loads(data[:header_end]), [], header_end
    while at < len(data):
        end = data.index(b"\n", at) + 1
        line, at, arrays = json.loads(data[at:end]), end, {}
        for name, declared in declarations(line):
            code, count = declared.split(":")
            dtype = np.dtype("<" + code)
            arrays[name] = np.frombuffer(data, dtype, int(count), at).copy()
            at += dtype.itemsize * int(count)
        assert data[at:at + 1] == b"\n"
        records.append((line, arrays))
        at += 1
    return header_doc, records


def declarations(line: dict) -> list[tuple[str, str]]:
    found = []
    for name, value in line.items():
        if name == "top_logprobs" and isinstance(value, dict):
            found += [("top_logprobs.ids", value["ids"]), ("top_logprobs.logprobs", value["logprobs"])]
        elif name in ("logprobs", "prompt_ids", "output_ids", "answer_ids", "chat_prompt_ids") and value is not None:
            found.append((name, value))
    return found


def write_stored(path, header_doc: dict, records: list[tuple[dict, dict]]) -> None:
    """Write (line, arrays) records as they are given, however wrong: the arrays in the line's order."""
    def line_bytes(doc: dict) -> bytes:
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(line_bytes(header_doc) + b"".join(
        line_bytes(line) + b"".join(arrays[name].tobytes() for name, _ in declarations(dict(sorted(line.items()))))
        + b"\n" for line, arrays in records))


def test_a_journal_ends_in_suite_order_with_the_same_bytes_whatever_order_records_finished(tmp_path):
    first = journal_bytes(tmp_path / "a.records", IDS[:4])
    second = journal_bytes(tmp_path / "b.records", list(reversed(IDS[:4])))
    assert first == second
    header_doc, records = stored(tmp_path / "a.records")
    assert header_doc["schema"] == "llm-parity/generations/v4"
    assert [line["id"] for line, _ in records] == IDS
    assert [line["error"] for line, _ in records] == [None] * 4 + ["not run"] * 2
    lines = [line for line in first.split(b"\n") if line.startswith(b"{")]
    assert all(line.decode() == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
               for line in lines)
    assert read_records(tmp_path / "a.records", "generations")["records"][0] == generation("p0")


WRITER = """
import sys
from llm_parity.record_files import RecordJournal, record_bytes
from tests.test_record_files import generation, header
with RecordJournal(sys.argv[1], header(), "generations") as journal:
    for index in range(3):
        journal.add(generation(f"p{index}"))
    cut = record_bytes(generation("p3"))
    journal._handle.write(cut[:int(sys.argv[2])])  # killed in the middle of a record
    journal._handle.flush()
    print("written", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("where", ["line", "numbers"])
def test_a_killed_writer_keeps_every_finished_record_and_the_cut_record_is_named(tmp_path, where):
    path = tmp_path / "generations.records"
    cut_at = 20 if where == "line" else len(record_bytes(generation("p3"))) - 9
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(cut_at)], cwd=PROJECT_ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "written"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    kept = read_records(path, "generations", keep_cut_off=True)["records"]
    assert [record["id"] for record in kept] == ["p0", "p1", "p2"]
    with pytest.raises(ResultFileError, match=r"generations\.records: line 5: the last record is cut off.*--resume"):
        read_records(path, "generations")


def test_a_bad_record_names_the_file_the_line_and_the_field(tmp_path):
    path = tmp_path / "generations.records"
    write_records(path, {**header(), "records": [generation("p0"), generation("p1")]}, "generations")
    header_doc, records = stored(path)
    records[1][1]["output_ids"][1] = -4
    write_stored(path, header_doc, records)
    with pytest.raises(ResultFileError, match=rf"^{path}: line 3: field output_ids: holds -4, expected token ids of 0 and up$"):
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
    path = tmp_path / "generations.records"
    path.write_text(json.dumps({**header(), "schema": "llm-parity/generations/v5"}) + "\n")
    with pytest.raises(ResultFileError, match=rf"^{path}: line 1: field schema: expected 'llm-parity/generations/v4' "
                                              r"\('llm-parity/generations/v3' or 'llm-parity/generations/v2' written "
                                              r"before\), found 'llm-parity/generations/v5'$"):
        iter_records(path, "generations")
    path.write_text("")
    with pytest.raises(ResultFileError, match="line 1: empty file"):
        read_records(path, "generations")


# Numbers stored as arrays after the line (the v4 form).

def float32_exact(rng: random.Random) -> float:
    return float(np.float32(rng.uniform(-20.0, 0.0)))


def generation_of(prompt_id: str, logprobs: list[float], top: list[list], error: str | None = None) -> dict:
    output_ids = [pairs[0][0] if pairs else 7 for pairs in top]
    return Generation(id=prompt_id, prompt_ids=[1, 2], output_ids=output_ids, text="t", logprobs=logprobs,
                      top_logprobs=top, finish_reason="length", prompt_tokens=2, completion_tokens=len(output_ids),
                      error=error).to_json()


def varied_records() -> list[dict]:
    """float32-exact and arbitrary float64 values, ragged and empty top-k, positions with no
    alternatives, an integer logprob, -0.0, chat template ids, and error records."""
    rng = random.Random(7)
    exact = [[[token, float32_exact(rng)] for token in (11, 12, 13)] for _ in range(8)]
    ragged = [[[3, -0.1], [4, -0.2], [5, -0.3]], [[6, -1e-300]], [], [[8, -123456.789], [2**31 - 1, -1e300]]]
    return [
        generation_of("f4", [pairs[0][1] for pairs in exact], exact),
        {**generation_of("f8", [rng.uniform(-30.0, 0.0) for _ in range(4)] + [0, -0.0], ragged + [[[1, 0]], [[2, -0.0]]]),
         "chat_prompt_ids": [1, 2]},
        {**generation_of("no-alternatives", [-0.5, -0.25], [[], []]), "chat_prompt_ids": None},
        not_run("error"),
        {**not_run("partial"), "logprobs": [-0.5], "top_logprobs": [[[3, -0.5]]], "error": "stopped"},
    ]


def test_stored_records_read_back_exactly_and_rewrite_to_the_same_bytes(tmp_path):
    records = varied_records()
    path = tmp_path / "generations.records"
    write_records(path, {**header(), "records": records}, "generations")
    first = path.read_bytes()
    read = read_records(path, "generations")
    assert read["schema"] == "llm-parity/generations/v4"
    assert read["records"] == records
    assert [[type(value) for value in r["logprobs"]] for r in read["records"]] == [[float] * len(r["logprobs"]) for r in records]
    assert [[type(value) for value in r["output_ids"]] for r in read["records"]] == [[int] * len(r["output_ids"]) for r in records]
    write_records(path, read, "generations")
    assert path.read_bytes() == first
    write_records(tmp_path / "again.records", {**header(), "records": varied_records()}, "generations")
    assert (tmp_path / "again.records").read_bytes() == first
    lines = {line["id"]: (line, arrays) for line, arrays in stored(path)[1]}
    assert lines["f4"][0]["logprobs"] == "f4:8" and lines["f4"][0]["top_logprobs"]["logprobs"] == "f4:24"
    assert lines["f8"][0]["logprobs"] == "f8:6" and lines["f8"][0]["top_logprobs"]["logprobs"] == "f8:18"
    assert lines["f4"][0]["output_ids"] == "i4:8" and lines["f4"][1]["output_ids"].tolist() == [11] * 8
    assert lines["f8"][0]["chat_prompt_ids"] == "i4:2" and lines["no-alternatives"][0]["chat_prompt_ids"] is None
    assert lines["f4"][0]["text"] == "t"  # text stays plain JSON
    assert {name: lines["f8"][0]["top_logprobs"][name] for name in ("positions", "width")} == {"positions": 6, "width": 3}
    assert lines["error"][0]["logprobs"] == "f4:0"
    assert lines["error"][0]["top_logprobs"] == {"ids": "i4:0", "logprobs": "f4:0", "positions": 0, "width": 0}
    assert lines["no-alternatives"][0]["top_logprobs"] == {"ids": "i4:0", "logprobs": "f4:0", "positions": 2, "width": 0}


def test_every_kind_stores_and_reads_back(tmp_path):
    scores = {**header(), "schema": schema_tag("perplexity"), "records": [
        PassageScore(id="x", logprobs=[-1.0, -2.5, -0.125]).to_json(), PassageScore.failed({"id": "y"}, "too long").to_json()]}
    del scores["decoding"]
    forced = teacher_forced_doc("reference", SUITE, MODEL, {"side": "target", "records": []}, 2, [
        ForcedScore(id="p0", answer_ids=[3, 4], logprobs=[-0.5, -0.125], top_logprobs=[[[3, -0.5]], [[9, -0.0625], [4, -0.125]]]),
        ForcedScore.failed({"id": "p1", "answer_ids": [5]}, "out of memory")])
    for kind, doc in (("perplexity", scores), ("teacher-forced", forced)):
        path = tmp_path / f"{kind}.records"
        write_records(path, doc, kind)
        assert read_records(path, kind)["records"] == doc["records"]
        assert stored(path)[1][0][0]["logprobs"] == "f4:3" if kind == "perplexity" else "f4:2"
        columns = read_records(path, kind, columns=True)["records"]
        assert np.array_equal(columns[0]["logprobs"], doc["records"][0]["logprobs"])
    header_doc, records = stored(tmp_path / "teacher-forced.records")
    assert records[0][0]["top_logprobs"]["width"] == 2 and records[0][0]["answer_ids"] == "i4:2"
    assert header_doc["top_logprobs"] == 2  # the header's, a number, not an array


def hex_of(array: np.ndarray) -> str:
    return f"{array.dtype.kind}{array.dtype.itemsize}:" + array.tobytes().hex()


def v3_line(record: dict) -> dict:
    """A record as the v3 form wrote it: logprobs and top_logprobs as "<code>:<hex>", ids as JSON."""
    ids, logprobs = stored_top_k(record["top_logprobs"])
    return {**record, "logprobs": hex_of(stored_floats(record["logprobs"])),
            "top_logprobs": {"ids": hex_of(ids), "logprobs": hex_of(logprobs), "positions": ids.shape[0],
                             "width": ids.shape[1]}}


def write_earlier_form(path, records: list[dict], form: str) -> None:
    """A record file as the writers before v4 left it: JSON Lines, the numbers as hex (v3) or as JSON (v2);
    or one JSON document (v1)."""
    if form == "v1":
        write_json(path.with_suffix(".json"), {**header(), "records": records}, "generations")
        return
    lines = [{**header_of(header(), "generations"), "schema": f"llm-parity/generations/{form}"},
             *(map(v3_line, records) if form == "v3" else records)]
    path.write_text("".join(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n" for line in lines))


@pytest.mark.parametrize("form", ["v1", "v2", "v3", "v4"])
def test_columns_are_the_arrays_of_the_list_form_whatever_the_file_form(tmp_path, form):
    records = varied_records()
    path = tmp_path / "generations.records"
    if form == "v4":
        write_records(path, {**header(), "records": records}, "generations")
    else:
        write_earlier_form(path.with_suffix(".jsonl"), records, form)
    assert read_records(path, "generations")["records"] == records
    read = read_records(path, "generations", columns=True)["records"]
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


def test_a_journal_of_an_earlier_form_is_resumed_into_the_current_form(tmp_path):
    path = tmp_path / "generations.records"
    write_earlier_form(path.with_suffix(".jsonl"), [generation("p0"), generation("p1")], "v3")
    kept = read_records(path, "generations", keep_cut_off=True)["records"]
    with RecordJournal(path, header(), "generations", kept) as journal:
        journal.add(generation("p2"))
        journal.finish(IDS[:3], not_run)
    assert stored(path)[0]["schema"] == "llm-parity/generations/v4"
    assert not path.with_suffix(".jsonl").exists()
    assert read_records(path, "generations")["records"] == [generation(p) for p in IDS[:3]]


def f4(values) -> np.ndarray:
    return np.asarray(values, "<f4")


def i4(values) -> np.ndarray:
    return np.asarray(values, "<i4")


def top(line: dict, arrays: dict, *, ids=None, logprobs=None, **fields) -> None:
    """Set a stored top_logprobs' arrays (declared with their counts) and fields."""
    for name, values in (("ids", ids), ("logprobs", logprobs)):
        if values is not None:
            arrays[f"top_logprobs.{name}"] = values
            line["top_logprobs"][name] = f"{values.dtype.kind}{values.dtype.itemsize}:{values.size}"
    line["top_logprobs"].update(fields)


@pytest.mark.parametrize("field, mutate, message", [
    ("logprobs", lambda line, arrays: line.update(logprobs="f2:2"), "does not match"),
    ("logprobs", lambda line, arrays: arrays.update(logprobs=f4([-0.5, np.nan])), "holds nan, expected finite numbers"),
    ("prompt_ids", lambda line, arrays: line.update(prompt_ids="f4:2"), "does not match"),
    ("top_logprobs.ids", lambda line, arrays: top(line, arrays, ids=i4([3, 5, 4])),
     r"3 values, expected width 2 x 2 positions = 4"),
    ("top_logprobs.logprobs", lambda line, arrays: top(line, arrays, logprobs=f4([-0.5, -1.5, -0.25])),
     r"3 values, expected width 2 x 2 positions = 4"),
    ("top_logprobs.ids", lambda line, arrays: top(line, arrays, width=1), r"4 values, expected width 1 x 2 positions = 2"),
    ("top_logprobs.width", lambda line, arrays: top(line, arrays, width=-1), "less than the minimum"),
    ("top_logprobs.ids", lambda line, arrays: top(line, arrays, ids=i4([-1, 5, 4, 6])), "padding only ends a row"),
    ("top_logprobs.logprobs", lambda line, arrays: top(line, arrays, logprobs=f4([-0.5, -np.inf, -0.25, -2.0])),
     "expected a finite logprob for each token id"),
    ("top_logprobs.ids", lambda line, arrays: top(line, arrays, ids=i4([-2, 5, 4, 6])), "holds -2, expected token ids"),
    ("top_logprobs.width", lambda line, arrays: top(line, arrays, width=3, ids=i4([3, 5, -1, 4, 6, -1]), logprobs=f4(
        [-0.5, -1.5, -np.inf, -0.25, -2.0, -np.inf])), "3, but no position has 3 alternatives"),
    ("top_logprobs", lambda line, arrays: line.update(top_logprobs=[[[3, -0.5]]]), "is not of type 'object'"),
])
def test_a_bad_stored_field_names_the_file_the_line_and_the_field(tmp_path, field, mutate, message):
    path = tmp_path / "generations.records"
    write_records(path, {**header(), "records": [generation("p0"), generation("p1")]}, "generations")
    header_doc, records = stored(path)
    mutate(*records[1])
    if not isinstance(records[1][0]["top_logprobs"], dict):
        records[1][1].pop("top_logprobs.ids"), records[1][1].pop("top_logprobs.logprobs")
    write_stored(path, header_doc, records)
    for columns in (False, True):
        with pytest.raises(ResultFileError) as caught:
            read_records(path, "generations", columns=columns)
        assert str(caught.value).startswith(f"{path}: line 3: field {field}: ")
        assert re.search(message, str(caught.value)) and "\n" not in str(caught.value)


def test_numbers_that_do_not_end_where_the_line_says_are_refused_at_that_record(tmp_path):
    path = tmp_path / "generations.records"
    write_records(path, {**header(), "records": [generation("p0"), generation("p1"), generation("p2")]}, "generations")
    header_doc, records = stored(path)
    records[1][0]["logprobs"] = "f4:3"  # the line declares one more value than follows it
    write_stored(path, header_doc, records)
    with pytest.raises(ResultFileError, match=rf"^{path}: line 3: the 60 bytes of numbers that its fields declare are "
                                              r"not followed by a line end: a count in the line is wrong"):
        read_records(path, "generations")


@pytest.mark.parametrize("bad", [0, 5, BATCH - 1, BATCH, BATCH + 3])
@pytest.mark.parametrize("spoil, message", [
    (lambda line, arrays: arrays.update(output_ids=i4([3, -4])), "field output_ids: holds -4"),
    (lambda line, arrays: arrays.update(logprobs=f4([-0.5, np.inf])), "field logprobs: holds inf"),
    (lambda line, arrays: line.update(finish_reason=7), "field finish_reason: "),
])
def test_every_record_before_a_bad_one_is_read_wherever_it_falls_in_a_batch(tmp_path, bad, spoil, message):
    path = tmp_path / "generations.records"
    ids = [f"p{index}" for index in range(2 * BATCH)]
    write_records(path, {**header(), "records": list(map(generation, ids))}, "generations")
    header_doc, records = stored(path)
    spoil(*records[bad])
    write_stored(path, header_doc, records)
    _, reading = iter_records(path, "generations", columns=True)
    read = []
    with pytest.raises(ResultFileError, match=rf"^{re.escape(str(path))}: line {bad + 2}: {message}"):
        for record in reading:
            read.append(record["id"])
    assert read == ids[:bad]


@pytest.mark.parametrize("field, mutate, message", [
    ("logprobs", lambda r: r.update(logprobs="f4:0000zz00"), "not hexadecimal"),
    ("logprobs", lambda r: r.update(logprobs="f4:000000"), "3 bytes, not a whole number of f4 values"),
    ("logprobs", lambda r: r.update(logprobs="f4:0000803F"), "not lower-case hexadecimal digits only"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(ids=r["top_logprobs"]["ids"][:-2]),
     "15 bytes, not a whole number of i4 values"),
    ("top_logprobs.ids", lambda r: r["top_logprobs"].update(ids="i4:" + (b"\0" * 12).hex()),
     r"3 values, expected width 2 x 2 positions = 4"),
])
def test_a_bad_hex_field_of_the_v3_form_names_the_file_the_line_and_the_field(tmp_path, field, mutate, message):
    path = tmp_path / "generations.jsonl"
    records = [v3_line(generation("p0")), v3_line(generation("p1"))]
    mutate(records[1])
    lines = [{**header_of(header(), "generations"), "schema": "llm-parity/generations/v3"}, *records]
    path.write_text("".join(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n" for line in lines))
    with pytest.raises(ResultFileError) as caught:
        read_records(path, "generations", columns=True)
    assert str(caught.value).startswith(f"{path}: line 3: field {field}: ") and re.search(message, str(caught.value))


def test_a_record_that_json_cannot_hold_is_refused_on_write(tmp_path):
    path = tmp_path / "generations.records"
    with pytest.raises(ValueError, match=r"record 'p0': field logprobs: holds inf"):
        write_records(path, {**header(), "records": [{**generation("p0"), "logprobs": [-0.5, float("inf")]}]},
                      "generations")
    assert not path.exists()
