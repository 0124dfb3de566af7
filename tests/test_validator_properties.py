"""Property tests of the controller bridge's plan checks (the bulk of the fuzzing, without ROS).

Every case draws a fresh executable motion (a minimum-jerk move between random legal poses), asserts
that it is accepted, breaks it in one way and asserts the broken plan is refused with the right code
and a reason naming the fault. Bulk arrays come from a numpy generator seeded by a drawn integer, so
cases stay cheap; ``derandomize`` keeps CI runs identical. About 11,000 cases in all.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eva_idm.bridge_checks import NS_PER_S, Code, JointStateInput, PlanChecker, PlanInput, PlanVerdict, PointInput
from eva_idm.bridge_config import BridgeConfig, load_bridge_setup
from eva_idm.motion import POSITION_ROUNDING
from eva_idm.trajectory import StartState, Trajectory, sample, sample_uniform

CONFIG = BridgeConfig()
EMBODIMENT, CONTROLLERS = load_bridge_setup(CONFIG)
CHECKER = PlanChecker(CONFIG, EMBODIMENT, CONTROLLERS)
SMALL_CHECKER = PlanChecker(BridgeConfig(max_points=40), EMBODIMENT, CONTROLLERS)
NAMES = EMBODIMENT.joint_names
RATE = CHECKER.rate_hz
NOW = 1_700_000_000 * NS_PER_S
LOWER, UPPER = EMBODIMENT.position_bounds(with_tolerance=False)
BAND_LOWER, BAND_UPPER = EMBODIMENT.position_bounds()
GRIPPERS = EMBODIMENT.gripper_mask()
SEEDS = st.integers(0, 2**32 - 1)
JOINTS = st.integers(0, len(NAMES) - 1)


def cases(count: int) -> settings:
    return settings(max_examples=count, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclasses.dataclass
class Case:
    """A plan and the robot's state around it, all as plain values the test can break."""

    names: list[str]
    times_ns: list[int]
    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray | None
    measured: np.ndarray
    at_image: np.ndarray
    image_ns: int
    joint_names_at_image: list[str] = dataclasses.field(default_factory=lambda: list(NAMES))
    lengths: dict[tuple[int, str], int] = dataclasses.field(default_factory=dict)
    effort: dict[int, int] = dataclasses.field(default_factory=dict)
    state: JointStateInput | None = None

    def plan(self) -> PlanInput:
        def values(matrix: np.ndarray | None, index: int, field: str) -> np.ndarray:
            row = np.zeros(0) if matrix is None else matrix[index]
            length = self.lengths.get((index, field), len(row))
            return np.concatenate([row, np.zeros(length)])[:length]

        points = [PointInput(values(self.positions, k, "positions"), values(self.velocities, k, "velocities"),
                             values(self.accelerations, k, "accelerations"), [1.0] * self.effort.get(k, 0),
                             time_ns) for k, time_ns in enumerate(self.times_ns)]
        at_image = JointStateInput(self.joint_names_at_image, list(self.at_image), [], self.image_ns)
        return PlanInput("plan", self.image_ns, at_image, True, self.names, 0, points)

    def reading(self):
        state = self.state or JointStateInput(NAMES, list(self.measured), [0.0] * len(NAMES), NOW - 10_000_000)
        return CHECKER.read_joint_state(state)

    def verdict(self, checker: PlanChecker = CHECKER) -> PlanVerdict:
        return checker.check(self.plan(), self.reading(), NOW)


def good_case(seed: int, accelerations: bool = False) -> Case:
    """A minimum-jerk move of up to 0.2 rad per joint over 0.8-1.5 s, sampled at 10-25 points per second."""
    rng = np.random.default_rng(seed)
    margin = np.where(GRIPPERS, 0.2, 0.3)
    start = rng.uniform(LOWER + margin, UPPER - margin)
    move = rng.uniform(-0.2, 0.2, len(NAMES))
    duration = rng.uniform(0.8, 1.5)
    count = int(duration * rng.choice([10, 16, 25])) + 1
    phase = np.linspace(0.0, 1.0, count)
    shape = (10 * phase**3 - 15 * phase**4 + 6 * phase**5)[:, None]
    speed = (30 * phase**2 * (1 - phase) ** 2)[:, None] / duration
    acceleration = (60 * phase * (1 - phase) * (1 - 2 * phase))[:, None] / duration**2
    times_ns = [round(t * NS_PER_S) for t in phase * duration]
    return Case(list(NAMES), times_ns, start + move * shape, move * speed,
                move * acceleration if accelerations else None, start.copy(), start.copy(),
                NOW - int(rng.uniform(0.0, 600.0) * NS_PER_S))


