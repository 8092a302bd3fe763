"""Preference arithmetic checked against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cai.errors import CaiError
from cai.feedback.preference_math import (
    Calibration,
    PositionBias,
    calibration,
    clamp_probability,
    debias_positions,
    drop_near_ties,
    ensemble_principles,
    option_probabilities,
    position_bias,
    soft_preference_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


# ---------------------------------------------------------------- option_probabilities


def test_option_probabilities_two_options_by_hand():
    # exp of the logits: [1, 2, 1, 3, e^5]; options are ids 1 and 3 -> 2 / (2 + 3) = 0.4, 3 / 5 = 0.6.
    # The big logit on id 4 must not matter: the softmax is restricted to the options.
    logits = torch.tensor([0.0, LN2, 0.0, LN3, 5.0])
    probs = option_probabilities(logits, [1, 3])
    assert probs.shape == (2,)
    assert probs.dtype == torch.float32
    assert probs.tolist() == pytest.approx([0.4, 0.6], abs=1e-6)


def test_option_probabilities_sums_variants():
    # option A = ids {1, 2}: mass 2 + 1 = 3; option B = id 3: mass 3 -> 0.5 / 0.5
    logits = torch.tensor([0.0, LN2, 0.0, LN3, 5.0])
    assert option_probabilities(logits, [[1, 2], [3]]).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    # a repeated variant id ("A" and " A" as one token) is counted once: still 2 vs 3
    assert option_probabilities(logits, [[1, 1], [3]]).tolist() == pytest.approx([0.4, 0.6], abs=1e-6)


def test_option_probabilities_three_options_and_batch():
    # row 0: masses e^0, e^ln2, e^ln3 = 1, 2, 3 -> 1/6, 2/6, 3/6
    # row 1: all equal logits -> 1/3 each
    logits = torch.tensor([[0.0, LN2, LN3, -1.0], [7.0, 7.0, 7.0, 9.0]])
    probs = option_probabilities(logits, [0, 1, 2])
    assert probs.shape == (2, 3)
    assert probs[0].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6], abs=1e-6)
    assert probs[1].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=1e-6)


def test_option_probabilities_is_stable_for_huge_and_low_precision_logits():
    # exp(10000) overflows; the difference is what counts: 1 / (1 + e) and e / (1 + e)
    e = math.e
    logits = torch.tensor([10000.0, 10001.0])
    assert option_probabilities(logits, [0, 1]).tolist() == pytest.approx([1 / (1 + e), e / (1 + e)], abs=1e-6)
    # 256 and 258 are exact in bfloat16; the answer is computed in float32: 1 / (1 + e^2)
    half = torch.tensor([256.0, 258.0], dtype=torch.bfloat16)
    probs = option_probabilities(half, [0, 1])
    assert probs.dtype == torch.float32
    assert probs[0].item() == pytest.approx(1 / (1 + e**2), abs=1e-6)


def test_option_probabilities_rejects_bad_ids():
    logits = torch.zeros(5)
    with pytest.raises(CaiError, match="outside the vocabulary"):
        option_probabilities(logits, [1, 5])
    with pytest.raises(CaiError, match="listed under options 0 and 1"):
        option_probabilities(logits, [[1, 2], [2]])
    with pytest.raises(CaiError, match="at least two options"):
        option_probabilities(logits, [1])
    with pytest.raises(CaiError, match="no token ids"):
        option_probabilities(logits, [[1], []])
    with pytest.raises(ValueError):
        option_probabilities(torch.zeros(1, 2, 5), [1, 2])


# ---------------------------------------------------------------- debiasing and position bias


def test_debias_positions_floats_and_arrays():
    # order (1,2): p_A = 0.8 for response 1; order (2,1): p_A = 0.4 for response 2, so 0.6 for response 1
    # average: (0.8 + 0.6) / 2 = 0.7
    assert debias_positions(0.8, 0.4) == pytest.approx(0.7, abs=1e-12)
    assert isinstance(debias_positions(0.8, 0.4), float)
    # [0.9, 0.5] and [0.9, 0.2]: (0.9 + 0.1) / 2 = 0.5, (0.5 + 0.8) / 2 = 0.65
    out = debias_positions(np.array([0.9, 0.5]), np.array([0.9, 0.2]))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [0.5, 0.65], atol=1e-12)


def test_debias_positions_cancels_a_pure_position_bias():
    # a judge that always says 0.7 for whatever is first has no real preference: (0.7 + 0.3) / 2 = 0.5
    assert debias_positions(0.7, 0.7) == pytest.approx(0.5, abs=1e-12)


def test_debias_positions_rejects_mismatch():
    with pytest.raises(ValueError):
        debias_positions(np.array([0.5, 0.5]), np.array([0.5]))
    with pytest.raises(ValueError):
        debias_positions(1.2, 0.5)


def test_position_bias_by_hand():
    # p > 0.5 for 0.7 and 0.6 only (0.5 is a tie, not a preference): 2 of 4 = 0.5
    # mean: (0.7 + 0.6 + 0.4 + 0.5) / 4 = 2.2 / 4 = 0.55
    bias = position_bias([0.7, 0.6, 0.4, 0.5])
    assert bias == PositionBias(first_preferred_share=0.5, mean_p_first=pytest.approx(0.55, abs=1e-12), count=4)
    # a biased judge: 3 of 4 above 0.5 -> 0.75; mean (0.9 + 0.8 + 0.6 + 0.1) / 4 = 0.6
    biased = position_bias(np.array([0.9, 0.8, 0.6, 0.1]))
    assert biased.first_preferred_share == 0.75
    assert biased.mean_p_first == pytest.approx(0.6, abs=1e-12)


def test_position_bias_needs_data():
    with pytest.raises(CaiError, match="no comparisons"):
        position_bias([])


# ---------------------------------------------------------------- ensembling and clamping


def test_ensemble_mean_and_logit_mean_by_hand():
    # mean: (0.8 + 0.5) / 2 = 0.65
    assert ensemble_principles([0.8, 0.5]) == pytest.approx(0.65, abs=1e-12)
    # log-odds: ln(0.8/0.2) = ln 4 and 0 -> mean ln 2 -> sigmoid = 2 / 3
    assert ensemble_principles([0.8, 0.5], method="logit_mean") == pytest.approx(2 / 3, abs=1e-9)
    # opposite confident principles cancel in both: 0.5
    assert ensemble_principles([0.9, 0.1], method="logit_mean") == pytest.approx(0.5, abs=1e-9)


def test_ensemble_over_principles_axis():
    # [comparisons, principles]: row means 0.5 and 0.3
    out = ensemble_principles(np.array([[0.2, 0.8], [0.1, 0.5]]))
    np.testing.assert_allclose(out, [0.5, 0.3], atol=1e-12)


def test_ensemble_logit_mean_stays_finite_at_certainty():
    # p = 1 is clipped to 1 - 1e-6: mean of logit(1 - 1e-6) and 0 is about 6.9, sigmoid about 0.999
    out = ensemble_principles([1.0, 0.5], method="logit_mean")
    expected = 1 / (1 + math.sqrt(1e-6 / (1 - 1e-6)))  # sigmoid(logit/2) = 1 / (1 + sqrt(eps / (1 - eps)))
    assert out == pytest.approx(expected, abs=1e-9)


def test_ensemble_rejects_unknown_method_and_empty():
    with pytest.raises(CaiError, match="unknown method 'median'"):
        ensemble_principles([0.5], method="median")
    with pytest.raises(CaiError, match="no principle scores"):
        ensemble_principles([])


def test_clamp_probability():
    # paper's CoT band 40-60%
    assert clamp_probability(0.9) == 0.6
    assert clamp_probability(0.1) == 0.4
    assert clamp_probability(0.55) == 0.55
    np.testing.assert_array_equal(clamp_probability(np.array([0.0, 0.45, 1.0]), 0.3, 0.7), [0.3, 0.45, 0.7])
    assert clamp_probability(0.9, 0.5, 0.5) == 0.5


@pytest.mark.parametrize("low, high", [(0.6, 0.8), (0.2, 0.4), (-0.1, 0.6), (0.4, 1.1)])
def test_clamp_probability_rejects_bands_without_one_half(low, high):
    with pytest.raises(CaiError, match="clamp_probability"):
        clamp_probability(0.5, low, high)


# ---------------------------------------------------------------- soft-label reward loss


def test_soft_loss_by_hand():
    # d = 1 - 0 = 1; log sigmoid(1) = -ln(1 + e^-1), log sigmoid(-1) = -ln(1 + e)
    # loss = 0.75 * ln(1 + e^-1) + 0.25 * ln(1 + e) = ln(1 + e^-1) + 0.25 (since ln(1+e) = 1 + ln(1+e^-1))
    expected = math.log1p(math.exp(-1.0)) + 0.25
    loss = soft_preference_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.75]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # a tie at p = 0.5 and equal rewards: ln 2
    assert soft_preference_loss(torch.tensor([3.0]), torch.tensor([3.0]), 0.5).item() == pytest.approx(LN2, abs=1e-6)


def test_soft_loss_batch_mean_by_hand():
    # item 1: d = 0, p = 1 -> ln 2; item 2: d = 2, p = 0 -> -log sigmoid(-2) = ln(1 + e^2)
    expected = (LN2 + math.log1p(math.exp(2.0))) / 2
    loss = soft_preference_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_soft_loss_with_hard_labels_equals_trl_loss():
    # trl RewardTrainer.compute_loss: -logsigmoid(rewards_chosen - rewards_rejected [- margin]).mean()
    torch.manual_seed(0)
    chosen, rejected, margin = torch.randn(8), torch.randn(8), torch.rand(8)
    trl_loss = -F.logsigmoid(chosen - rejected).mean()
    trl_margin_loss = -F.logsigmoid(chosen - rejected - margin).mean()
    assert soft_preference_loss(chosen, rejected, 1.0).item() == pytest.approx(trl_loss.item(), abs=1e-6)
    assert soft_preference_loss(chosen, rejected, torch.ones(8), margin=margin).item() == pytest.approx(trl_margin_loss.item(), abs=1e-6)


def test_soft_loss_margin_by_hand_and_gradient():
    # d = 2 - 0 - 1 = 1, p = 1 -> ln(1 + e^-1)
    chosen = torch.tensor([2.0], requires_grad=True)
    loss = soft_preference_loss(chosen, torch.tensor([0.0]), 1.0, margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    # d loss / d r_chosen = sigmoid(d) - p = sigmoid(1) - 1 = -1 / (1 + e)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-1 / (1 + math.e), abs=1e-6)


def test_soft_loss_is_minimised_where_sigmoid_matches_the_label():
    # d = logit(0.8) = ln 4 gives sigmoid(d) = p = 0.8: the gradient vanishes there
    d = torch.tensor([LN2 * 2], requires_grad=True)
    soft_preference_loss(d, torch.zeros(1), 0.8).backward()
    assert abs(d.grad.item()) < 1e-6


def test_soft_loss_rejects_labels_outside_unit_interval():
    with pytest.raises(CaiError, match="p_chosen"):
        soft_preference_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0.5, 1.5]))


# ---------------------------------------------------------------- near-ties and calibration


def test_drop_near_ties_keeps_the_threshold_itself():
    # |p - 0.5|: 0.1 (kept, 0.6 - 0.5 is 0.0999... in binary), 0.05, 0.4, 0.1 (kept), 0
    mask = drop_near_ties([0.6, 0.55, 0.9, 0.4, 0.5], 0.1)
    assert mask.tolist() == [True, False, True, True, False]
    assert drop_near_ties(np.array([0.5, 0.51]), 0.0).tolist() == [True, True]


def test_drop_near_ties_rejects_bad_threshold():
    with pytest.raises(CaiError, match="threshold"):
        drop_near_ties([0.5], 0.6)


def test_calibration_by_hand():
    # bins=2: [0, 0.5) holds p=0.3 (y=0): gap |0 - 0.3| = 0.3, weight 1/4
    #         [0.5, 1] holds 0.9, 0.8, 0.6 (y=1,0,1): mean p 2.3/3, mean y 2/3, gap 0.1, weight 3/4
    # ECE = 0.075 + 0.075 = 0.15
    # Brier = (0.01 + 0.64 + 0.09 + 0.16) / 4 = 0.225
    # accuracy: predicted [1, 1, 0, 1] vs [1, 0, 0, 1] -> 3/4
    result = calibration([0.9, 0.8, 0.3, 0.6], [1, 0, 0, 1], bins=2)
    assert isinstance(result, Calibration)
    assert result.expected_calibration_error == pytest.approx(0.15, abs=1e-12)
    assert result.brier == pytest.approx(0.225, abs=1e-12)
    assert result.accuracy == 0.75
    assert result.count == 4


def test_calibration_bin_edges_and_perfect_calibration():
    # bins=2; p = 0.5 opens the upper bin and p = 1.0 is inside the last bin.
    # lower bin: p = 0.25 x4 with y = 1,0,0,0 -> mean y 0.25 = mean p, gap 0
    # upper bin: p = 0.5, 1.0 with y = 0, 1 -> mean p 0.75, mean y 0.5, gap 0.25
    # ECE = (4/6) * 0 + (2/6) * 0.25 = 1/12
    result = calibration([0.25, 0.25, 0.25, 0.25, 0.5, 1.0], [1, 0, 0, 0, 0, 1], bins=2)
    assert result.expected_calibration_error == pytest.approx(1 / 12, abs=1e-12)
    # p = 0.5 counts as not predicting the chosen: accuracy = (3 right in lower bin + y=0 at 0.5 + y=1 at 1.0) / 6 = 5/6
    assert result.accuracy == pytest.approx(5 / 6, abs=1e-12)


def test_calibration_rejects_bad_input():
    with pytest.raises(CaiError, match="outcomes must be 0 or 1"):
        calibration([0.5], [0.7])
    with pytest.raises(CaiError, match="bins"):
        calibration([0.5], [1], bins=0)
    with pytest.raises(CaiError, match="no held-out"):
        calibration([], [])
    with pytest.raises(ValueError):
        calibration([0.5, 0.6], [1])
