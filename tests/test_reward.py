"""EVA's reward reproduces the reference numbers, batches like single calls, and degrades safely."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from eva_idm.embodiment import load_embodiment
from eva_idm.reward import (
    ConsistencyConfig,
    RewardConfig,
    action_consistency_reward,
    bounded_reward,
    combine_rewards,
    eva_reward,
)

FPS = 16.0
FRAMES = 49
EMBODIMENT = load_embodiment("aloha_agilex")
CONFIG = RewardConfig.from_embodiment(EMBODIMENT)
CONSISTENCY = ConsistencyConfig.from_embodiment(EMBODIMENT)


def ease() -> np.ndarray:
    """Dims 0-5 follow a 1 rad cosine ease over the 3 s plan; all other dims stay at 0."""
    trajectory = np.zeros((FRAMES, 14))
    phase = np.arange(FRAMES) / (FRAMES - 1)
    trajectory[:, :6] = (0.5 * (1.0 - np.cos(np.pi * phase)))[:, None]
    return trajectory


def with_jitter(amplitude: float, dims: slice) -> np.ndarray:
    """Ease plus a * (-1, +1, -1, ...) on the given dims, starting with -a at frame 0."""
    trajectory = ease()
    trajectory[:, dims] += amplitude * np.where(np.arange(FRAMES) % 2 == 0, -1.0, 1.0)[:, None]
    return trajectory


def with_step() -> np.ndarray:
    trajectory = ease()
    trajectory[25:, 2] += 0.3
    return trajectory


REFERENCE_CASES = {
    "ease": (ease(), 10.000),
    "jitter 0.01 on dims 0-12": (with_jitter(0.01, slice(0, 13)), 4.947),
    "jitter 0.01 on all dims": (with_jitter(0.01, slice(0, 14)), 4.892),
    "jitter 0.05 on dims 0-12": (with_jitter(0.05, slice(0, 13)), 2.341),
    "jitter 0.05 on all dims": (with_jitter(0.05, slice(0, 14)), 2.308),
    "jitter 0.01 on dims 0-5": (with_jitter(0.01, slice(0, 6)), 6.329),
    "0.3 rad step on dim 2": (with_step(), 9.560),
}


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_reference_cases_from_eva_method_notes(case: str) -> None:
    trajectory, expected = REFERENCE_CASES[case]
    result = eva_reward(trajectory, FPS, CONFIG)
    assert result.valid
    assert result.reason == ""
    assert round(result.reward, 3) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("penalty", "reward"), [(0.0, 10.0), (1172.0, 7.94), (19640.0, 3.04)])
def test_bounded_reward_matches_the_worked_penalties(penalty: float, reward: float) -> None:
    assert bounded_reward(penalty, CONFIG) == pytest.approx(reward, abs=5e-3)


def test_penalty_is_the_weighted_sum_of_its_terms() -> None:
    result = eva_reward(with_jitter(0.05, slice(0, 14)), FPS, CONFIG)
    weighted = (
        0.5 * result.jerk_penalty
        + 0.25 * result.acceleration_penalty
        + 2.0 * result.velocity_limit_penalty
        + 1.0 * result.acceleration_limit_penalty
    )
    assert result.penalty == pytest.approx(weighted)
    assert result.reward == pytest.approx(10.0 * (1.0 + result.penalty / 2000.0) ** -0.5)


def test_velocity_limit_penalty_is_the_squared_excess() -> None:
    # A ramp 1 rad/s faster than fl_joint1's limit: no acceleration or jerk, one hinge term.
    trajectory = np.zeros((FRAMES, 14))
    trajectory[:, 0] = (2.670 + 1.0) * np.arange(FRAMES) / FPS
    result = eva_reward(trajectory, FPS, CONFIG)
    joint_weight = 1.0 / np.mean([1.0] * 12 + [0.2] * 2)
    assert result.velocity_limit_penalty == pytest.approx(joint_weight * 1.0**2 / 14)
    assert result.acceleration_penalty == pytest.approx(0.0, abs=1e-9)
    assert result.jerk_penalty == pytest.approx(0.0, abs=1e-6)
    assert result.reward < 10.0


def test_grippers_weigh_a_fifth_of_a_joint() -> None:
    # Tiny jitter stays in the Huber quadratic zone and below every limit, so only weights differ.
    jitter = 1e-4 * np.where(np.arange(FRAMES) % 2 == 0, -1.0, 1.0)
    on_joint, on_gripper = np.zeros((FRAMES, 14)), np.zeros((FRAMES, 14))
    on_joint[:, 0] = jitter
    on_gripper[:, 6] = jitter
    joint_penalty = eva_reward(on_joint, FPS, CONFIG).penalty
    assert eva_reward(on_gripper, FPS, CONFIG).penalty == pytest.approx(0.2 * joint_penalty)


def test_the_same_motion_sampled_faster_is_scored_as_faster() -> None:
    jittery = with_jitter(0.01, slice(0, 13))
    assert eva_reward(jittery, 32.0, CONFIG).reward < eva_reward(jittery, FPS, CONFIG).reward


def test_config_constants_change_the_reward() -> None:
    trajectory = with_jitter(0.01, slice(0, 13))
    lenient = dataclasses.replace(CONFIG, penalty_reference=20000.0)
    no_jerk = dataclasses.replace(CONFIG, jerk_weight=0.0)
    baseline = eva_reward(trajectory, FPS, CONFIG).reward
    assert eva_reward(trajectory, FPS, lenient).reward > baseline
    assert eva_reward(trajectory, FPS, no_jerk).reward > baseline
    equal_weights = RewardConfig.from_embodiment(EMBODIMENT, gripper_weight=1.0)
    assert equal_weights.dimension_weights == (1.0,) * 14


def test_batch_equals_per_item() -> None:
    batch = np.stack([trajectory for trajectory, _ in REFERENCE_CASES.values()])
    result = eva_reward(batch, FPS, CONFIG)
    assert result.reward.shape == (len(batch),)
    for index, trajectory in enumerate(batch):
        single = eva_reward(trajectory, FPS, CONFIG)
        for field in ("reward", "penalty", "jerk_penalty", "acceleration_penalty", "velocity_limit_penalty"):
            assert getattr(result, field)[index] == pytest.approx(getattr(single, field), rel=1e-12, abs=1e-12)
        assert result.valid[index] == single.valid


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, (3, 12, 14), elements=st.floats(-3.0, 3.0)),
    st.floats(1.0, 100.0),
    arrays(np.float64, (14,), elements=st.floats(-3.0, 3.0)),
)
def test_reward_is_bounded_batch_consistent_and_offset_invariant(batch, fps, offset) -> None:
    result = eva_reward(batch, fps, CONFIG)
    assert np.all((result.reward > 0.0) & (result.reward <= 10.0))
    shifted = eva_reward(batch + offset, fps, CONFIG)
    np.testing.assert_allclose(shifted.reward, result.reward, rtol=1e-6)
    for index in range(len(batch)):
        assert eva_reward(batch[index], fps, CONFIG).reward == pytest.approx(result.reward[index], rel=1e-12)


def test_standing_still_scores_the_maximum() -> None:
    assert eva_reward(np.full((FRAMES, 14), 0.4), FPS, CONFIG).reward == 10.0


@pytest.mark.parametrize("frames", [0, 1, 3])
def test_fewer_than_four_frames_score_zero_with_a_reason(frames: int) -> None:
    result = eva_reward(np.zeros((frames, 14)), FPS, CONFIG)
    assert result.reward == 0.0
    assert not result.valid
    assert "too few frames" in result.reason
    assert np.isnan(result.penalty)


def test_four_frames_are_enough() -> None:
    result = eva_reward(np.zeros((4, 14)), FPS, CONFIG)
    assert result.valid
    assert result.reward == 10.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_sample_scores_zero_and_leaves_the_rest_alone(bad: float) -> None:
    broken = ease()
    broken[7, 9] = bad
    result = eva_reward(np.stack([ease(), broken]), FPS, CONFIG)
    assert result.reward[0] == pytest.approx(10.0, abs=1e-3)
    assert result.reward[1] == 0.0
    np.testing.assert_array_equal(result.valid, [True, False])
    assert result.reason[0] == ""
    assert "frame 7" in result.reason[1] and "fr_joint3" in result.reason[1]
    assert np.isnan(result.penalty[1])


@pytest.mark.parametrize("shape", [(49, 13), (49,), (2, 3, 49, 14), (49, 15)])
def test_wrong_shape_is_a_value_error_naming_it(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=f"actions: expected shape .*got {re.escape(str(shape))}"):
        eva_reward(np.zeros(shape), FPS, CONFIG)


@pytest.mark.parametrize("fps", [0.0, -16.0, float("nan"), float("inf")])
def test_bad_fps_is_a_value_error(fps: float) -> None:
    with pytest.raises(ValueError, match="fps"):
        eva_reward(ease(), fps, CONFIG)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"penalty_reference": 0.0}, "penalty_reference"),
        ({"decay": float("nan")}, "decay"),
        ({"jerk_weight": -1.0}, "jerk_weight"),
        ({"velocity_limit": (1.0,) * 13}, "velocity_limit: expected 14 values"),
        ({"acceleration_limit": (0.0,) * 14}, "acceleration_limit: every value must be > 0"),
        ({"dimension_weights": (0.0,) * 14}, "dimension_weights"),
    ],
)
def test_invalid_config_names_the_field(change: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        dataclasses.replace(CONFIG, **change)


def test_breakdown_serialises_to_json_with_null_for_missing_terms() -> None:
    result = eva_reward(np.stack([ease(), np.full((FRAMES, 14), np.nan)]), FPS, CONFIG)
    decoded = json.loads(json.dumps(result.to_dict()))
    assert decoded["valid"] == [True, False]
    assert decoded["penalty"][1] is None
    assert decoded["reward"][1] == 0.0


# --- RLIR's action-consistency reward -------------------------------------------------------


def test_consistency_perfect_agreement_scores_the_maximum() -> None:
    result = action_consistency_reward(ease(), ease(), CONSISTENCY)
    assert (result.reward, result.agreement, result.mean_absolute_error) == (10.0, 1.0, 0.0)
    assert result.valid


def test_consistency_counts_frames_outside_the_tolerance() -> None:
    decoded = ease() + 0.01  # within 0.05 rad everywhere
    decoded[10, 3] += 0.1  # one frame off on one joint
    decoded[20, 6] += 0.3  # gripper within its 0.5 tolerance
    result = action_consistency_reward(decoded, ease(), CONSISTENCY)
    assert result.agreement == pytest.approx(48 / 49)
    assert result.reward == pytest.approx(10.0 * 48 / 49)
    assert result.mean_absolute_error == pytest.approx(0.01 + (0.1 + 0.3) / (49 * 14))


def test_consistency_batch_equals_per_item_and_flags_non_finite() -> None:
    noisy = ease() + 0.2
    broken = ease()
    broken[0, 0] = np.nan
    actions = np.stack([ease(), noisy, broken])
    result = action_consistency_reward(actions, np.stack([ease()] * 3), CONSISTENCY)
    for index in range(2):
        single = action_consistency_reward(actions[index], ease(), CONSISTENCY)
        assert result.reward[index] == single.reward
        assert result.mean_absolute_error[index] == pytest.approx(single.mean_absolute_error)
    assert result.reward[2] == 0.0
    assert not result.valid[2]
    assert "fl_joint1" in result.reason[2]


def test_consistency_rejects_mismatched_or_corrupt_reference() -> None:
    with pytest.raises(ValueError, match="reference: shape"):
        action_consistency_reward(ease(), ease()[:48], CONSISTENCY)
    corrupt = ease()
    corrupt[5, 13] = np.inf
    with pytest.raises(ValueError, match="reference: non-finite.*right_gripper"):
        action_consistency_reward(ease(), corrupt, CONSISTENCY)


def test_consistency_with_no_frames_scores_zero() -> None:
    result = action_consistency_reward(np.zeros((0, 14)), np.zeros((0, 14)), CONSISTENCY)
    assert result.reward == 0.0
    assert not result.valid


def test_combine_rewards_is_a_weighted_sum() -> None:
    decoded = with_jitter(0.01, slice(0, 13))
    eva = eva_reward(decoded, FPS, CONFIG)
    consistency = action_consistency_reward(decoded, ease(), CONSISTENCY)
    combined = combine_rewards((0.7, eva), (0.3, consistency))
    assert combined == pytest.approx(0.7 * eva.reward + 0.3 * consistency.reward)
    assert combine_rewards((1.0, eva)) == eva.reward


def test_combine_rewards_rejects_bad_input() -> None:
    eva = eva_reward(ease(), FPS, CONFIG)
    batch = eva_reward(np.stack([ease(), ease()]), FPS, CONFIG)
    with pytest.raises(ValueError, match="weight: must be a finite number >= 0, got -1.0"):
        combine_rewards((-1.0, eva))
    with pytest.raises(ValueError, match="shapes"):
        combine_rewards((0.5, eva), (0.5, batch))
    with pytest.raises(ValueError, match="at least one"):
        combine_rewards()
