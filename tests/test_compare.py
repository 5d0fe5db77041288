"""compare on hand-made records: every rule, no model and no server."""
import math
import random

import pytest

from llm_parity.compare import (IncompatibleRuns, compare_runs, failing_checks, token_accounting, unchecked_checks,
                                 verdict_reasons)
from llm_parity.divergence import logit_measures, logits_summary
from llm_parity.records import (AnswersHash, ForcedScore, Generation, PassageScore, answers_hash, decoding_of,
                                generations_doc, perplexity_doc, teacher_forced_doc)
from llm_parity.results import ResultFileError, sha256_of, validate

EOS = 9
SUITE_SHA = "a" * 64
MODEL_SHA = "b" * 64
FORCED_LIMITS = {"mean_kld": 1e-4, "kld_p99": 1e-3, "same_top1_rate": 1.0, "rms_delta_p": 1e-3, "why": "test"}
STRICT = {"token_match": "exact", "max_abs_logprob_diff": 1e-4, "perplexity_rel_diff": 1e-3, "why": "test",
          "teacher_forced": FORCED_LIMITS}
LOOSE = {**STRICT, "token_match": "top_k", "max_abs_logprob_diff": 0.25}


def record(ids, *, top=None, logprobs=None, prompt=(1, 2, 3), usage=None, error=None, rid="p1", text=None):
    """A generation record, as JSON, whose top-k at each position is [chosen, runner-up] unless given."""
    logprobs = logprobs or [-0.1] * len(ids)
    top = top or [[[token, lp], [100 + token, lp - 2.0]] for token, lp in zip(ids, logprobs)]
    usage = usage or {"prompt_tokens": len(prompt), "completion_tokens": len(ids)}
    return Generation(id=rid, prompt_ids=list(prompt), output_ids=list(ids),
                      text=text if text is not None else " ".join(map(str, ids)), logprobs=list(logprobs),
                      top_logprobs=top, finish_reason="stop" if ids and ids[-1] == EOS else "length",
                      prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                      error=error).to_json()


def generations(side, suite, records, decoding=None, model=MODEL_SHA):
    return generations_doc(side, suite, model, decoding or decoding_of({"top_logprobs": 2}, "float32"),
                           [Generation.from_json(r) for r in records])


def scores(side, suite, records):
    return perplexity_doc(side, suite, MODEL_SHA, [PassageScore.from_json(r) for r in records])


PASSAGE = {"id": "x", "logprobs": [-1.0, -2.0], "perplexity": 4.48, "error": None}


def mirrored(scorer, suite, answers):
    """`scorer`'s teacher-forced scores of the answers in the generations document `answers`, equal
    to the answering side's own logprobs and top-k (two sides that agree exactly)."""
    records = [ForcedScore(id=r["id"], answer_ids=r["output_ids"], logprobs=r["logprobs"], top_logprobs=r["top_logprobs"])
               for r in answers["records"] if not r["error"] and r["output_ids"]]
    return teacher_forced_doc(scorer, suite, MODEL_SHA, answers, 2, records)


def compare_many(targets, references, thresholds=STRICT, passages=(PASSAGE,), forced=mirrored, **logits):
    """compare_runs on a suite made of the targets' prompts, both sides scoring the same `passages`
    and each other's answers with `forced(scorer, suite, answers)` (None: no teacher forcing)."""
    suite = {"sha256": SUITE_SHA, "stop_ids": [EOS],
             "prompts": [{"id": target["id"], "prompt_ids": target["prompt_ids"]} for target in targets]}
    decoding = decoding_of({"top_logprobs": 2}, "float32")
    target = generations("target", suite, targets, decoding)
    reference = generations("reference", suite, references, decoding)
    return compare_runs(
        suite=suite, target=target, reference=reference,
        target_ppl=scores("target", suite, passages),
        reference_ppl=scores("reference", suite, passages),
        thresholds=thresholds, profile="test",
        target_forced=forced and forced("target", suite, reference),
        reference_forced=forced and forced("reference", suite, target),
        **logits,
    )


