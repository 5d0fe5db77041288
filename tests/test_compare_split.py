"""compare's pass over record files of thousands of prompts in two processes: the same document, byte
for byte, as one process makes; one process wherever the files cannot be split, or something fails."""
import json
import os
import random
import signal
import time

import numpy as np

import pytest

from llm_parity import cli, compare
from llm_parity.compare import compare_runs
from llm_parity.forked import ChildFailed, Forked
from llm_parity.record_files import _layout, stream_records, write_records
from llm_parity.records import ForcedScore, Generation, PassageScore, decoding_of, generations_doc, perplexity_doc, \
    teacher_forced_doc
from llm_parity.results import ResultFileError, canonical_bytes

EOS = 9
THRESHOLDS = {"token_match": "top_k", "max_abs_logprob_diff": 0.25, "perplexity_rel_diff": 1e-3, "why": "test",
              "teacher_forced": {"mean_kld": 1e-2, "kld_p99": 1e-1, "same_top1_rate": 0.9, "rms_delta_p": 1e-2,
                                 "why": "test"}}
PROMPTS = compare.SPLIT_FROM + 37


def answer(rng: random.Random, prompt_id: str, ids: list[int], *, error: str | None = None) -> Generation:
    logprobs = [-rng.random() for _ in ids]
    top = [[[token, lp], [100 + token, lp - 1.0 - rng.random()]] for token, lp in zip(ids, logprobs)]
    if error:
        return Generation.failed({"id": prompt_id, "prompt_ids": [1, 2]}, error)
    return Generation(id=prompt_id, prompt_ids=[1, 2], output_ids=ids, text=" ".join(map(str, ids)), logprobs=logprobs,
                      top_logprobs=top, finish_reason="length", prompt_tokens=2, completion_tokens=len(ids))


def scored(rng: random.Random, answers: list[Generation]) -> list[ForcedScore]:
    """Teacher-forced scores near each answer's own: distributions that differ a little at every position."""
    return [ForcedScore(id=a.id, answer_ids=a.output_ids, logprobs=[lp - rng.random() / 50 for lp in a.logprobs],
                        top_logprobs=[[[t, lp - rng.random() / 50] for t, lp in row] for row in a.top_logprobs])
            for a in answers if not a.error]


def run_files(folder, *, seed: int = 0, reference_order=None):
    """A run of PROMPTS prompts as record files (v4) in `folder`: answers that mostly agree, some that
    split, an error; teacher-forced scores both ways. `reference_order` reorders the reference's file."""
    rng = random.Random(seed)
    ids = [f"q{index:04d}" for index in range(PROMPTS)]
    suite = {"sha256": "a" * 64, "stop_ids": [EOS], "prompts": [{"id": i, "prompt_ids": [1, 2]} for i in ids]}
    targets, references = [], []
    for index, prompt_id in enumerate(ids):
        tokens = [rng.randrange(10, 90) for _ in range(rng.randrange(1, 12))]
        targets.append(answer(rng, prompt_id, tokens, error="timed out" if index == 300 else None))
        split = tokens[:2] + [91] if index % 50 == 7 else tokens
        references.append(answer(rng, prompt_id, split))
    decoding = decoding_of({"top_logprobs": 2}, "float32")
    target = generations_doc("target", suite, "b" * 64, decoding, targets)
    reference = generations_doc("reference", suite, "b" * 64, decoding, references)
    passage = PassageScore(id="x", logprobs=[-1.0, -2.0])
    docs = {
        ("target", "generations"): target,
        ("reference", "generations"): {**reference, "records": reference_order(reference["records"])}
        if reference_order else reference,
        ("target", "teacher-forced"): teacher_forced_doc("target", suite, "b" * 64, reference, 2, scored(rng, references)),
        ("reference", "teacher-forced"): teacher_forced_doc("reference", suite, "b" * 64, target, 2, scored(rng, targets)),
        ("target", "perplexity"): perplexity_doc("target", suite, "b" * 64, [passage]),
        ("reference", "perplexity"): perplexity_doc("reference", suite, "b" * 64, [passage]),
    }
    for (side, kind), doc in docs.items():
        write_records(folder / f"{side}-{kind}.records", doc, kind)
    return suite


def streamed(folder, suite) -> tuple[dict, dict]:
    docs = {(side, kind): stream_records(folder / f"{side}-{kind}.records", kind)
            for side in ("target", "reference") for kind in ("generations", "teacher-forced", "perplexity")}
    arguments = dict(suite=suite, target=docs["target", "generations"], reference=docs["reference", "generations"],
                     target_ppl=docs["target", "perplexity"], reference_ppl=docs["reference", "perplexity"],
                     target_forced=docs["target", "teacher-forced"], reference_forced=docs["reference", "teacher-forced"],
                     thresholds=THRESHOLDS, profile="test")
    return arguments, docs


