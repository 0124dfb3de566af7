"""Plan to motion: every accepted plan executes within every limit from the measured pose; others say why.

"Within the position limits" means the real limits, without the tolerance band (that band judges raw
decodes and measured states only), checked on the interpolated motion between controller ticks too.
A robot measured beyond a stop within the band is taken to be on it: the motion starts there.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from eva_idm.embodiment import load_embodiment
from eva_idm.motion import (
    POSITION_ROUNDING,
    GateConfig,
    MotionResult,
    Verdict,
    offset_fade_weight,
    plan_to_motion,
    validate_trajectory,
)
from eva_idm.trajectory import StartState, Trajectory, sample, sample_uniform

EMBODIMENT = load_embodiment("aloha_agilex")
CONFIG = GateConfig.from_embodiment(EMBODIMENT)
RATE = CONFIG.controller_rate_hz
FPS = 16.0
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True)
MESSAGE = Path(__file__).resolve().parents[1] / "src" / "eva_msgs" / "msg" / "ExecutabilityReport.msg"
#                   j1   j2   j3   j4    j5   j6   gripper (x2 arms)
START = np.array([0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.5] * 2)
GOAL = START + np.array([0.8, 0.6, 0.4, -0.5, 0.3, 0.7, 0.4] * 2)
LEFT_ARM = EMBODIMENT.joint_names[:7]
LOWER, UPPER = EMBODIMENT.position_bounds(with_tolerance=False)
BAND = EMBODIMENT.per_joint("position_tolerance")


def ease(start: np.ndarray, goal: np.ndarray, seconds: float = 3.0, fps: float = FPS) -> np.ndarray:
    """Cosine ease from ``start`` to ``goal`` sampled at ``fps``: at rest at both ends."""
    phase = np.linspace(0.0, 1.0, int(round(seconds * fps)) + 1)
    return start + (goal - start) * (0.5 * (1.0 - np.cos(np.pi * phase)))[:, None]


def gate(decoded: np.ndarray, measured: np.ndarray = START, config: GateConfig = CONFIG, fps: float = FPS):
    return plan_to_motion(decoded, fps, measured, EMBODIMENT, config)


def commanded_positions(trajectory: Trajectory, measured: np.ndarray, seed: int = 0) -> np.ndarray:
    """Positions the controller commands at 100,000 instants, at ticks of random phase and around every point."""
    rng = np.random.default_rng(seed)
    times = np.concatenate([
        np.linspace(0.0, trajectory.duration, 100_000),
        rng.uniform(0.0, trajectory.duration, 10_000),
        np.clip(trajectory.times[:, None] + [-1e-9, 1e-9], 0.0, None).ravel(),
    ])
    return sample(trajectory, times, StartState.at_rest(measured))[0]


def assert_within_position_limits(trajectory: Trajectory, start: np.ndarray) -> None:
    """No commanded position beyond a stop (no band), at 110,000 instants of the interpolated motion."""
    positions = commanded_positions(trajectory, start)
    within = (positions >= LOWER - POSITION_ROUNDING) & (positions <= UPPER + POSITION_ROUNDING)
    assert within.all(), (positions.min(axis=0) - LOWER, UPPER - positions.max(axis=0))


def assert_executes_within_limits(result: MotionResult, measured: np.ndarray) -> None:
    """The executed motion starts at ``measured`` (on the stop if measured in its band) and meets every limit."""
    assert result.executable and result.verdict is Verdict.ACCEPTED, result.reason
    assert ((measured >= LOWER - BAND) & (measured <= UPPER + BAND)).all()
    start = np.clip(measured, LOWER, UPPER)
    trajectory = result.trajectory
    assert trajectory.joint_names == EMBODIMENT.joint_names
    assert trajectory.times[0] == 0.0
    np.testing.assert_array_equal(trajectory.positions[0], start)
    np.testing.assert_array_equal(trajectory.velocities[[0, -1]], 0.0)
    assert validate_trajectory(trajectory, EMBODIMENT, RATE, start_positions=start) == []
    assert_within_position_limits(trajectory, start)
    # Independently of motion_bounds: finite differences of the positions the controller commands,
    # with the robot at rest before t = 0 (each is a weighted mean of the true derivative).
    _, positions, _, _ = sample_uniform(trajectory, RATE, StartState.at_rest(start))
    commanded = np.concatenate([np.repeat(start[None], 3, axis=0), positions])
    for order, limit in ((1, "velocity_limit"), (2, "acceleration_limit"), (3, "jerk_limit")):
        derivative = np.diff(commanded, n=order, axis=0) * RATE**order
        assert (np.abs(derivative) <= EMBODIMENT.per_joint(limit) + 1e-6).all(), limit
    assert result.velocity_violations == result.acceleration_violations == result.jerk_violations == 0
    assert result.position_violations == 0 and result.offending_joints == ()


def test_verdict_codes_are_the_executability_report_constants():
    constants = dict(re.findall(r"^uint16 (\w+) = (\d+)", MESSAGE.read_text(), flags=re.MULTILINE))
    assert {name: int(value) for name, value in constants.items()} == {v.name: v.value for v in Verdict}


def test_a_smooth_plan_from_the_measured_pose_is_accepted_and_executes_within_limits():
    result = gate(ease(START, GOAL))
    assert_executes_within_limits(result, START)
    assert result.reward.reward == pytest.approx(10.0, abs=0.01)
    np.testing.assert_array_equal(result.start_offset, 0.0)
    assert result.max_smoothing_deviation < 0.005
    assert result.time_scale == CONFIG.time_scale
    assert result.trajectory.duration == pytest.approx(3.0 / CONFIG.time_scale)
    np.testing.assert_allclose(result.trajectory.positions[-1], GOAL, atol=0.005)
    assert result.reason.startswith("accepted")


def test_emitting_accelerations_executes_the_same_motion():
    config = GateConfig.from_embodiment(EMBODIMENT, emit_accelerations=True)
    with_accelerations = gate(ease(START, GOAL), config=config).trajectory
    without = gate(ease(START, GOAL)).trajectory
    assert with_accelerations.interpolation == "quintic" and without.interpolation == "cubic"
    times = np.linspace(0.0, without.duration, 1000)
    for quintic, cubic in zip(sample(with_accelerations, times), sample(without, times), strict=True):
        np.testing.assert_allclose(quintic, cubic, atol=1e-9)


def test_idm_jitter_is_smoothed_and_accepted():
    jitter = np.random.default_rng(0).uniform(-0.005, 0.005, size=(49, 14))
    result = gate(ease(START, GOAL) + jitter)
    assert_executes_within_limits(result, START)
    assert result.max_smoothing_deviation < 0.02


def test_big_jitter_is_rejected_by_the_reward():
    jitter = np.random.default_rng(0).uniform(-0.1, 0.1, size=(49, 14))
    result = gate(ease(START, GOAL) + jitter)
    assert result.verdict is Verdict.LOW_REWARD and not result.executable
    assert result.reward.reward < CONFIG.min_reward
    assert "min_reward" in result.reason and result.trajectory is None


def test_a_small_start_offset_is_faded_out():
    measured = START - 0.05
    result = gate(ease(START, GOAL), measured=measured)
    assert_executes_within_limits(result, measured)
    np.testing.assert_allclose(result.start_offset, 0.05)
    np.testing.assert_allclose(result.trajectory.positions[-1], GOAL, atol=0.005)


def test_the_offset_fade_has_no_slope_or_curvature_at_its_ends():
    fade = 0.5
    weights = offset_fade_weight(np.array([0.0, 1e-4, fade - 1e-4, fade, 2 * fade]), fade)
    np.testing.assert_allclose(weights, [1.0, 1.0, 0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_array_equal(offset_fade_weight(np.array([0.0, 0.1]), 0.0), [1.0, 0.0])


def test_a_large_start_offset_is_rejected_naming_the_joint():
    measured = START.copy()
    measured[2] -= 0.3
    result = gate(ease(START, GOAL), measured=measured)
    assert result.verdict is Verdict.START_OFFSET
    assert result.offending_joints == ("fl_joint3",)
    assert "fl_joint3 0.3" in result.reason and "max_start_offset" in result.reason
    assert result.start_offset[2] == pytest.approx(0.3)


def test_non_finite_decode_is_rejected_naming_frame_and_joint():
    decoded = ease(START, GOAL)
    decoded[7, 9] = np.nan
    result = gate(decoded)
    assert result.verdict is Verdict.NON_FINITE
    assert "frame 7, joint fr_joint3" in result.reason


def test_out_of_range_gripper_is_rejected():
    decoded = ease(START, GOAL)
    decoded[20:30, 6] = 1.3
    result = gate(decoded)
    assert result.verdict is Verdict.GRIPPER_RANGE
    assert result.offending_joints == ("left_gripper",) and result.position_violations == 10
    assert "left_gripper reaches 1.3" in result.reason


def test_an_open_gripper_decoded_just_beyond_its_stop_is_clamped_to_it():
    """An open gripper sits on its stop; IDM noise within the gripper band is planned as the stop itself."""
    open_start, open_goal = START.copy(), GOAL.copy()
    open_start[6] = open_goal[6] = 1.0
    decoded = ease(open_start, open_goal)
    decoded[:, 6] += 0.06 * np.sin(np.linspace(0.0, np.pi, len(decoded))) ** 2
    result = gate(decoded, measured=open_start)
    assert_executes_within_limits(result, open_start)
    assert commanded_positions(result.trajectory, open_start)[:, 6].max() <= 1.0 + POSITION_ROUNDING


@pytest.mark.parametrize(("position", "verdict"), [(-0.015, Verdict.ACCEPTED), (-0.03, Verdict.POSITION_LIMIT)])
def test_the_tolerance_band_at_a_stop_passes_noise_but_not_more(position: float, verdict: Verdict):
    """The home pose sits on j2's lower stop: decodes a little beyond it pass, further ones do not."""
    decoded = ease(START, GOAL)
    decoded[:, 1] = position
    measured = decoded[0].copy()
    result = gate(decoded, measured=measured)
    assert result.verdict is verdict, result.reason
    if verdict is Verdict.ACCEPTED:
        assert_executes_within_limits(result, measured)
        # Planned on the stop, and started there: the robot measured in the band is on it.
        j2 = commanded_positions(result.trajectory, measured)[:, 1]
        assert result.trajectory.positions[0, 1] == 0.0 and j2.max() < 1e-9
        assert result.start_offset[1] == pytest.approx(-position)
    else:
        assert "fl_joint2" in result.reason and result.offending_joints == ("fl_joint2",)