def compare_one(target, reference, thresholds=STRICT, forced=mirrored):
    return compare_many([target], [reference], thresholds, forced=forced)


def check(result, name):
    return next(c for c in result["checks"] if c["name"] == name)


def test_identical_sequences_pass_and_measure_logprob_differences():
    result = compare_one(record([5, 6, EOS], logprobs=[-0.1, -0.2, -0.3]),
                         record([5, 6, EOS], logprobs=[-0.10001, -0.2, -0.30003]))
    assert result["verdict"] == "pass"
    assert result["prompts"][0]["status"] == "identical"
    assert result["summary"]["max_abs_logprob_diff"] == pytest.approx(3e-5)


def test_logprob_difference_over_threshold_fails():
    result = compare_one(record([5, 6], logprobs=[-0.1, -0.2]), record([5, 6], logprobs=[-0.1, -0.21]))
    assert result["verdict"] == "fail"
    assert not check(result, "max_abs_logprob_diff")["passed"]


def split_pair(runner_up_in_top_k: bool, rid: str = "p1"):
    """Target picks 7 at position 1, reference picks 8; each lists the other second or not at all."""
    other = (lambda token: token) if runner_up_in_top_k else (lambda token: 50)
    target = record([5, 7, EOS], top=[[[5, -0.1], [105, -2.1]], [[7, -0.69], [other(8), -0.70]], [[EOS, -0.1], [3, -3.0]]],
                    rid=rid)
    reference = record([5, 8, EOS], top=[[[5, -0.1], [105, -2.1]], [[8, -0.69], [other(7), -0.70]], [[EOS, -0.1], [3, -3.0]]],
                       rid=rid)
    return target, reference


def test_split_inside_top_k_is_located_with_margins_and_accepted_under_top_k_rule():
    target, reference = split_pair(runner_up_in_top_k=True)
    result = compare_one(target, reference, LOOSE)
    prompt = result["prompts"][0]
    assert prompt["status"] == "split_within_top_k"
    divergence = prompt["first_divergence"]
    assert divergence["position"] == 1
    assert (divergence["target_token"], divergence["reference_token"]) == (7, 8)
    assert divergence["target_margin"] == pytest.approx(0.01)
    assert divergence["target_in_reference_top_k"] and divergence["reference_in_target_top_k"]
    assert divergence["near_tie"] is True
    assert "within the logprob noise" in divergence["why"]
    assert prompt["common_prefix"] == 1
    assert result["verdict"] == "pass"


def test_split_inside_top_k_fails_under_exact_rule():
    target, reference = split_pair(runner_up_in_top_k=True)
    result = compare_one(target, reference, STRICT)
    assert result["verdict"] == "fail"
    assert "p1" in check(result, "token_ids")["detail"]


def test_split_outside_top_k_fails_even_under_top_k_rule():
    target, reference = split_pair(runner_up_in_top_k=False)
    result = compare_one(target, reference, LOOSE)
    assert result["prompts"][0]["status"] == "split_outside_top_k"
    assert result["prompts"][0]["first_divergence"]["target_in_reference_top_k"] is False
    assert result["verdict"] == "fail"


def test_different_lengths_are_a_divergence_where_the_shorter_ends():
    result = compare_one(record([5, 6]), record([5, 6, 7, 8]), LOOSE)
    divergence = result["prompts"][0]["first_divergence"]
    assert divergence["position"] == 2
    assert divergence["target_token"] is None and divergence["reference_token"] == 7
    assert result["prompts"][0]["status"] == "split_outside_top_k"
    assert result["verdict"] == "fail"


def test_token_accounting_catches_usage_and_eos_problems():
    assert token_accounting(record([5, EOS]), {EOS}) == []
    assert token_accounting(record([5, EOS, 6]), {EOS})  # EOS not last
    assert token_accounting(record([EOS, EOS]), {EOS})  # two EOS
    bad_usage = record([5, 6], usage={"prompt_tokens": 3, "completion_tokens": 3})
    assert "completion_tokens" in token_accounting(bad_usage, {EOS})[0]
    result = compare_one(record([5, EOS, 6]), record([5, EOS, 6]))
    assert not check(result, "token_accounting")["passed"]
    assert result["verdict"] == "fail"