def accepted(case: Case) -> PlanVerdict:
    verdict = case.verdict()
    assert verdict.accepted, verdict.reason
    return verdict


def refused(case: Case, code: Code, reason: str, checker: PlanChecker = CHECKER) -> PlanVerdict:
    verdict = case.verdict(checker)
    assert verdict.code is code and verdict.trajectory is None, (verdict.code, verdict.reason)
    assert re.search(reason, verdict.reason), (reason, verdict.reason)
    return verdict


@given(seed=SEEDS, with_accelerations=st.booleans(), field=st.sampled_from(["positions", "velocities",
       "accelerations"]), value=st.sampled_from([math.nan, math.inf, -math.inf]), joint=JOINTS, where=st.floats(0, 1))
@cases(1500)
def test_non_finite_values_anywhere_are_refused(seed, with_accelerations, field, value, joint, where):
    case = good_case(seed, with_accelerations)
    accepted(case)
    if field == "accelerations" and not with_accelerations:
        field = "velocities"
    point = round(where * (len(case.times_ns) - 1))
    getattr(case, field)[point, joint] = value
    refused(case, Code.MALFORMED_TRAJECTORY,
            re.escape(f"trajectory.points[{point}].{field}[{joint}] ({NAMES[joint]}): non-finite value {value}"))


@given(seed=SEEDS, kind=st.sampled_from(["unknown", "duplicate", "swap", "drop", "extra"]), first=JOINTS,
       second=JOINTS, name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12))
@cases(1000)
def test_wrong_duplicated_missing_or_reordered_joint_names_are_refused(seed, kind, first, second, name):
    case = good_case(seed)
    accepted(case)
    if first == second:
        second = (first + 1) % len(NAMES)
    names = case.names
    if kind == "unknown" and name not in NAMES:
        names[first], expected = name, f"unknown \\[{re.escape(repr(name))}\\]"
    elif kind == "duplicate" or kind == "unknown":
        names[first], expected = names[second], f"duplicated \\[{re.escape(repr(names[second]))}\\]"
    elif kind == "swap":
        names[first], names[second] = names[second], names[first]
        expected = "in embodiment order, got the wrong order"
    elif kind == "drop":
        expected = f"missing \\[{re.escape(repr(names.pop(first)))}\\]"
    else:
        names.insert(first, name if name not in NAMES else name + "_extra")
        expected = "unknown \\["
    refused(case, Code.MALFORMED_TRAJECTORY, "trajectory.joint_names: .*" + expected)


@given(seed=SEEDS, with_accelerations=st.booleans(), field=st.sampled_from(["positions", "velocities",
       "accelerations", "effort"]), length=st.integers(0, 40), where=st.floats(0, 1))
@cases(1000)
def test_short_long_or_missing_vectors_and_effort_are_refused(seed, with_accelerations, field, length, where):
    case = good_case(seed, with_accelerations)
    accepted(case)
    point = round(where * (len(case.times_ns) - 1))
    if field == "accelerations" and not with_accelerations:
        field = "positions"
    if field == "effort":
        case.effort[point] = max(length, 1)
        refused(case, Code.MALFORMED_TRAJECTORY, re.escape(f"trajectory.points[{point}].effort: must be empty"))
        return
    if length == len(NAMES):
        length = 0
    case.lengths[(point, field)] = length
    refused(case, Code.MALFORMED_TRAJECTORY, re.escape(
        f"trajectory.points[{point}].{field}: expected {len(NAMES)} values (one per joint), got {length}"))


@given(seed=SEEDS, kind=st.sampled_from(["repeat", "backwards", "negative", "late start", "too long", "too many"]),
       where=st.floats(0, 1), amount=st.floats(0, 1))