def drop_onto_the_stop(frames: int = 6) -> np.ndarray:
    """fl_joint2 falls from 0.5 rad onto its lower stop (0) in ``frames`` frames and rests there."""
    goal = START.copy()
    goal[1] = 0.0
    fall = ease(START, goal, seconds=frames / FPS)
    return np.vstack([fall, np.repeat(fall[-1:], 20, axis=0)])


def test_a_smoothing_undershoot_at_a_stop_is_pulled_back_inside_it():
    """Smoothing a fast fall onto a stop used to undershoot it by 0.0148 rad (inside the band: accepted, sent).

    The spline is now fitted within the limits, so no commanded position, between ticks either, lies beyond the stop.
    """
    result = gate(drop_onto_the_stop())
    assert_executes_within_limits(result, START)
    j2 = commanded_positions(result.trajectory, START)[:, 1]
    assert j2.min() >= -POSITION_ROUNDING and j2[-1] == pytest.approx(0.0, abs=1e-9)
    assert result.max_smoothing_deviation < CONFIG.max_smoothing_deviation[1]


def test_a_measured_pose_beyond_the_band_is_refused():
    """Measured 0.03 rad beyond j2's stop (band 0.02): the robot cannot be there, so nothing is planned from there."""
    measured = START.copy()
    measured[1] = -0.03
    decoded = ease(START, GOAL)
    decoded[:, 1] = 0.0
    result = gate(decoded, measured=measured)
    assert result.verdict is Verdict.POSITION_LIMIT and result.offending_joints == ("fl_joint2",)
    assert "measured joint positions beyond the position limits (tolerance band included): fl_joint2 -0.03" \
        in result.reason