def test_error_records_fail_the_run_and_are_named():
    result = compare_one(record([], error="HTTP 500"), record([5]))
    assert result["prompts"][0]["status"] == "error"
    assert "p1" in check(result, "all_prompts_answered")["detail"]
    assert result["verdict"] == "fail"


def test_text_trailing_incomplete_utf8_is_not_a_difference():
    result = compare_one(record([5, 6], text="안녕"), record([5, 6], text="안녕\ufffd"))
    assert result["prompts"][0]["text_equal"] is True
    result = compare_one(record([5, 6], text="안녕"), record([5, 6], text="안녀"))
    assert not check(result, "text")["passed"]


def test_prompt_ids_must_be_the_suites():
    suite = {"sha256": SUITE_SHA, "stop_ids": [EOS], "prompts": [{"id": "p1", "prompt_ids": [1, 2, 3]}]}
    decoding = decoding_of({"top_logprobs": 2}, "float32")
    passage = {"id": "x", "logprobs": [-1.0], "perplexity": 2.7, "error": None}
    result = compare_runs(
        suite=suite,
        target=generations("target", suite, [record([5], prompt=(1, 2, 4))], decoding),
        reference=generations("reference", suite, [record([5], prompt=(1, 2, 4))], decoding),
        target_ppl=scores("target", suite, [passage]),
        reference_ppl=scores("reference", suite, [passage]),
        thresholds=STRICT, profile="test")
    assert not check(result, "prompt_ids_from_suite")["passed"]


def with_chat_ids(target, chat_prompt_ids):
    return {**target, "chat_prompt_ids": chat_prompt_ids}


def test_chat_template_mismatch_fails():
    target = with_chat_ids(record([5]), [1, 2, 3, 99])
    result = compare_one(target, record([5]))
    assert not check(result, "chat_template")["passed"]
    assert check(result, "chat_template")["status"] == "fail"


def test_chat_template_is_not_checked_when_the_server_rendered_no_ids():
    for target in (record([5]), with_chat_ids(record([5]), None)):
        result = compare_one(target, record([5]))
        template = check(result, "chat_template")
        assert result["prompts"][0]["chat_template_ids_equal"] is None
        assert (template["status"], template["passed"], template["measured"]) == ("not_checked", None, None)
        assert result["verdict"] == "pass"
        assert unchecked_checks(result) == ["chat_template", "logits_max_abs_diff"] and failing_checks(result) == []


def test_chat_template_names_the_prompts_it_could_not_check():
    rendered, unrendered = record([5], rid="p1"), record([5], rid="p2")
    result = compare_many([with_chat_ids(rendered, [1, 2, 3]), unrendered], [rendered, unrendered])
    template = check(result, "chat_template")
    assert template["status"] == "pass" and "not checked" in template["detail"] and "p2" in template["detail"]
    result = compare_many([with_chat_ids(rendered, [1, 2, 9]), unrendered], [rendered, unrendered])
    template = check(result, "chat_template")
    assert (template["status"], template["measured"]) == ("fail", 1)
    assert "['p1']" in template["detail"] and "['p2']" in template["detail"]


def test_zero_passages_leave_perplexity_not_checked_neither_failed_nor_passed():
    result = compare_many([record([5])], [record([5])], passages=())
    perplexity = check(result, "perplexity_rel_diff")
    assert (perplexity["status"], perplexity["passed"], perplexity["measured"]) == ("not_checked", None, None)
    assert result["verdict"] == "pass"
    assert "perplexity_rel_diff" in unchecked_checks(result)