@cases(1000)
def test_non_increasing_late_absurdly_long_or_oversized_timing_is_refused(seed, kind, where, amount):
    case = good_case(seed)
    accepted(case)
    times = case.times_ns
    point = 1 + round(where * (len(times) - 2))
    if kind in ("repeat", "backwards", "negative"):
        times[point] = {"repeat": times[point - 1], "backwards": int(times[point - 1] * amount),
                        "negative": -int(1 + amount * NS_PER_S)}[kind]
        expected = f"points\\[{point}\\].time_from_start: .* is not after point {point - 1}'s"
    elif kind == "late start":
        times[0] = 1 + int(amount * (times[1] - 1))
        expected = "points\\[0\\].time_from_start: must be 0"
    elif kind == "too long":
        times[-1] = int((CONFIG.max_duration + 1e-6 + amount * 1e6) * NS_PER_S)
        expected = "longer than max_duration 120 s"
    else:  # against a small max_points (the generator makes at most 38 points), to keep the cases cheap
        accepted_by_small = SMALL_CHECKER.check(case.plan(), case.reading(), NOW)
        assert accepted_by_small.accepted, accepted_by_small.reason
        extra = SMALL_CHECKER.config.max_points + 1 - len(times) + int(amount * 10)
        times.extend(times[-1] + 1_000_000 * np.arange(1, extra + 1))
        case.positions = np.vstack([case.positions, np.repeat(case.positions[-1:], extra, axis=0)])
        case.velocities = np.vstack([case.velocities, np.zeros((extra, len(NAMES)))])
        refused(case, Code.MALFORMED_TRAJECTORY, "expected 2 to max_points 40 points", SMALL_CHECKER)
        return
    refused(case, Code.MALFORMED_TRAJECTORY, expected)


@given(seed=SEEDS, joint=JOINTS, upper=st.booleans(), inside=st.floats(0.0, 0.03), segment=st.floats(1.0, 1.5),
       speed=st.floats(0.0, 1.0))
@cases(1000)
def test_a_cubic_overshooting_the_limits_between_legal_waypoints_is_refused(seed, joint, upper, inside, segment,
                                                                           speed):
    """Three equal waypoints inside the limits, at rest but the middle one, whose legal velocity overshoots.

    Between two equal positions, a cubic leaving with velocity ``v`` peaks ``4/27 v h`` beyond them;
    ``v`` is drawn so that the peak clears the stop (the tolerance band is no allowance for commands)
    while the waypoints' velocities stay legal and the segments' accelerations (up to 4 v / h) within
    the limit. (The acceleration steps at the middle waypoint, so the jerk check objects too; the
    position breach must be reported.)
    """
    case = good_case(seed)
    accepted(case)
    limit_scale = 0.5 if GRIPPERS[joint] else 1.0  # normalised grippers have a shorter range
    needed = (inside * limit_scale + 0.005) / (4 / 27 * segment)
    fastest = 0.95 * min(EMBODIMENT.velocity_limit[joint], EMBODIMENT.acceleration_limit[joint] * segment / 4)
    velocity = needed + speed * (fastest - needed)
    edge = (UPPER[joint] - inside * limit_scale) if upper else (LOWER[joint] + inside * limit_scale)
    pose = case.measured
    pose[joint] = edge
    case.at_image = pose.copy()
    case.times_ns = [0, round(segment * NS_PER_S), round(2 * segment * NS_PER_S)]
    case.positions = np.repeat(pose[None], 3, axis=0)
    case.velocities = np.zeros((3, len(NAMES)))
    accepted(case)  # at rest at the edge of the range: fine
    case.velocities[1, joint] = velocity if upper else -velocity
    bound = UPPER[joint] if upper else LOWER[joint]
    refused(case, Code.LIMIT_VIOLATION, f"bounded at every instant.*: {NAMES[joint]} position [-0-9.e]+ "
                                        f"\\(limit {re.escape(f'{bound:.4g}')}\\)")