def test_the_blend_from_a_measured_pose_beyond_a_stop_may_reach_back_to_it_but_no_further():
    """With times[0] > 0 JTC blends from the measured state to point 0: from within the band, back onto the stop."""
    measured = START[:7].copy()
    measured[1] = -0.015  # on j2's stop, measured within its band
    on_the_stop = measured.copy()
    on_the_stop[1] = 0.0
    blend = Trajectory(LEFT_ARM, [1.0, 2.0], [on_the_stop, on_the_stop], np.zeros((2, 7)))
    assert validate_trajectory(blend, EMBODIMENT, RATE, start_positions=measured, start_tolerance=0.02) == []
    # A blend whose point 0 moves outward overshoots beyond the measured pose (and so does point 0).
    outward = Trajectory(LEFT_ARM, [1.0, 2.0], [measured - [0, 0.001, 0, 0, 0, 0, 0]] * 2, np.zeros((2, 7)))
    positions = [violation for violation in validate_trajectory(outward, EMBODIMENT, RATE, start_positions=measured)
                 if violation.kind == "position"]
    assert [(violation.joint, violation.limit) for violation in positions] == [("fl_joint2", 0.0)]
    # Point 0 itself in the band, though blended to from further out: refused, it is a command.
    inside_band = Trajectory(LEFT_ARM, [1.0, 2.0], [measured + [0, 0.005, 0, 0, 0, 0, 0]] * 2, np.zeros((2, 7)))
    violations = validate_trajectory(inside_band, EMBODIMENT, RATE, start_positions=measured)
    assert {(violation.joint, violation.kind, violation.limit) for violation in violations} == {
        ("fl_joint2", "position", 0.0)
    }