def test_checks_over_prompts_are_not_checked_when_no_prompt_was_answered():
    result = compare_one(record([], error="HTTP 500"), record([5]))
    statuses = {c["name"]: c["status"] for c in result["checks"]}
    assert statuses["all_prompts_answered"] == "fail"
    for name in ("prompt_ids_from_suite", "chat_template", "token_ids", "text", "max_abs_logprob_diff", "token_accounting"):
        assert statuses[name] == "not_checked", name


def test_checks_keep_their_names_and_order():
    result = compare_one(record([5]), record([5]))
    assert [c["name"] for c in result["checks"]] == [
        "all_prompts_answered", "prompt_ids_from_suite", "chat_template", "token_ids", "text",
        "max_abs_logprob_diff", "perplexity_rel_diff", "token_accounting", "teacher_forced_scored", "kld_mean",
        "kld_p99", "same_top1", "rms_delta_p", "logits_max_abs_diff"]


def test_failing_checks_name_the_measured_value_and_threshold():
    target = with_chat_ids(record([5, 6], logprobs=[-0.1, -0.2]), [1, 2, 3, 99])
    result = compare_many([target], [record([5, 6], logprobs=[-0.1, -0.21])], passages=())
    assert failing_checks(result) == ["chat_template: 1 (threshold 0)", "max_abs_logprob_diff: 0.01 (threshold 0.0001)"]
    assert verdict_reasons(result) == ("failing: chat_template: 1 (threshold 0); max_abs_logprob_diff: 0.01 "
                                       "(threshold 0.0001) | not checked: perplexity_rel_diff, logits_max_abs_diff")
    assert verdict_reasons(compare_one(with_chat_ids(record([5]), [1, 2, 3]), record([5]))) == "not checked: logits_max_abs_diff"


def test_compare_schema_holds_status_and_passed_to_agree():
    result = compare_many([record([5])], [record([5])], passages=())
    validate(result, "compare", "compare.json")
    template = check(result, "chat_template")
    for status, passed in (("pass", True), ("fail", False), ("not_checked", None)):
        template.update(status=status, passed=passed)
        validate(result, "compare", "compare.json")
    for status, passed in (("pass", None), ("not_checked", True), ("fail", True), ("skipped", None)):
        template.update(status=status, passed=passed)
        with pytest.raises(ResultFileError, match="checks"):
            validate(result, "compare", "compare.json")


def test_sides_from_different_suites_models_or_decoding_are_refused():
    suite = {"sha256": SUITE_SHA, "stop_ids": [EOS], "prompts": []}
    decoding = decoding_of({"top_logprobs": 2}, "float32")
    same = generations_doc("reference", suite, MODEL_SHA, decoding, [])
    other_model = generations_doc("target", suite, "c" * 64, decoding, [])
    other_decoding = generations_doc("target", suite, MODEL_SHA, decoding_of({"top_logprobs": 2}, "bfloat16"), [])
    ppl = perplexity_doc("target", suite, MODEL_SHA, [])
    for target in (other_model, other_decoding):
        with pytest.raises(IncompatibleRuns):
            compare_runs(suite=suite, target=target, reference=same, target_ppl=ppl, reference_ppl=ppl,
                         thresholds=STRICT, profile="test")
    with pytest.raises(IncompatibleRuns, match="suite"):
        compare_runs(suite={**suite, "sha256": "d" * 64}, target=same, reference=same, target_ppl=ppl,
                     reference_ppl=ppl, thresholds=STRICT, profile="test")


def test_perplexity_difference_over_threshold_fails():
    suite = {"sha256": SUITE_SHA, "stop_ids": [EOS], "prompts": [{"id": "p1", "prompt_ids": [1, 2, 3]}]}
    decoding = decoding_of({"top_logprobs": 2}, "float32")
    target_ppl = scores("target", suite, [{"id": "x", "logprobs": [-1.0], "perplexity": 2.72, "error": None}])
    reference_ppl = scores("reference", suite, [{"id": "x", "logprobs": [-1.01], "perplexity": 2.745, "error": None}])
    result = compare_runs(
        suite=suite, target=generations("target", suite, [record([5])], decoding),
        reference=generations("reference", suite, [record([5])], decoding),
        target_ppl=target_ppl, reference_ppl=reference_ppl, thresholds=STRICT, profile="test")
    assert check(result, "perplexity_rel_diff")["measured"] == pytest.approx((math.exp(1.01) - math.exp(1.0)) / math.exp(1.01))
    assert result["verdict"] == "fail"