@pytest.fixture
def splits(monkeypatch) -> list[bool]:
    """Whether each compare_runs split its pass (two CPUs whatever the machine has)."""
    taken, measured = [], compare._measured_in_two_processes
    monkeypatch.setattr(compare, "usable_cpus", lambda: 2)

    def spied(*args):
        result = measured(*args)
        taken.append(result is not None)
        return result
    monkeypatch.setattr(compare, "_measured_in_two_processes", spied)
    return taken


def in_one_process(monkeypatch, folder, suite) -> bytes:
    with monkeypatch.context() as patched:
        patched.setattr(compare, "usable_cpus", lambda: 1)
        return canonical_bytes(compare_runs(**streamed(folder, suite)[0]))


def test_two_processes_make_the_same_compare_document_as_one_byte_for_byte(tmp_path, monkeypatch, splits):
    suite = run_files(tmp_path)
    arguments, docs = streamed(tmp_path, suite)
    split = compare_runs(**arguments)
    assert splits == [True]
    assert canonical_bytes(split) == in_one_process(monkeypatch, tmp_path, suite)
    # Teacher-forced measures are used only where the answers' hashes, made in two parts, match the files'.
    assert split["summary"]["teacher_forced_missing"] is None and split["summary"]["teacher_forced"]["positions"] > 0
    assert [p["id"] for p in split["prompts"]] == [p["id"] for p in suite["prompts"]]
    # Every record was read and checked by the two processes: the streams give none again.
    assert all(list(docs[side, kind]["records"]) == [] for side in ("target", "reference")
               for kind in ("generations", "teacher-forced"))


def test_files_in_different_orders_are_compared_in_one_process(tmp_path, monkeypatch, splits, capfd):
    suite = run_files(tmp_path, reference_order=lambda records: records[1:] + records[:1])
    previous = signal.signal(signal.SIGTERM, cli._terminate)  # as every inv task has it
    try:
        result = canonical_bytes(compare_runs(**streamed(tmp_path, suite)[0]))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert splits == [False]
    assert result == in_one_process(monkeypatch, tmp_path, suite)
    assert capfd.readouterr().err == ""  # the child that was stopped said nothing


def spoil_output_ids(path, prompt_id: str) -> None:
    """Make the first output id of one record of a v4 file -4, in place, as a damaged file would have it."""
    data = bytearray(path.read_bytes())
    at = data.index(f'"id":"{prompt_id}"'.encode())
    line_start, line_end = data.rindex(b"\n", 0, at) + 1, data.index(b"\n", at)
    offset = line_end + 1
    for field, dtype, count in _layout(json.loads(data[line_start:line_end]))[0]:
        if field == "output_ids":
            data[offset:offset + 4] = np.int32(-4).tobytes()
            break
        offset += dtype.itemsize * count
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("bad", [3, PROMPTS - 5])  # in the child's half, in this process's
def test_a_bad_record_in_either_half_is_the_error_one_process_gives(tmp_path, monkeypatch, splits, bad):
    suite = run_files(tmp_path)
    spoil_output_ids(tmp_path / "reference-generations.records", suite["prompts"][bad]["id"])
    with pytest.raises(ResultFileError) as split:
        compare_runs(**streamed(tmp_path, suite)[0])
    assert splits == [False]
    with pytest.raises(ResultFileError) as serial, monkeypatch.context() as patched:
        patched.setattr(compare, "usable_cpus", lambda: 1)
        compare_runs(**streamed(tmp_path, suite)[0])
    assert str(split.value) == str(serial.value)
    assert f"line {bad + 2}: field output_ids: holds -4" in str(split.value)


def test_a_forked_function_gives_its_result_or_fails_clearly():
    with Forked(lambda: {"pid": os.getpid(), "sum": sum(range(10))}) as child:
        result = child.result()
    assert result["sum"] == 45 and result["pid"] != os.getpid()
    with Forked(lambda: 1 / 0) as child, pytest.raises(ChildFailed, match="raised"):
        child.result()
    with Forked(lambda: os._exit(3)) as child, pytest.raises(ChildFailed, match="ended without a result"):
        child.result()


def test_where_no_process_can_be_forked_the_caller_is_told_to_do_the_work(monkeypatch):
    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    with Forked(lambda: 1) as child, pytest.raises(ChildFailed, match="no child process could be started"):
        child.result()


def test_a_child_no_longer_waited_for_is_stopped_even_while_it_sends():
    started = time.monotonic()
    with Forked(lambda: b"x" * 50_000_000):  # more than a pipe holds: the child waits for a reader
        time.sleep(0.5)
    assert time.monotonic() - started < 5

