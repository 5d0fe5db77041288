"""The per-position measures and the run summary on hand-made distributions, against values worked
out by hand (the arithmetic is in each test's comment)."""
import math

import numpy as np
import pytest

from llm_parity.divergence import Positions, kld_summary, logit_measures, logits_summary, position_measures
from llm_parity.divergence import kl_with_tail as kl_of_rows
from llm_parity.records import top_k_arrays


def kl_with_tail(p: dict[int, float], q: dict[int, float]) -> float:
    """kl_with_tail of one position given as {token: probability} per side (padded to equal widths)."""
    width = max(len(p), len(q))

    def row(known):
        return (np.array([[*known, *[-1] * (width - len(known))]]), np.array([[*known.values(), *[0.0] * (width - len(known))]]))
    return float(kl_of_rows(*row(p), *row(q))[0])


def top(*pairs):
    """One position's top-k from (token, probability) pairs."""
    return top_k_arrays([[[token, math.log(p)] for token, p in pairs]])


def one_position(reference_top, reference_logprob, target_top, target_logprob, taken) -> dict:
    """position_measures at one position, as plain numbers."""
    found = position_measures(reference_top, [reference_logprob], target_top, [target_logprob], [taken])
    return {"kld": float(found.kld[0]), "delta_p": float(found.delta_p[0]), "same_top1": bool(found.same_top1[0]),
            "abs_logprob_diff": abs(float(found.target_logprobs[0] - found.reference_logprobs[0]))}


def test_kl_over_shared_tokens_and_one_tail_bucket():
    # P = (0.5, 0.3 | tail 0.2), Q = (0.4, 0.4 | tail 0.2):
    # 0.5 ln(0.5/0.4) + 0.3 ln(0.3/0.4) + 0.2 ln(0.2/0.2) = 0.111572 - 0.086305 + 0 = 0.025267
    assert kl_with_tail({1: 0.5, 2: 0.3}, {1: 0.4, 2: 0.4}) == pytest.approx(0.0252671, abs=1e-7)


def test_a_token_only_one_side_reports_joins_the_tail():
    # Token 3 is known to P only, so it is not a bucket of its own: buckets {1}, tail.
    # P = (0.6 | 0.4), Q = (0.5 | 0.5): 0.6 ln(0.6/0.5) + 0.4 ln(0.4/0.5) = 0.109393 - 0.089257 = 0.020136
    assert kl_with_tail({1: 0.6, 3: 0.3}, {1: 0.5, 2: 0.2}) == pytest.approx(0.0201355, abs=1e-7)


def test_the_tail_bound_never_exceeds_the_full_vocabulary_kl():
    full_p = {1: 0.5, 2: 0.2, 3: 0.2, 4: 0.1}
    full_q = {1: 0.4, 2: 0.1, 3: 0.3, 4: 0.2}
    exact = sum(p * math.log(p / full_q[t]) for t, p in full_p.items())
    assert kl_with_tail(full_p, full_q) == pytest.approx(exact)  # the whole vocabulary: exact
    assert kl_with_tail({1: 0.5, 2: 0.2}, {1: 0.4, 2: 0.1}) < exact  # top-2 only: a lower bound


def test_identical_distributions_have_zero_kl_and_no_delta():
    measures = one_position(top((5, 0.7), (6, 0.2)), math.log(0.7), top((5, 0.7), (6, 0.2)), math.log(0.7), 5)
    assert measures == {"kld": pytest.approx(0.0, abs=1e-15), "delta_p": 0.0, "same_top1": True, "abs_logprob_diff": 0.0}


def test_position_measures_of_a_flipped_near_tie():
    # The reference prefers 5 (0.45) to 6 (0.40); the target 6 (0.44) to 5 (0.43); the answer took 6.
    # KL = 0.45 ln(0.45/0.43) + 0.40 ln(0.40/0.44) + 0.15 ln(0.15/0.13)
    #    = 0.020458 - 0.038124 + 0.021465 = 0.003799
    measures = one_position(top((5, 0.45), (6, 0.40)), math.log(0.40),
                                 top((6, 0.44), (5, 0.43)), math.log(0.44), 6)
    assert measures["kld"] == pytest.approx(0.003799, abs=1e-6)
    assert measures["delta_p"] == pytest.approx(0.04)
    assert measures["same_top1"] is False
    assert measures["abs_logprob_diff"] == pytest.approx(math.log(0.44 / 0.40))