def test_teacher_forced_measures_cover_every_distinct_prefix_of_both_answers():
    # Split at position 1: the target's 3 positions, then the reference's answer past the split (position 2).
    result = compare_one(record([5, 7, EOS]), record([5, 8, EOS]), LOOSE)
    forced = result["prompts"][0]["teacher_forced"]
    assert forced["error"] is None and forced["summary"]["positions"] == 4
    assert result["summary"]["teacher_forced"]["mean_kld"] == pytest.approx(0.0, abs=1e-12)
    assert {c["name"]: c["status"] for c in result["checks"]}["kld_mean"] == "pass"
    # One answer ends where the other goes on: its last prefix is new to the shorter answer.
    longer = compare_one(record([5, 6]), record([5, 6, 7]), LOOSE)
    assert longer["prompts"][0]["teacher_forced"]["summary"]["positions"] == 3


def sharper(scorer, suite, answers):
    """Teacher-forced scores whose top-1 is more sure than the answering side's own (0.9 vs e^-0.1)."""
    doc = mirrored(scorer, suite, answers)
    for r in doc["records"]:
        r["logprobs"] = [math.log(0.9)] * len(r["answer_ids"])
        r["top_logprobs"] = [[[token, math.log(0.9)], [100 + token, math.log(0.05)]] for token in r["answer_ids"]]
    return doc


def test_distributions_that_differ_fail_the_kld_limits_with_the_measured_values():
    result = compare_one(record([5, 6]), record([5, 6]), forced=sharper)
    # Every position of the target's answer (the reference scored it): P = (0.9, 0.05 | 0.05),
    # Q = (e^-0.1, e^-2.1 | rest) = (0.904837, 0.122456 | -0.027293 -> 0, floored at 1e-12).
    kld = 0.9 * math.log(0.9 / math.exp(-0.1)) + 0.05 * math.log(0.05 / math.exp(-2.1)) + 0.05 * math.log(0.05 / 1e-12)
    summary = result["summary"]["teacher_forced"]
    assert summary["positions"] == 2 and summary["mean_kld"] == pytest.approx(kld)
    statuses = {c["name"]: c["status"] for c in result["checks"]}
    assert statuses["kld_mean"] == statuses["kld_p99"] == statuses["rms_delta_p"] == "fail"
    assert statuses["same_top1"] == "pass" and result["verdict"] == "fail"
    assert any(line.startswith("kld_mean: ") for line in failing_checks(result))


def compare_with_forced(make_forced):
    """compare_one on equal answers where the test builds the teacher-forced documents itself."""
    return compare_one(record([5, 6]), record([5, 6]), forced=make_forced)


def test_without_teacher_forcing_the_checks_say_what_to_run():
    result = compare_with_forced(None)
    scored = check(result, "teacher_forced_scored")
    assert scored["status"] == "not_checked" and "cross-score --scorer reference" in scored["detail"]
    assert set(unchecked_checks(result)) >= {"teacher_forced_scored", "kld_mean", "kld_p99", "same_top1", "rms_delta_p"}
    assert result["verdict"] == "pass" and result["summary"]["teacher_forced"] is None


def test_scores_of_answers_that_have_changed_since_are_not_used():
    def stale(scorer, suite, answers):
        old = {**answers, "records": [{**r, "output_ids": [5, 9]} for r in answers["records"]]}
        return mirrored(scorer, suite, old)
    result = compare_with_forced(stale)
    assert "cross-score --scorer reference again" in check(result, "teacher_forced_scored")["detail"]
    assert "kld_mean" in unchecked_checks(result)