def test_a_too_fast_plan_is_retimed_until_it_executes_within_limits():
    config = GateConfig.from_embodiment(EMBODIMENT, time_scale=1.0)
    decoded = ease(START, START + np.array([1.5, 0, 0, 0, 0, 0, 0] * 2), seconds=1.0)
    result = gate(decoded, config=config)
    assert_executes_within_limits(result, START)
    assert config.min_time_scale < result.time_scale < 1.0
    # Uniform retiming keeps the path: one point per frame, every one later by the same factor.
    np.testing.assert_allclose(result.trajectory.times, np.arange(len(decoded)) / FPS / result.time_scale)


def test_a_plan_too_fast_even_at_the_slowest_scale_is_rejected():
    config = GateConfig.from_embodiment(EMBODIMENT, time_scale=1.0, min_time_scale=1.0)
    decoded = ease(START, START + np.array([1.5, 0, 0, 0, 0, 0, 0] * 2), seconds=1.0)
    result = gate(decoded, config=config)
    assert result.verdict is Verdict.DYNAMIC_LIMITS and result.trajectory is None
    assert result.acceleration_violations > 0 and result.time_scale == 1.0
    assert set(result.offending_joints) == {"fl_joint1", "fr_joint1"}
    assert "fl_joint1 acceleration" in result.reason and "(limit 5)" in result.reason
    assert {violation.kind for violation in result.violations} <= {"velocity", "acceleration", "jerk"}


def test_a_jump_the_spline_cannot_follow_is_rejected():
    decoded = ease(START, GOAL)
    decoded[25:, 2] += 0.3
    result = gate(decoded)
    assert result.verdict is Verdict.SMOOTHING_DEVIATION
    assert result.offending_joints == ("fl_joint3",) and "max_smoothing_deviation" in result.reason
    assert result.max_smoothing_deviation > CONFIG.max_smoothing_deviation[2]


@pytest.mark.parametrize(
    ("decoded", "fps", "verdict", "words"),
    [
        (np.zeros((49, 13)), FPS, Verdict.MALFORMED_PLAN, "(frames, 14)"),
        (np.zeros(49), FPS, Verdict.MALFORMED_PLAN, "(49,)"),
        ([["a"] * 14] * 49, FPS, Verdict.MALFORMED_PLAN, "numbers"),
        (np.zeros((49, 14)), 0.0, Verdict.MALFORMED_PLAN, "fps"),
        (np.zeros((49, 14)), math.nan, Verdict.MALFORMED_PLAN, "fps"),
        (np.zeros((3, 14)), FPS, Verdict.TOO_FEW_FRAMES, "3 frames"),
    ],
)
def test_malformed_plans_are_verdicts_not_exceptions(decoded: object, fps: float, verdict: Verdict, words: str):
    result = plan_to_motion(decoded, fps, START, EMBODIMENT, CONFIG)
    assert result.verdict is verdict and words in result.reason and result.trajectory is None


@pytest.mark.parametrize(
    ("measured", "words"), [(None, "none"), (START[:7], "14 values"), (START * np.nan, "fl_joint1")]
)
def test_a_missing_or_bad_joint_state_is_rejected(measured: np.ndarray | None, words: str):
    result = plan_to_motion(ease(START, GOAL), FPS, measured, EMBODIMENT, CONFIG)
    assert result.verdict is Verdict.NO_JOINT_STATE and words in result.reason


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"time_scal": 0.5}, "overrides"),
        ({"time_scale": 1.5}, "gate.time_scale"),
        ({"min_time_scale": 0.6}, "gate.min_time_scale"),
        ({"controller_rate_hz": math.nan}, "gate.controller_rate_hz"),
        ({"max_start_offset": (0.1,) * 13}, "gate.max_start_offset"),
        ({"max_retime_iterations": 0}, "gate.max_retime_iterations"),
    ],
)
def test_gate_config_errors_name_the_setting(overrides: dict, field: str):
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}:"):
        GateConfig.from_embodiment(EMBODIMENT, **overrides)


