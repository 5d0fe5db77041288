"""Teacher forcing with the real components: the reference (transformers) scores the target's
answers and the target (the shared vLLM server) the reference's; in float32 both distributions
agree at every position, and the files are validated, hashed and recomputed by the audit."""
import pytest

from llm_parity.compare import PASS
from llm_parity.records import answers_hash
from llm_parity.record_files import read_records
from llm_parity.results import read_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docs(demo_run):
    read = {side: {kind: read_records(getattr(demo_run, kind)(side), name)
                   for kind, name in (("generations", "generations"), ("teacher_forced", "teacher-forced"))}
            for side in ("target", "reference")}
    return read


@pytest.mark.parametrize("scorer, answerer", [("reference", "target"), ("target", "reference")])
def test_each_side_scored_every_answer_of_the_other(docs, demo_run, scorer, answerer):
    forced, answers = docs[scorer]["teacher_forced"], docs[answerer]["generations"]
    assert (forced["side"], forced["answers_of"]) == (scorer, answerer)
    assert forced["answers_sha256"] == answers_hash(answers)
    by_id = {r["id"]: r for r in answers["records"]}
    assert len(forced["records"]) == len(by_id) > 10
    for record in forced["records"]:
        assert record["error"] is None and record["answer_ids"] == by_id[record["id"]]["output_ids"]
        assert len(record["logprobs"]) == len(record["top_logprobs"]) == len(record["answer_ids"])
    listed = {line.split("  ", 1)[1] for line in demo_run.sums.read_text().splitlines()}
    assert f"{scorer}/teacher-forced.records" in listed


@pytest.mark.parametrize("scorer", ["reference", "target"])
def test_in_float32_teacher_forcing_gives_what_the_scorer_decoded_itself(docs, scorer):
    """The answers are identical in float32, so scoring the other side's answer in one pass must give
    the logprobs and top-k the scorer's own decoding gave, position by position: an offset of one
    position, or the wrong prefix, would not."""
    own = {r["id"]: r for r in docs[scorer]["generations"]["records"]}
    for record in docs[scorer]["teacher_forced"]["records"]:
        decoded = own[record["id"]]
        assert record["answer_ids"] == decoded["output_ids"]
        assert max(abs(a - b) for a, b in zip(record["logprobs"], decoded["logprobs"])) < 1e-4
        assert [[t for t, _ in top] for top in record["top_logprobs"]] == [[t for t, _ in top] for top in decoded["top_logprobs"]]


def test_float32_distributions_agree_at_every_position(demo_run):
    result = read_json(demo_run.compare, "compare")
    summary = result["summary"]["teacher_forced"]
    tokens = sum(p["target_tokens"] for p in result["prompts"])
    assert summary["positions"] == tokens > 100  # identical answers: every prefix once
    assert summary["mean_kld"] < 1e-8 and summary["max_kld"] < 1e-6
    assert summary["same_top1_rate"] == 1.0 and summary["rms_delta_p"] < 1e-4
    assert summary["perplexity_ratio"] == pytest.approx(1.0, abs=1e-4)
    statuses = {c["name"]: c["status"] for c in result["checks"]}
    assert all(statuses[name] == PASS for name in ("teacher_forced_scored", "kld_mean", "kld_p99", "same_top1", "rms_delta_p"))