@given(seed=SEEDS, with_accelerations=st.booleans(), factor=st.floats(1.0, 3.0))
@cases(1000)
def test_a_motion_played_too_fast_is_refused_on_its_interpolated_dynamics(seed, with_accelerations, factor):
    case = good_case(seed, with_accelerations)
    accepted(case)
    duration = case.times_ns[-1] / NS_PER_S
    peak = 5.7735 * np.abs(case.positions[-1] - case.positions[0]).max() / duration**2  # min-jerk peak acceleration
    speedup = factor * max(3.0, math.sqrt(2 * 10.0 / peak))  # at least twice the largest acceleration limit
    case.times_ns = [round(t / speedup) for t in case.times_ns]
    case.velocities = case.velocities * speedup
    if with_accelerations:
        case.accelerations = case.accelerations * speedup**2
    refused(case, Code.LIMIT_VIOLATION, "(velocity|acceleration|jerk)")


@given(seed=SEEDS, joint=JOINTS, jump=st.floats(0.011, 1.0), sign=st.sampled_from([-1.0, 1.0]),
       what=st.sampled_from(["point 0", "robot moved", "waypoint"]), where=st.floats(0, 1))
@cases(1500)
def test_teleports_from_the_current_state_are_refused(seed, joint, jump, sign, what, where):
    case = good_case(seed)
    accepted(case)
    name = NAMES[joint]
    if what == "point 0":  # the plan does not start where the robot is
        case.positions[0, joint] += sign * jump
        refused(case, Code.START_OFFSET, f"trajectory point 0 differs .*start_tolerance 0.01: {name} ")
    elif what == "robot moved":  # the robot moved after the image was taken (staying within its range)
        case.measured[joint] = np.clip(case.measured[joint] + sign * jump, LOWER[joint], UPPER[joint])
        refused(case, Code.ROBOT_MOVED, f"the robot moved since the plan's image: .*moved_tolerance 0.01: {name} ")
    else:  # one waypoint jumps away and back: far too fast for the limits
        point = 1 + round(where * (len(case.times_ns) - 2))
        case.positions[point, joint] = np.clip(case.positions[point, joint] + sign * (0.1 + jump), LOWER[joint],
                                               UPPER[joint])
        refused(case, Code.LIMIT_VIOLATION, f"{name} (velocity|acceleration|jerk)")


@given(seed=SEEDS, joint=JOINTS, kind=st.sampled_from(["stale", "future", "nan", "missing", "out of range",
       "no velocities", "old image", "unstamped image", "image from the future", "image state incomplete"]),
       amount=st.floats(0.0, 1000.0))
@cases(1500)
def test_stale_or_implausible_joint_states_and_old_images_are_refused(seed, joint, kind, amount):
    case = good_case(seed)
    accepted(case)
    name, measured, zero = NAMES[joint], list(case.measured), [0.0] * len(NAMES)
    stamp = NOW - 10_000_000
    if kind == "stale":
        case.state = JointStateInput(NAMES, measured, zero, NOW - int((0.5001 + amount) * NS_PER_S))
        refused(case, Code.JOINT_STATES_STALE, "s old on the node clock \\(max_joint_state_age 0.5 s\\)")
    elif kind == "future":
        case.state = JointStateInput(NAMES, measured, zero, NOW + int((0.1001 + amount) * NS_PER_S))
        refused(case, Code.JOINT_STATES_IMPLAUSIBLE, "ahead of the node clock \\(clock_tolerance 0.1 s\\)")
    elif kind == "nan":
        measured[joint] = math.nan
        case.state = JointStateInput(NAMES, measured, zero, stamp)
        refused(case, Code.JOINT_STATES_IMPLAUSIBLE, f"non-finite position nan of {name}")
    elif kind == "missing":
        case.state = JointStateInput(NAMES[:joint] + NAMES[joint + 1:], measured[:joint] + measured[joint + 1:],
                                     zero[1:], stamp)
        refused(case, Code.JOINT_STATES_IMPLAUSIBLE, f"joints missing: '{name}'")
    elif kind == "out of range":
        measured[joint] = BAND_UPPER[joint] + CONFIG.joint_state_margin + 1e-4 + amount
        case.state = JointStateInput(NAMES, measured, zero, stamp)
        refused(case, Code.JOINT_STATES_IMPLAUSIBLE, f"widened by joint_state_margin 0.1: {name} ")
    elif kind == "no velocities":
        case.state = JointStateInput(NAMES, measured, zero[: joint], stamp)
        refused(case, Code.JOINT_STATES_IMPLAUSIBLE, f"{joint} velocity values for 14 names")
    elif kind == "old image":
        case.image_ns = NOW - int((600.001 + amount) * NS_PER_S)
        refused(case, Code.IMAGE_TOO_OLD, "s old on the node clock \\(max_image_age 600 s\\)")
    elif kind == "unstamped image":
        case.image_ns = 0
        refused(case, Code.IMAGE_TOO_OLD, "header.stamp: zero")
    elif kind == "image from the future":
        case.image_ns = NOW + int((0.1001 + amount) * NS_PER_S)
        refused(case, Code.IMAGE_TOO_OLD, "ahead of the node clock")
    else:
        case.joint_names_at_image = NAMES[:joint] + NAMES[joint + 1:]
        case.at_image = np.delete(case.at_image, joint)
        refused(case, Code.MALFORMED_TRAJECTORY, f"joint_state_at_image: joints missing: '{name}'")