def left_arm(positions: np.ndarray, velocities: np.ndarray | None = None, times: tuple = (0.0, 1.0)) -> Trajectory:
    return Trajectory(LEFT_ARM, times, positions, velocities)


def test_validator_catches_overshoot_between_in_limit_points():
    """Every point is within limits, but inconsistent velocities make the cubic dip below j2's stop."""
    positions = np.tile(START[:7], (2, 1))
    positions[:, 1] = 0.05
    velocities = np.zeros((2, 7))
    velocities[0, 1] = -1.0
    violations = validate_trajectory(left_arm(positions, velocities), EMBODIMENT, RATE)
    dip = next(violation for violation in violations if violation.kind == "position")
    # p(s) = 0.05 - (s - 2 s^2 + s^3), lowest at s = 1/3: exactly there, against the stop itself (no band).
    assert dip.joint == "fl_joint2" and dip.limit == 0.0 and dip.count == 1
    assert dip.value == pytest.approx(0.05 - 4 / 27, abs=1e-12) and dip.time == pytest.approx(1 / 3, abs=1e-9)


def test_validator_checks_start_and_end_states():
    positions = np.tile(START[:7], (2, 1))
    velocities = np.zeros((2, 7))
    velocities[1, 3] = 0.1
    violations = validate_trajectory(
        left_arm(positions, velocities), EMBODIMENT, RATE, start_positions=START[:7] + 0.02
    )
    kinds = {(violation.kind, violation.joint) for violation in violations}
    assert ("start", "fl_joint1") in kinds and ("end_velocity", "fl_joint4") in kinds
    with pytest.raises(ValueError, match="^start_tolerance:"):
        validate_trajectory(left_arm(positions), EMBODIMENT, RATE, start_positions=START[:7], start_tolerance=0.0)
    with pytest.raises(ValueError, match="^trajectory.joint_names:.*'elbow'"):
        validate_trajectory(Trajectory(("elbow",), [0.0], [[0.0]]), EMBODIMENT, RATE)


def test_an_accepted_trajectory_split_per_arm_validates_per_arm():
    trajectory = gate(ease(START, GOAL)).trajectory
    for arm in EMBODIMENT.arm_slices().values():
        part = Trajectory(
            trajectory.joint_names[arm], trajectory.times, trajectory.positions[:, arm], trajectory.velocities[:, arm]
        )
        assert validate_trajectory(part, EMBODIMENT, RATE, start_positions=START[arm]) == []