def test_an_answer_the_other_side_could_not_score_fails_the_scored_check():
    def one_failed(scorer, suite, answers):
        doc = mirrored(scorer, suite, answers)
        if scorer == "target":
            doc["records"][0] = ForcedScore.failed({"id": "p1", "answer_ids": [5, 6]}, "HTTP 400").to_json()
        return doc
    result = compare_with_forced(one_failed)
    scored = check(result, "teacher_forced_scored")
    assert scored["status"] == "fail" and "the target could not score this answer: HTTP 400" in scored["detail"]


def test_without_profile_limits_the_measures_are_reported_but_not_judged():
    thresholds = {key: value for key, value in STRICT.items() if key != "teacher_forced"}
    result = compare_one(record([5, 6]), record([5, 6]), thresholds)
    kld = check(result, "kld_mean")
    assert kld["status"] == "not_checked" and kld["measured"] == pytest.approx(0.0, abs=1e-12)
    assert "no teacher-forced thresholds" in kld["detail"]


def test_the_logits_row_holds_max_abs_logit_diff_to_the_profile():
    # One position: logits (0, 0, ln 2) against (ln 2, 0, ln 2): max |Δ logit| ln 2 = 0.693147
    measured = logits_summary([logit_measures([0.0, 0.0, math.log(2)], [math.log(2), 0.0, math.log(2)])])
    for limit, status in ((1.0, "pass"), (0.5, "fail")):
        thresholds = {**STRICT, "logits": {"max_abs_logit_diff": limit, "why": "test"}}
        row = check(compare_one_logits(measured, thresholds), "logits_max_abs_diff")
        assert (row["status"], row["measured"], row["threshold"]) == (status, pytest.approx(0.693147, abs=1e-6), limit)
        assert "1 positions" in row["detail"] and "1 - min cosine 0.293" in row["detail"]
    row = check(compare_one_logits(measured, STRICT), "logits_max_abs_diff")
    assert row["status"] == "not_checked" and "the profile sets no logits threshold" in row["detail"]
    row = check(compare_one_logits(None, STRICT, missing="no full-vocabulary logits from the target"), "logits_max_abs_diff")
    assert (row["status"], row["measured"], row["detail"]) == ("not_checked", None, "no full-vocabulary logits from the target")


def compare_one_logits(measured, thresholds, missing=None):
    return compare_many([record([5])], [record([5])], thresholds, logits=measured, logits_missing=missing)


def test_the_top_k_difference_is_measured_where_the_references_top_k_is_padded():
    # At position 1 the reference reports one alternative (its row padded); token 6 is in both top-k.
    target = record([5, 6], top=[[[5, -0.1], [105, -2.1]], [[6, -0.2], [106, -2.2]]], logprobs=[-0.1, -0.2])
    reference = record([5, 6], top=[[[5, -0.1], [105, -2.1]], [[6, -0.5]]], logprobs=[-0.1, -0.5])
    prompt = compare_one(target, reference, LOOSE)["prompts"][0]
    assert prompt["top_k_max_abs_logprob_diff"] == pytest.approx(0.3)


def test_the_answers_hash_is_sha256_of_each_answers_id_and_output_ids_over_batches():
    rng = random.Random(0)
    every_width = [0, 9, 10, 99, 100, 128_255, 2**31 - 1]  # one to ten figures
    records = [{"id": f"p{index} ü\"\\", "error": "failed" if index % 7 == 3 else None,
                "output_ids": [] if index % 11 == 5 else [rng.choice(every_width) for _ in range(rng.randrange(1, 40))]}
               for index in range(AnswersHash.BATCH * 2 + 17)]
    answered = [[r["id"], r["output_ids"]] for r in records if not r["error"] and r["output_ids"]]
    assert answers_hash({"records": records}) == sha256_of(answered)
    assert answers_hash({"records": records[:1]}) == sha256_of(answered[:1])
    assert answers_hash({"records": []}) == sha256_of([])