@given(seed=SEEDS, joint=JOINTS, upper=st.booleans(), depth=st.floats(0.05, 0.99), segment=st.floats(0.5, 1.5))
@cases(500)
def test_a_dip_past_a_stop_within_the_band_is_refused(seed, joint, upper, depth, segment):
    """The band judges measured states, never commands: motion past a stop, even within the band, is refused.

    The robot rests on the stop; three waypoints on it, the middle one moving outward at ``v``, make
    the cubic dip ``4/27 v h`` = ``depth`` of the band past the stop between them (slowly: waypoint
    velocities and accelerations far within the limits).
    """
    case = good_case(seed)
    accepted(case)
    stop, outward = (UPPER[joint], 1.0) if upper else (LOWER[joint], -1.0)
    pose = case.measured
    pose[joint] = stop
    case.at_image = pose.copy()
    case.times_ns = [0, round(segment * NS_PER_S), round(2 * segment * NS_PER_S)]
    case.positions = np.repeat(pose[None], 3, axis=0)
    case.velocities = np.zeros((3, len(NAMES)))
    accepted(case)  # at rest on the stop: fine
    case.velocities[1, joint] = outward * depth * EMBODIMENT.position_tolerance[joint] / (4 / 27 * segment)
    refused(case, Code.LIMIT_VIOLATION, f"bounded at every instant.*: {NAMES[joint]} position [-0-9.e]+ "
                                        f"\\(limit {re.escape(f'{stop:.4g}')}\\)")


@given(seed=SEEDS, joint=JOINTS, speed=st.floats(2.0, 200.0), phase=st.floats(0.05, 0.45),
       width=st.floats(1e-4, 4e-3), with_accelerations=st.booleans())
@cases(500)
def test_motion_between_the_controller_ticks_is_checked(seed, joint, speed, phase, width, with_accelerations):
    """A plan at rest on every 100 Hz tick from t = 0 that moves in between them is refused.

    Four waypoints between two ticks (``phase`` of a period after one) form a trapezoid of up to
    ``width`` seconds, at rest at every tick; its slopes run at ``speed`` times the velocity limit on
    average. Sampled on the grid from t = 0 it never moves (a real controller ticks at any offset);
    bounded exactly it is far too fast.
    """
    case = good_case(seed, with_accelerations)
    accepted(case)
    period = 1.0 / RATE
    pose = case.measured
    case.at_image = pose.copy()
    rise = min(width / 3, (1.0 - phase) * period / 4)
    tick = 5 * period
    times = [0.0, tick, tick + phase * period, tick + phase * period + rise, tick + phase * period + 2 * rise,
             tick + phase * period + 3 * rise, tick + period, tick + 2 * period]
    case.times_ns = [round(t * NS_PER_S) for t in times]
    case.positions = np.repeat(pose[None], len(times), axis=0)
    case.velocities = np.zeros((len(times), len(NAMES)))
    case.accelerations = np.zeros((len(times), len(NAMES))) if with_accelerations else None
    height = min(speed * EMBODIMENT.velocity_limit[joint] * rise, 0.45 * (UPPER[joint] - LOWER[joint]))
    towards_the_farther_stop = 1.0 if UPPER[joint] - pose[joint] >= pose[joint] - LOWER[joint] else -1.0
    case.positions[[3, 4], joint] += towards_the_farther_stop * height
    plan = Trajectory(NAMES, np.array(case.times_ns) / NS_PER_S, case.positions, case.velocities, case.accelerations)
    _, on_the_grid, _, _ = sample_uniform(plan, RATE, StartState.at_rest(pose))
    assert np.abs(on_the_grid - pose).max() < 1e-9
    refused(case, Code.LIMIT_VIOLATION, f"{NAMES[joint]} velocity")