def test_the_taken_token_counts_as_reported_on_both_sides():
    # Token 7 is outside both top-1 lists but both sides gave its logprob: buckets {5, 7}, tail.
    # P = (0.8, 0.1 | 0.1), Q = (0.8, 0.05 | 0.15):
    # 0.1 ln(0.1/0.05) + 0.1 ln(0.1/0.15) = 0.069315 - 0.040547 = 0.028768
    measures = one_position(top((5, 0.8)), math.log(0.1), top((5, 0.8)), math.log(0.05), 7)
    assert measures["kld"] == pytest.approx(0.0287682, abs=1e-6)
    assert measures["delta_p"] == pytest.approx(-0.05)


def test_run_summary_like_llama_cpp():
    rows = ((0.0, 0.0, True), (0.1, 0.3, True), (0.2, -0.4, False), (0.3, 0.0, True))
    positions = Positions(*(np.array(column) for column in zip(*rows)), reference_logprobs=np.array([-1.0, -1.0, -1.0, -1.0]),
                          target_logprobs=np.array([-1.0, -1.2, -1.0, -1.2]))
    summary = kld_summary(positions)
    assert summary["mean_kld"] == pytest.approx(0.15)
    # sample standard deviation sqrt(0.05 / 3) = 0.129099, over sqrt(4): 0.064550
    assert summary["kld_stderr"] == pytest.approx(0.0645497, abs=1e-7)
    assert summary["max_kld"] == 0.3 and summary["kld_percentiles"]["50"] == pytest.approx(0.15)
    assert summary["same_top1_rate"] == 0.75
    assert summary["rms_delta_p"] == pytest.approx(math.sqrt((0.09 + 0.16) / 4))  # 0.25
    # perplexities exp(1.1) (target) over exp(1.0) (reference)
    assert summary["perplexity_ratio"] == pytest.approx(math.exp(0.1))
    assert summary["min_kld"] == 0.0 and summary["max_abs_logprob_diff"] == pytest.approx(0.2)
    assert kld_summary(Positions.joined([])) is None


def test_logit_measures_of_one_raised_logit():
    # Reference logits (0, 0, ln 2): P = (1/4, 1/4, 1/2); target (ln 2, 0, ln 2): Q = (2/5, 1/5, 2/5).
    # |Δ| = (ln 2, 0, 0): max 0.693147, mean 0.231049. Cosine: (ln 2)^2 / (ln 2 · √2 ln 2) = 1/√2.
    # KL = 1/4 ln(5/8) + 1/4 ln(5/4) + 1/2 ln(5/4) = -0.117501 + 0.055786 + 0.111572 = 0.049857
    measures = logit_measures([0.0, 0.0, math.log(2)], [math.log(2), 0.0, math.log(2)])
    assert measures == {"max_abs_logit_diff": pytest.approx(0.693147, abs=1e-6),
                        "mean_abs_logit_diff": pytest.approx(0.231049, abs=1e-6),
                        "cosine": pytest.approx(1 / math.sqrt(2)),
                        "kld": pytest.approx(0.049857, abs=1e-6)}


def test_a_shift_of_every_logit_moves_no_probability():
    # (1, 2, 3) against (2, 3, 4): the same softmax, so KL 0; |Δ| is 1 everywhere;
    # cosine = (2 + 6 + 12) / (√14 · √29) = 20 / √406 = 0.992583
    measures = logit_measures([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert measures["kld"] == pytest.approx(0.0, abs=1e-15)
    assert measures["max_abs_logit_diff"] == measures["mean_abs_logit_diff"] == pytest.approx(1.0)
    assert measures["cosine"] == pytest.approx(0.992583, abs=1e-6)


def test_identical_logits_and_vectors_of_different_lengths():
    assert logit_measures([3.0, -1.0], [3.0, -1.0]) == {"max_abs_logit_diff": 0.0, "mean_abs_logit_diff": 0.0,
                                                        "cosine": pytest.approx(1.0), "kld": pytest.approx(0.0, abs=1e-15)}
    with pytest.raises(ValueError, match="different lengths"):
        logit_measures([1.0, 2.0], [1.0])


def test_logits_summary_takes_the_worst_and_the_means():
    first = {"max_abs_logit_diff": 0.5, "mean_abs_logit_diff": 0.1, "cosine": 0.99, "kld": 0.02}
    second = {"max_abs_logit_diff": 0.2, "mean_abs_logit_diff": 0.3, "cosine": 0.98, "kld": 0.04}
    assert logits_summary([first, second]) == {
        "positions": 2, "max_abs_logit_diff": 0.5, "mean_abs_logit_diff": pytest.approx(0.2),
        "min_cosine": 0.98, "mean_kld": pytest.approx(0.03), "max_kld": 0.04}
    assert logits_summary([]) is None