@st.composite
def plausible_inputs(draw: st.DrawFn) -> tuple[np.ndarray, float, np.ndarray, GateConfig]:
    """Eases between random in-range poses, of any speed, with IDM-like jitter and start offsets."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lower, upper = EMBODIMENT.position_bounds(with_tolerance=False)
    frames = draw(st.sampled_from([49, 17, 5, 4]))
    start = rng.uniform(lower, upper)
    goal = np.clip(start + rng.uniform(-1.0, 1.0, 14) * draw(st.sampled_from([0.0, 0.3, 1.0, 3.0])), lower, upper)
    decoded = ease(start, goal, seconds=(frames - 1) / FPS)
    decoded += rng.uniform(-1.0, 1.0, decoded.shape) * draw(st.sampled_from([0.0, 0.005, 0.02, 0.1]))
    measured = start - rng.uniform(-1.0, 1.0, 14) * draw(st.sampled_from([0.0, 0.05, 0.15]))
    config = GateConfig.from_embodiment(
        EMBODIMENT,
        time_scale=draw(st.sampled_from([1.0, 0.5, 0.25])),
        min_time_scale=draw(st.sampled_from([0.1, 0.25])),
        # Without the reward gate, fast and jittery decodes reach the retimer too.
        min_reward=draw(st.sampled_from([6.0, 0.0])),
        emit_accelerations=draw(st.booleans()),
    )
    return decoded, FPS, measured, config


@st.composite
def broken_inputs(draw: st.DrawFn) -> tuple[object, float, object, GateConfig]:
    """A plausible input with one thing wrong: values, shape, frame count, fps or joint state."""
    decoded, fps, measured, config = draw(plausible_inputs())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    corruption = draw(st.sampled_from(["value", "width", "frames", "random", "fps", "state"]))
    if corruption == "value":
        decoded[rng.integers(len(decoded)), rng.integers(14)] = draw(st.sampled_from([np.nan, -np.inf, 1e300, 7.0]))
    elif corruption == "width":
        decoded = decoded[:, : draw(st.sampled_from([13, 0]))]
    elif corruption == "frames":
        decoded = decoded[: draw(st.integers(0, 3))]
    elif corruption == "random":
        decoded = rng.normal(0.0, draw(st.sampled_from([0.01, 1.0, 1e6])), decoded.shape)
    elif corruption == "fps":
        fps = draw(st.sampled_from([0.0, -16.0, math.nan, math.inf]))
    else:
        measured = draw(st.sampled_from([None, measured[:7], measured * np.nan]))
    return decoded, fps, measured, config


@PROPERTY
@given(inputs=st.one_of(plausible_inputs(), broken_inputs()))
def test_whatever_goes_in_is_rejected_with_a_reason_or_executes_within_limits(inputs: tuple):
    decoded, fps, measured, config = inputs
    result = plan_to_motion(decoded, fps, measured, EMBODIMENT, config)
    event(result.verdict.name)  # --hypothesis-show-statistics shows the mix of verdicts
    if result.executable:
        assert_executes_within_limits(result, measured)
        assert config.min_time_scale <= result.time_scale <= config.time_scale
    else:
        assert result.verdict is not Verdict.ACCEPTED and result.reason and result.trajectory is None


def decode_at_the_stops(
    seed: int, frames: int, on_stops: float, jitter: float, beyond: float, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(decoded, measured)``: eases onto, along and off the stops, decoded with noise that crosses them.

    ``on_stops``: share of joints starting (and, independently, ending) on a stop; ``jitter``: IDM
    noise, rad; ``beyond``: decoded samples pushed up to this many tolerance bands past the stop side;
    ``offset``: noise of the measured pose around the first frame (it may lie beyond a stop too).
    """
    rng = np.random.default_rng(seed)
    on_lower = rng.random(14) < 0.5
    stop, inward = np.where(on_lower, LOWER, UPPER), np.where(on_lower, 1.0, -1.0)
    away = 0.3 * (UPPER - LOWER)
    start = np.where(rng.random(14) < on_stops, stop, stop + inward * rng.uniform(0.0, 1.0, 14) * away)
    goal = np.where(rng.random(14) < on_stops, stop, stop + inward * rng.uniform(0.0, 1.0, 14) * away)
    decoded = ease(start, goal, seconds=(frames - 1) / FPS)
    decoded += rng.normal(0.0, jitter, decoded.shape) - inward * BAND * beyond * rng.random(decoded.shape)
    measured = decoded[0] + rng.uniform(-offset, offset, 14)
    return decoded, measured


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    frames=st.sampled_from([49, 17, 8]),
    on_stops=st.sampled_from([0.3, 0.7, 1.0]),
    jitter=st.sampled_from([0.0, 0.003, 0.01]),
    beyond=st.sampled_from([0.0, 0.5, 0.99, 1.5]),
    offset=st.sampled_from([0.0, 0.005, 0.03]),
    time_scale=st.sampled_from([1.0, 0.5]),
    emit_accelerations=st.booleans(),
)
def test_whatever_is_decoded_near_or_beyond_the_stops_no_command_leaves_the_limits(
    seed, frames, on_stops, jitter, beyond, offset, time_scale, emit_accelerations
):
    """No commanded position of an accepted plan lies beyond a stop (no band), between ticks too.

    Measured poses beyond a stop within the band start on the stop; beyond the band they are refused.
    """
    decoded, measured = decode_at_the_stops(seed, frames, on_stops, jitter, beyond, offset)
    config = GateConfig.from_embodiment(EMBODIMENT, time_scale=time_scale, emit_accelerations=emit_accelerations)
    result = gate(decoded, measured=measured, config=config)
    event(result.verdict.name)
    if result.executable:
        assert_executes_within_limits(result, measured)
    else:
        assert result.reason and result.trajectory is None


def test_the_stop_cases_include_accepted_plans_on_and_from_beyond_the_stops():
    """Guards the property above: its cases reach the stops, and many of them are accepted."""
    accepted = from_beyond = 0
    for seed in range(40):
        decoded, measured = decode_at_the_stops(seed, 49, 0.7, 0.003, 0.5, 0.005)
        result = gate(decoded, measured=measured)
        if result.executable:
            accepted += 1
            beyond = (measured < LOWER) | (measured > UPPER)
            from_beyond += bool(beyond.any())
            assert_executes_within_limits(result, measured)
    assert accepted >= 20 and from_beyond >= 10, (accepted, from_beyond)