def assert_safe(verdict: PlanVerdict, measured: np.ndarray) -> None:
    """Independently of the validator: the commanded motion starts at the pose and keeps every limit.

    Positions are sampled densely (between the controller's ticks too) against the real limits, no
    band. Finite differences of the positions the controller commands at its ticks, with the robot
    at rest before t = 0, are means of the true derivatives, so they may not exceed the limits either.
    """
    trajectory = verdict.trajectory
    np.testing.assert_array_equal(trajectory.positions[0], measured)
    dense = np.concatenate([np.linspace(0.0, trajectory.duration, 20_000),
                            np.random.default_rng(0).uniform(0.0, trajectory.duration, 2_000)])
    commanded = sample(trajectory, dense, StartState.at_rest(measured))[0]
    assert ((commanded >= LOWER - POSITION_ROUNDING) & (commanded <= UPPER + POSITION_ROUNDING)).all()
    _, positions, _, _ = sample_uniform(trajectory, RATE, StartState.at_rest(measured))
    commanded = np.concatenate([np.repeat(measured[None], 3, axis=0), positions])
    for order, limit in ((1, "velocity_limit"), (2, "acceleration_limit"), (3, "jerk_limit")):
        derivative = np.diff(commanded, n=order, axis=0) * RATE**order
        assert (np.abs(derivative) <= EMBODIMENT.per_joint(limit) + 1e-6).all(), limit


@given(seed=SEEDS, with_accelerations=st.booleans(), edits=st.lists(st.tuples(
    st.sampled_from(["scale values", "jitter", "shift times", "replace value", "truncate", "rename"]),
    st.integers(0, 10**6), st.floats(allow_nan=True, allow_infinity=True, width=64)), max_size=3))
@cases(1500)
def test_any_plan_gets_a_verdict_and_whatever_is_accepted_is_safe(seed, with_accelerations, edits):
    case = good_case(seed, with_accelerations)
    for kind, index, value in edits:
        rows, joint = len(case.times_ns), index % len(NAMES)
        point = index % rows
        if kind == "scale values":
            case.velocities = case.velocities * (np.clip(value, -1e6, 1e6) if math.isfinite(value) else 1.0)
        elif kind == "jitter":
            case.positions[point:] += np.random.default_rng(index).normal(0.0, 1e-3, case.positions[point:].shape)
        elif kind == "shift times" and point > 0:
            case.times_ns[point] += int(np.clip(value, -1e18, 1e18)) if math.isfinite(value) else 1
        elif kind == "replace value":
            case.positions[point, joint] = value
        elif kind == "truncate" and rows > 2:
            case.times_ns, case.positions = case.times_ns[:point + 1], case.positions[:point + 1]
            case.velocities = case.velocities[:point + 1]
            case.accelerations = None if case.accelerations is None else case.accelerations[:point + 1]
        elif kind == "rename":
            case.names[joint] = str(value)
    verdict = case.verdict()  # never raises, whatever the input
    assert isinstance(verdict.code, Code) and verdict.reason
    if verdict.accepted:
        assert_safe(verdict, case.measured)
    else:
        assert verdict.trajectory is None


def test_the_case_generator_makes_executable_motions_with_and_without_accelerations():
    """Guards the properties above: their 'known good' plans are genuinely accepted and safe."""
    for seed in range(50):
        for with_accelerations in (False, True):
            case = good_case(seed, with_accelerations)
            assert_safe(accepted(case), case.measured)
