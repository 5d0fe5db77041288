"""The paired accuracy statistics against values computed by hand on small fixed examples, and the
refusals when the two sides did not score the same thing."""
import math

import pytest

from llm_parity.accuracy_stats import compare_task, mcnemar_exact, paired_bootstrap_ci
from llm_parity.records import IncompatibleRuns

BOS = 128000


def sample(doc_id: int, correct: bool, *, ids=None, lls=(-1.0, -2.0), prediction=None) -> dict:
    """One multiple-choice record as accuracy.sample_record writes it."""
    ids = ids or [BOS, 10 + doc_id, 20]
    return {"doc_id": doc_id, "doc_hash": f"d{doc_id}", "prompt_hash": f"p{doc_id}", "target": "0",
            "score": float(correct), "correct": correct, "kind": "loglikelihood",
            "requests": [{"ids": ids, "loglikelihood": ll, "is_greedy": False} for ll in lls],
            "prediction": (0 if correct else 1) if prediction is None else prediction}


def test_mcnemar_exact_matches_the_binomial_by_hand():
    # b flips one way, c the other: p = 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1.
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)  # 0.21875
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 0.03125: significant at 5%
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact(1, 1) == 1.0  # 2 * 3/4 capped
    assert mcnemar_exact(0, 0) == 1.0  # no flips, no evidence


def test_paired_bootstrap_interval_matches_the_resampling_distribution():
    # Differences [1, 0, 0, 0]: a resample's mean is k/4 with k ~ Binomial(4, 1/4);
    # P(k = 0) = 0.316 > 2.5%, P(k <= 2) = 0.949 < 97.5% <= P(k <= 3) = 0.996, so the 95% interval is [0, 0.75].
    assert paired_bootstrap_ci([True, False, False, False], [False, False, False, False]) == (0.0, 0.75)
    # Every document flips to wrong: the difference is -1 in every resample.
    assert paired_bootstrap_ci([False] * 3, [True] * 3) == (-1.0, -1.0)
    # The same seed gives the same interval.
    values = [True, False, True, True, False], [True, True, False, True, True]
    assert paired_bootstrap_ci(*values) == paired_bootstrap_ci(*values)


def test_a_task_with_flips_both_ways_by_hand():
    target = [sample(i, c) for i, c in enumerate([True, True, False, True, False, True])]
    reference = [sample(i, c) for i, c in enumerate([True, False, False, True, True, True])]
    result = compare_task("t", target, reference, bos=BOS, window=100)
    assert (result["target_accuracy"], result["reference_accuracy"], result["difference"]) == (4 / 6, 4 / 6, 0.0)
    assert result["flipped_to_correct"] == [1] and result["flipped_to_wrong"] == [4]
    assert result["mcnemar_p"] == 1.0
    assert result["agreement"] == pytest.approx(4 / 6) and result["disagreeing"] == [1, 4]
    assert result["max_abs_loglikelihood_diff"] == 0.0


def test_one_flipped_answer_is_detected_and_counted():
    reference = [sample(i, True, lls=(-1.0, -1.5)) for i in range(5)]
    target = [sample(i, True, lls=(-1.0, -1.5)) for i in range(4)] + [sample(4, False, lls=(-1.6, -1.5))]
    result = compare_task("t", target, reference, bos=BOS, window=100)
    assert result["flipped_to_wrong"] == [4] and result["flipped_to_correct"] == []
    assert result["difference"] == pytest.approx(-0.2) and result["agreement"] == pytest.approx(0.8)
    assert result["mcnemar_p"] == 1.0  # one flip alone is no evidence of a drop
    assert math.isclose(result["max_abs_loglikelihood_diff"], 0.6)


def test_a_bos_on_one_side_only_is_refused_naming_the_side():
    target = [sample(0, True, ids=[10, 20])]
    reference = [sample(0, True, ids=[BOS, 10, 20])]
    with pytest.raises(IncompatibleRuns, match=r"reference scored a BOS \(128000\) first and the target did not"):
        compare_task("t", target, reference, bos=BOS, window=100)
    with pytest.raises(IncompatibleRuns, match=r"target scored a BOS \(128000\) first and the reference did not"):
        compare_task("t", reference, target, bos=BOS, window=100)


def test_other_tokenization_is_refused_with_where_it_differs():
    target = [sample(0, True, ids=[BOS, 10, 21, 30])]
    reference = [sample(0, True, ids=[BOS, 10, 20, 30])]
    with pytest.raises(IncompatibleRuns, match=r"task t document 0 request 0: tokenization differs at position 2"):
        compare_task("t", target, reference, bos=BOS, window=100)


def test_other_documents_or_truncated_contexts_are_refused():
    with pytest.raises(IncompatibleRuns, match="differ in doc_hash"):
        compare_task("t", [sample(0, True)], [{**sample(0, True), "doc_hash": "other"}], bos=BOS, window=100)
    with pytest.raises(IncompatibleRuns, match="3 tokens exceed the 2 both sides score without truncating"):
        compare_task("t", [sample(0, True)], [sample(0, True)], bos=BOS, window=2)


def test_accuracy_checks_apply_only_where_lm_eval_ran():
    from llm_parity.compare import Evidence, accuracy_section, needs_accuracy

    measured = needs_accuracy(lambda evidence, limits: "measured")

    def evidence(section, thresholds):
        return Evidence(suite={}, prompts=[], passages=[], thresholds=thresholds, accuracy=section)

    assert accuracy_section(None) == {"tasks": [], "note": ""}
    assert measured(evidence(accuracy_section({"target": None, "reference": None}), {})) is None  # left out
    one_side = accuracy_section({"target": {"tasks": []}, "reference": None})
    outcome = measured(evidence(one_side, {"accuracy": {}}))
    assert outcome.status == "not_checked" and "only the target side has accuracy.json" in outcome.detail
    no_limits = measured(evidence({"tasks": [{"task": "t"}], "note": ""}, {}))
    assert no_limits.status == "not_checked" and "no accuracy thresholds" in no_limits.detail
    assert measured(evidence({"tasks": [{"task": "t"}], "note": ""}, {"accuracy": {}})) == "measured"
