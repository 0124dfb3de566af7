"""Plan to motion: the gate from a decoded video plan to a trajectory a controller may execute.

DESIGN.md section 3, "From decoded frames to commanded motion", steps 2-4, as one pure function,
:func:`plan_to_motion`, shared by the IDM node, ``eva`` and the tests:

1. **Hard verdicts on the raw decode**: shape, frame count, finite values, position limits with
   the tolerance band (grippers: their 0..1 range with their band), and EVA's reward on the raw
   decode (what the reward means) against ``min_reward``. Values inside the band but beyond a
   stop are then clamped to the stop: that is IDM noise at a pose on the stop. The band judges
   raw decodes and measured states only: a measured pose beyond it is refused, one within it is
   taken to be on the stop. Every commanded position lies within the real limits.
2. **Start offset** (decoded first pose minus measured pose) is IDM error, not motion: reported
   per joint, rejected above ``max_start_offset``, otherwise subtracted with a weight that falls
   from 1 to 0 over ``start_offset_fade_s`` of plan time (longer once retimed slower) along a
   quintic smoothstep (zero slope and curvature at both ends, so the correction adds no velocity or
   acceleration step). The motion starts at the measured pose clamped to the limits (the
   controller bridge does the same); within the band that difference is the measurement's, not
   motion.
3. **Rest-to-rest smoothing spline**: a cubic B-spline with a knot at every frame, starting exactly
   at that start pose with zero velocity and acceleration and ending at rest, fitted by least
   squares with a jerk penalty (:func:`rest_to_rest_spline`) to the offset-corrected decode clamped
   to the limits (the fade of a start offset can push a frame beyond a stop), with its
   coefficients held within the limits: a B-spline is a convex combination of its coefficients, so
   the spline, and the motion that reproduces it, cannot cross a stop between frames either (a
   smoothing undershoot at a stop is pulled back by the fit, not clipped after it). Its deviation
   from the clamped offset-corrected decode is bounded by ``max_smoothing_deviation`` and reported.
4. **Uniform retiming**: the spline's value, velocity and acceleration at every frame become the
   trajectory's points, played ``1 / time_scale`` times slower than planned. Starting from the
   configured ``time_scale``, the retimer checks velocity, acceleration and jerk on the motion the
   controller executes (:func:`eva_idm.trajectory.motion_bounds` of the emitted points: exact over
   every segment, steps charged over one tick at ``controller_rate_hz``; never 16 Hz finite
   differences) and slows down by the factor the worst violation asks for, until the limits hold or
   ``min_time_scale`` is reached.
5. **Final check** of positions (and everything else) on that executed motion, with
   :func:`validate_trajectory`, the validator the controller bridge reuses.

Why a cubic spline with points at its knots: a cubic Hermite segment is fixed by position and
velocity at both ends, so JTC's cubic interpolation of the emitted points reproduces the spline
exactly, and so does its quintic interpolation when accelerations are emitted too
(``emit_accelerations``). The executed motion is then twice continuously differentiable, with a
bounded, piecewise-constant jerk.

Verdict numbers equal ``eva_msgs/msg/ExecutabilityReport`` constants, so nodes copy them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum

import numpy as np
from numpy.typing import ArrayLike
from scipy.interpolate import BSpline
from scipy.optimize import lsq_linear

from eva_idm.embodiment import Embodiment, GateDefaults
from eva_idm.reward import MIN_FRAMES, RewardBreakdown, RewardConfig, eva_reward, non_finite_reason
from eva_idm.trajectory import Extremes, MotionBounds, StartState, Trajectory, motion_bounds

DYNAMIC_KINDS = ("velocity", "acceleration", "jerk")
_DERIVATIVE_ORDER = {"velocity": 1, "acceleration": 2, "jerk": 3}
_LIMIT_FIELD = {"velocity": "velocity_limit", "acceleration": "acceleration_limit", "jerk": "jerk_limit"}
# MoveIt's default allowed_start_tolerance, rad: how far point 0 may be from the measured pose.
DEFAULT_START_TOLERANCE = 0.01
# How far past a position bound a commanded position may lie before it counts as beyond it: the
# rounding of evaluating the interpolation (about 1e-16 rad), with room to spare, and six orders
# of magnitude below any encoder's resolution. Not a tolerance band.
POSITION_ROUNDING = 1e-9
# Retiming aims this far below the limits, so that sampling the slower motion at a new phase does
# not land a hair above a limit and cost another iteration.
RETIME_MARGIN = 0.98
# Reasons list at most this many joints, then say how many more.
_REASON_ITEMS = 6


class Verdict(IntEnum):
    """Outcome of the gate; the values are ``eva_msgs/msg/ExecutabilityReport`` codes."""

    ACCEPTED = 0
    MALFORMED_PLAN = 1
    HASH_MISMATCH = 2
    TOO_FEW_FRAMES = 3
    NO_JOINT_STATE = 4
    NON_FINITE = 5
    POSITION_LIMIT = 6
    GRIPPER_RANGE = 7
    START_OFFSET = 8
    SMOOTHING_DEVIATION = 9
    LOW_REWARD = 10
    DYNAMIC_LIMITS = 11
    COLLISION = 12
    INTERNAL_ERROR = 13


@dataclass(frozen=True)
class GateConfig(GateDefaults):
    """Thresholds of the plan-to-motion gate; build it with :meth:`from_embodiment`.

    The embodiment's :class:`~eva_idm.embodiment.GateDefaults` (inherited fields and checks; the
    per-joint tuples follow the embodiment's joint order) plus the gate's own settings:

    Attributes:
        smoothing_cutoff_hz: frequency at which the smoothing spline halves a sinusoid's amplitude
            (plan time). Arm motion lies below it, IDM frame-to-frame jitter above.
        min_time_scale: slowest retiming allowed (0.1: a 3 s plan may take 30 s); a plan that needs
            slower is rejected with DYNAMIC_LIMITS.
        max_retime_iterations: most trajectories the retimer builds and checks.
        emit_accelerations: fill accelerations too, so JTC interpolates quintic; the executed motion
            is the same (see the module docstring), for controllers that want them.
    """

    smoothing_cutoff_hz: float = 2.5
    min_time_scale: float = 0.1
    max_retime_iterations: int = 8
    emit_accelerations: bool = False

    def __post_init__(self) -> None:
        for name in ("max_start_offset", "max_smoothing_deviation"):
            object.__setattr__(self, name, _finite_tuple(f"gate.{name}", getattr(self, name)))
        for name in ("min_reward", "start_offset_fade_s", "time_scale", "controller_rate_hz", "smoothing_cutoff_hz"):
            _finite(f"gate.{name}", getattr(self, name))
        super().__post_init__()  # the checks of the fields the embodiment YAML provides
        if self.smoothing_cutoff_hz <= 0.0:
            raise ValueError(f"gate.smoothing_cutoff_hz: must be > 0, got {self.smoothing_cutoff_hz}")
        if not 0.0 < _finite("gate.min_time_scale", self.min_time_scale) <= self.time_scale:
            raise ValueError(
                f"gate.min_time_scale: must lie in (0, time_scale={self.time_scale}], got {self.min_time_scale}"
            )
        if isinstance(self.max_retime_iterations, bool) or not isinstance(self.max_retime_iterations, int):
            raise ValueError(f"gate.max_retime_iterations: expected a whole number, got {self.max_retime_iterations!r}")
        if self.max_retime_iterations < 1:
            raise ValueError(f"gate.max_retime_iterations: must be >= 1, got {self.max_retime_iterations}")
        if not isinstance(self.emit_accelerations, bool):
            raise ValueError(f"gate.emit_accelerations: expected true or false, got {self.emit_accelerations!r}")

    @classmethod
    def from_embodiment(cls, embodiment: Embodiment, **overrides: object) -> GateConfig:
        """The embodiment's gate defaults, with ``overrides`` (e.g. a node's parameters) on top.

        Raises:
            ValueError: an override names no setting, or a value is invalid.
        """
        known = {setting.name for setting in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"overrides: unknown gate setting(s) {unknown}; expected some of {sorted(known)}")
        defaults = {setting.name: getattr(embodiment.gate, setting.name) for setting in fields(GateDefaults)}
        config = cls(**{**defaults, **overrides})
        config.check_width(embodiment)
        return config

    def check_width(self, embodiment: Embodiment) -> None:
        """Raise ValueError unless the per-joint tuples have one value per joint of ``embodiment``."""
        for name in ("max_start_offset", "max_smoothing_deviation"):
            values = getattr(self, name)
            if len(values) != embodiment.num_joints:
                raise ValueError(
                    f"gate.{name}: expected {embodiment.num_joints} values (one per joint), got {len(values)}"
                )


@dataclass(frozen=True)
class Violation:
    """A limit the executed motion breaks at one joint: its worst instant and how many pieces break it.

    Attributes:
        joint: joint name.
        kind: ``position``, ``velocity``, ``acceleration``, ``jerk``, ``start`` (point 0 too far from
            the measured pose), ``end_velocity`` (the last point is not at rest) or ``unbounded``
            (a segment's polynomial is not finite in floating point; ``value`` and ``limit`` NaN).
        value: the worst value (signed; for ``start`` the difference point 0 minus measured pose).
        limit: the bound it crosses (the lower or upper position bound, else the magnitude limit).
        time: seconds from the trajectory's start of the worst instant (for ``unbounded``, of the
            first such segment's start).
        count: pieces of the motion beyond the limit: segments (exact extremes), plus, for
            velocity, acceleration and jerk, knots whose steps, charged over one controller tick,
            take it beyond.
    """

    joint: str
    kind: str
    value: float
    limit: float
    time: float
    count: int = 1

    def __str__(self) -> str:
        pieces = "piece" if self.count == 1 else "pieces"
        if self.kind == "unbounded":
            return (
                f"{self.joint} unbounded: the interpolated motion overflows floating point (absurd values) from "
                f"t={self.time:.3f} s, {self.count} segment{'' if self.count == 1 else 's'}; it cannot be bounded"
            )
        return (
            f"{self.joint} {self.kind} {self.value:.4g} (limit {self.limit:.4g}) "
            f"at t={self.time:.3f} s, {self.count} {pieces}"
        )


@dataclass(frozen=True, eq=False)
class MotionResult:
    """The gate's verdict on one decoded plan: what ``ExecutabilityReport`` carries, plus the motion.

    Attributes:
        verdict: ACCEPTED or why not.
        reason: human-readable explanation naming joints, values and limits.
        joint_names: joint order of ``start_offset`` and the trajectory.
        reward: EVA's reward on the raw decode; None when the decode has the wrong shape or fps.
        start_offset: decoded first pose minus measured pose per joint; None until computed.
        max_smoothing_deviation: max |spline - offset-corrected decode| over joints and frames; NaN
            until computed.
        time_scale: retiming factor of the last trajectory built (the configured one before retiming).
        position_violations: raw-decode samples (frame x joint) outside the position limits, or
            executed pieces (:attr:`Violation.count`) outside them when only the executed motion
            leaves them.
        velocity_violations, acceleration_violations, jerk_violations: executed pieces beyond the
            limits at ``time_scale`` (zero when accepted).
        offending_joints: joints that broke any check, in joint order.
        violations: per joint and kind, the worst executed instant behind a DYNAMIC_LIMITS or final
            position rejection.
        trajectory: the executable rest-to-rest trajectory (times from 0, point 0 = the measured pose
            clamped to the position limits); None unless accepted.
    """

    verdict: Verdict
    reason: str
    joint_names: tuple[str, ...]
    reward: RewardBreakdown | None
    start_offset: np.ndarray | None
    max_smoothing_deviation: float
    time_scale: float
    position_violations: int
    velocity_violations: int
    acceleration_violations: int
    jerk_violations: int
    offending_joints: tuple[str, ...]
    violations: tuple[Violation, ...]
    trajectory: Trajectory | None

    @property
    def executable(self) -> bool:
        """True only when the verdict is ACCEPTED."""
        return self.verdict is Verdict.ACCEPTED


def plan_to_motion(
    decoded: ArrayLike, fps: float, measured_positions: ArrayLike | None, embodiment: Embodiment, config: GateConfig
) -> MotionResult:
    """Judge a raw IDM decode and turn it into an executable trajectory, or say why not.

    Bad plan data never raises: it is a verdict with a reason (see the module docstring for the
    steps). Only a programming error does, such as a config sized for another embodiment.

    Args:
        decoded: ``(T, D)`` joint positions decoded from the plan's frames, in embodiment order.
        fps: the plan's frame rate, Hz.
        measured_positions: ``(D,)`` joint positions measured when the plan's image was taken.
        embodiment: joint names and limits.
        config: the gate's thresholds.

    Raises:
        ValueError: ``config`` does not match ``embodiment``'s joint count.
    """
    config.check_width(embodiment)
    draft = _Draft(embodiment.joint_names, time_scale=config.time_scale)
    try:
        trajectory = _gate(decoded, fps, measured_positions, embodiment, config, draft)
    except _RejectedError as rejection:
        return draft.result(rejection.verdict, rejection.reason)
    return draft.result(Verdict.ACCEPTED, _acceptance_reason(draft, trajectory, config), trajectory)


def validate_trajectory(
    trajectory: Trajectory,
    embodiment: Embodiment,
    rate_hz: float,
    start_positions: ArrayLike | None = None,
    start_tolerance: float | ArrayLike = DEFAULT_START_TOLERANCE,
) -> list[Violation]:
    """Every limit the motion a JTC ticking at ``rate_hz`` executes from ``trajectory`` breaks.

    The motion is bounded exactly, not sampled (:func:`eva_idm.trajectory.motion_bounds`): the
    extremes of position, velocity, acceleration and jerk over every segment, whatever the phase of
    the controller's ticks, with steps charged over one tick. Checked: every commanded position
    within the real position limits (no tolerance band: that judges raw decodes and measured states;
    :data:`POSITION_ROUNDING` absorbs only floating-point rounding), velocity, acceleration and jerk
    magnitudes, point 0 within ``start_tolerance`` of ``start_positions`` (when given; the robot is
    taken to be at rest there, and interpolated from when ``times[0] > 0``), zero velocity at the
    last point, and that every segment can be bounded at all (finite polynomial coefficients).

    ``start_positions`` may lie beyond a stop within the band: that is a measurement. With
    ``times[0] > 0`` JTC blends from there to point 0; that blend may command positions between
    the measured pose and the stop, never further beyond it than the robot already is (nor beyond
    the band). Point 0 and everything after it must lie within the limits. With ``times[0] == 0``
    there is no blend: point 0 is commanded at once, and the step is charged as velocity.

    Args:
        trajectory: any subset of the embodiment's joints, e.g. one arm's slice.
        embodiment: limits, looked up by joint name.
        rate_hz: the controller's update rate.
        start_positions: measured positions, in the trajectory's joint order.
        start_tolerance: per joint or one value, > 0.

    Returns:
        One :class:`Violation` per joint and kind broken; empty when the motion is executable.

    Raises:
        ValueError: a joint the embodiment does not know, or bad ``start_positions``/``start_tolerance``.
    """
    names = trajectory.joint_names
    columns = _embodiment_columns(names, embodiment)
    start = None
    if start_positions is not None:
        start = StartState.at_rest(_per_joint("start_positions", start_positions, trajectory.num_joints))
    bounds = motion_bounds(trajectory, rate_hz, start)
    violations = _unbounded_violations(names, bounds.segment_times, bounds.unbounded)
    violations += _position_violations(trajectory, bounds, embodiment, columns, start)
    for kind, segments, steps in (
        ("velocity", bounds.velocities, bounds.stepped_velocities),
        ("acceleration", bounds.accelerations, bounds.stepped_accelerations),
        ("jerk", bounds.jerks, bounds.stepped_jerks),
    ):
        limit = embodiment.per_joint(_LIMIT_FIELD[kind])[columns]
        violations += _magnitude_violations(names, kind, segments, steps, limit)
    if start is not None:
        tolerance = _per_joint("start_tolerance", start_tolerance, trajectory.num_joints)
        if (tolerance <= 0.0).any():
            raise ValueError(f"start_tolerance: must be > 0 (0 would disable the check), got {tolerance.tolist()}")
        violations += _start_violations(trajectory, start.positions, tolerance)
    if trajectory.velocities is not None:
        violations += _end_velocity_violations(trajectory)
    return violations


def rest_to_rest_spline(
    positions: np.ndarray,
    fps: float,
    start: np.ndarray,
    cutoff_hz: float,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> BSpline:
    """Smoothing cubic spline through ``(T, D)`` frames, from ``start`` at rest to an end at rest.

    A clamped cubic B-spline with a knot at every frame time ``i / fps``. Its first three
    coefficients equal ``start`` (value ``start``, zero velocity and acceleration at t = 0) and its
    last three share one free value (zero velocity and acceleration at the end). The free
    coefficients minimise ``sum_i |s(t_i) - y_i|^2 + lam * integral |s'''(t)|^2 dt``, a least-squares
    fit with a jerk penalty. For a sinusoid of angular frequency w that penalty acts like the filter
    ``1 / (1 + (lam / fps) w^6)``, so ``lam = fps / (2 pi cutoff_hz)^6`` halves amplitude at
    ``cutoff_hz``: slow arm motion passes, frame-to-frame IDM jitter does not.

    With ``bounds``, the free coefficients of a joint whose unconstrained fit has one outside them
    are refitted by bound-constrained least squares (BVLS) within them. A B-spline is a convex
    combination of its coefficients, so the whole spline then stays within the bounds, between
    frames too (given ``start`` within them), which clamping its values or waypoints afterwards
    would not ensure. It is the best fit that cannot cross a stop; near a stop it may keep a little
    further from it than a spline merely touching the stop would.

    Args:
        positions: ``(T, D)`` frames, ``T >= 4``, finite.
        fps: frame rate, Hz.
        start: ``(D,)`` position at t = 0.
        cutoff_hz: half-amplitude frequency of the smoothing, Hz.
        bounds: ``(lower, upper)``, each ``(D,)``: where the spline must stay.
    """
    frames = len(positions)
    frame_times = np.arange(frames) / fps
    knots = np.concatenate([np.zeros(3), frame_times, np.full(3, frame_times[-1])])
    count = frames + 2
    basis = BSpline.design_matrix(frame_times, knots, 3).toarray()
    # The third derivative of a cubic spline is constant between knots: evaluate it mid-interval.
    jerk_basis = BSpline(knots, np.eye(count), 3)(frame_times[:-1] + 0.5 / fps, nu=3)
    # Coefficients = fixed (start at rest) + free @ unknowns; unknowns: interior ones, then the end value.
    fixed = np.zeros((count, positions.shape[1]))
    fixed[:3] = start
    free = np.zeros((count, count - 5))
    free[3 : count - 3, : count - 6] = np.eye(count - 6)
    free[count - 3 :, -1] = 1.0
    # lam * (integral of jerk^2) = sum over the 1/fps intervals of (lam / fps) * jerk_i^2, with
    # lam / fps = (2 pi cutoff_hz)^-6: each jerk row is weighted by the square root of that.
    weight = (2.0 * math.pi * cutoff_hz) ** -3
    design = np.vstack([basis @ free, weight * jerk_basis @ free])
    target = np.vstack([positions - basis @ fixed, -weight * jerk_basis @ fixed])
    unknowns = np.linalg.lstsq(design, target, rcond=None)[0]
    if bounds is not None:
        lower, upper = bounds
        for joint in np.flatnonzero(((unknowns < lower) | (unknowns > upper)).any(axis=0)):
            fit = lsq_linear(design, target[:, joint], bounds=(lower[joint], upper[joint]), method="bvls")
            unknowns[:, joint] = np.clip(fit.x, lower[joint], upper[joint])
    return BSpline(knots, fixed + free @ unknowns, 3)


def offset_fade_weight(times: np.ndarray, fade_s: float) -> np.ndarray:
    """Weight of the start offset still subtracted at ``times``: 1 at 0, falling to 0 at ``fade_s``.

    ``1 - smoothstep5(t / fade_s)``, with zero slope and curvature at both ends, so a faded constant
    offset adds no velocity or acceleration step. With ``fade_s == 0`` only t = 0 is corrected.
    """
    if fade_s == 0.0:
        return (times == 0.0).astype(np.float64)
    phase = np.clip(times / fade_s, 0.0, 1.0)
    return 1.0 - phase**3 * (10.0 - 15.0 * phase + 6.0 * phase**2)


class _RejectedError(Exception):
    """Raised inside the gate to stop at the first failed step; never leaves :func:`plan_to_motion`."""

    def __init__(self, verdict: Verdict, reason: str):
        super().__init__(reason)
        self.verdict = verdict
        self.reason = reason


@dataclass
class _Draft:
    """What the gate has found so far, reported whatever the verdict."""

    joint_names: tuple[str, ...]
    time_scale: float
    reward: RewardBreakdown | None = None
    start_offset: np.ndarray | None = None
    max_smoothing_deviation: float = math.nan
    position_violations: int = 0
    violations: list[Violation] = field(default_factory=list)
    offending: set[str] = field(default_factory=set)

    def flag(self, joints: Iterable[str]) -> None:
        self.offending.update(joints)

    def result(self, verdict: Verdict, reason: str, trajectory: Trajectory | None = None) -> MotionResult:
        counts = {kind: sum(v.count for v in self.violations if v.kind == kind) for kind in DYNAMIC_KINDS}
        if self.start_offset is not None:
            self.start_offset.flags.writeable = False
        return MotionResult(
            verdict=verdict,
            reason=reason,
            joint_names=self.joint_names,
            reward=self.reward,
            start_offset=self.start_offset,
            max_smoothing_deviation=self.max_smoothing_deviation,
            time_scale=self.time_scale,
            position_violations=self.position_violations,
            velocity_violations=counts["velocity"],
            acceleration_violations=counts["acceleration"],
            jerk_violations=counts["jerk"],
            offending_joints=tuple(name for name in self.joint_names if name in self.offending),
            violations=tuple(self.violations),
            trajectory=trajectory,
        )


def _gate(
    decoded: ArrayLike,
    fps: float,
    measured_positions: ArrayLike | None,
    embodiment: Embodiment,
    config: GateConfig,
    draft: _Draft,
) -> Trajectory:
    """The gate's steps in order; raises :class:`_RejectedError` at the first that fails."""
    plan = _decoded_plan(decoded, embodiment)
    fps = _plan_fps(fps)
    # A finite but absurd decode (1e300) overflows the penalty to inf, i.e. reward 0: the right answer.
    with np.errstate(over="ignore"):
        draft.reward = eva_reward(plan, fps, RewardConfig.from_embodiment(embodiment))
    measured = _measured_pose(measured_positions, embodiment)
    if len(plan) < MIN_FRAMES:
        raise _RejectedError(
            Verdict.TOO_FEW_FRAMES, f"decoded trajectory has {len(plan)} frames; the gate needs at least {MIN_FRAMES}"
        )
    _reject_non_finite(plan, embodiment.joint_names)
    _reject_outside_position_limits(plan, embodiment, draft)
    _reject_measured_outside_position_limits(measured, embodiment, draft)
    # Inside the band but beyond a stop is IDM (or encoder) noise at a pose on the stop (home sits on
    # j2/j3's, an open gripper on its own): the stop is where the joint can go, so that is what is
    # planned, and where the motion starts.
    limits = embodiment.position_bounds(with_tolerance=False)
    plan = np.clip(plan, *limits)
    start = np.clip(measured, *limits)
    if draft.reward.reward < config.min_reward:
        raise _RejectedError(Verdict.LOW_REWARD, _low_reward_reason(draft.reward, config.min_reward))
    draft.start_offset = plan[0] - measured
    _reject_over_limit(
        Verdict.START_OFFSET,
        "start offset (decoded first pose minus measured pose) beyond max_start_offset",
        draft.start_offset,
        config.max_start_offset,
        draft,
    )
    frame_times = np.arange(len(plan)) / fps
    fade = offset_fade_weight(frame_times, config.start_offset_fade_s)[:, None]
    # Fading out an offset can push a frame beyond a stop (a plan starting above one, a robot on it):
    # the target, and the spline, stay within the limits.
    corrected = np.clip(plan - fade * (plan[0] - start), *limits)
    spline = rest_to_rest_spline(corrected, fps, start, config.smoothing_cutoff_hz, limits)
    deviation = np.abs(spline(frame_times) - corrected).max(axis=0)
    draft.max_smoothing_deviation = float(deviation.max())
    _reject_over_limit(
        Verdict.SMOOTHING_DEVIATION,
        "smoothing spline strays from the offset-corrected decode (clamped to the position limits) beyond "
        "max_smoothing_deviation",
        deviation,
        config.max_smoothing_deviation,
        draft,
    )
    return _retimed(_rest_to_rest_points(spline, frame_times, start), frame_times, embodiment, config, draft)


def _decoded_plan(decoded: ArrayLike, embodiment: Embodiment) -> np.ndarray:
    try:
        plan = np.array(decoded, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise _RejectedError(Verdict.MALFORMED_PLAN, f"decoded trajectory: not an array of numbers ({error})") from None
    if plan.ndim != 2 or plan.shape[1] != embodiment.num_joints:
        raise _RejectedError(
            Verdict.MALFORMED_PLAN,
            f"decoded trajectory: expected shape (frames, {embodiment.num_joints}), got {plan.shape}",
        )
    return plan


def _plan_fps(fps: object) -> float:
    try:
        rate = float(fps)
    except (TypeError, ValueError):
        rate = math.nan
    if isinstance(fps, bool) or not (math.isfinite(rate) and rate > 0.0):
        raise _RejectedError(Verdict.MALFORMED_PLAN, f"fps: must be a finite number > 0, got {fps!r}")
    return rate


def _measured_pose(measured_positions: ArrayLike | None, embodiment: Embodiment) -> np.ndarray:
    if measured_positions is None:
        raise _RejectedError(Verdict.NO_JOINT_STATE, "measured joint positions: none given with the plan")
    try:
        measured = np.array(measured_positions, dtype=np.float64)
    except (TypeError, ValueError):
        measured = np.full(0, math.nan)
    if measured.shape != (embodiment.num_joints,):
        raise _RejectedError(
            Verdict.NO_JOINT_STATE,
            f"measured joint positions: expected {embodiment.num_joints} values (one per joint), "
            f"got {measured_positions!r}",
        )
    if not np.isfinite(measured).all():
        joint = int(np.flatnonzero(~np.isfinite(measured))[0])
        raise _RejectedError(
            Verdict.NO_JOINT_STATE,
            f"measured joint positions: non-finite value {measured[joint]} at joint {embodiment.joint_names[joint]}",
        )
    return measured


def _reject_non_finite(plan: np.ndarray, joint_names: Sequence[str]) -> None:
    reason = non_finite_reason(plan, joint_names)
    if reason:
        raise _RejectedError(Verdict.NON_FINITE, f"decoded trajectory: {reason}")


def _reject_outside_position_limits(plan: np.ndarray, embodiment: Embodiment, draft: _Draft) -> None:
    """POSITION_LIMIT when an arm joint leaves its range plus band, else GRIPPER_RANGE for a gripper."""
    lower, upper = embodiment.position_bounds()
    outside = (plan < lower) | (plan > upper)
    if not outside.any():
        return
    draft.position_violations = int(outside.sum())
    columns = np.flatnonzero(outside.any(axis=0))
    names = [embodiment.joint_names[column] for column in columns]
    draft.flag(names)
    worst_frames = np.argmax(np.maximum(lower - plan, plan - upper), axis=0)
    details = [
        f"{name} reaches {plan[worst_frames[column], column]:.4g} at frame {worst_frames[column]}, "
        f"allowed [{lower[column]:.4g}, {upper[column]:.4g}]"
        for name, column in zip(names, columns, strict=True)
    ]
    only_grippers = embodiment.gripper_mask()[columns].all()
    verdict = Verdict.GRIPPER_RANGE if only_grippers else Verdict.POSITION_LIMIT
    what = "gripper leaves its 0..1 range" if only_grippers else "joint leaves its position limits"
    raise _RejectedError(
        verdict,
        f"raw decode: {what} (tolerance band included; {draft.position_violations} samples): {_summary(details)}",
    )


def _reject_measured_outside_position_limits(measured: np.ndarray, embodiment: Embodiment, draft: _Draft) -> None:
    """POSITION_LIMIT (GRIPPER_RANGE for grippers only) when the measured pose lies beyond a stop and its band.

    Within the band a measured pose beyond a stop is noise at the stop; beyond it the robot cannot
    be where it is measured, so no motion is planned from there.
    """
    lower, upper = embodiment.position_bounds()
    columns = np.flatnonzero((measured < lower) | (measured > upper))
    if not len(columns):
        return
    names = [embodiment.joint_names[column] for column in columns]
    draft.flag(names)
    details = [
        f"{name} {measured[column]:.4g}, allowed [{lower[column]:.4g}, {upper[column]:.4g}]"
        for name, column in zip(names, columns, strict=True)
    ]
    verdict = Verdict.GRIPPER_RANGE if embodiment.gripper_mask()[columns].all() else Verdict.POSITION_LIMIT
    raise _RejectedError(
        verdict, f"measured joint positions beyond the position limits (tolerance band included): {_summary(details)}"
    )


def _low_reward_reason(reward: RewardBreakdown, minimum: float) -> str:
    return (
        f"EVA reward {reward.reward:.3g} < min_reward {minimum:.3g} (penalty {reward.penalty:.4g}: "
        f"jerk {reward.jerk_penalty:.4g}, acceleration {reward.acceleration_penalty:.4g}, "
        f"velocity limit {reward.velocity_limit_penalty:.4g}, "
        f"acceleration limit {reward.acceleration_limit_penalty:.4g})"
    )


def _reject_over_limit(verdict: Verdict, what: str, values: np.ndarray, limits: Sequence[float], draft: _Draft) -> None:
    """Reject with ``verdict`` naming each joint whose |value| exceeds its limit."""
    over = np.flatnonzero(np.abs(values) > np.asarray(limits))
    if not len(over):
        return
    draft.flag(draft.joint_names[joint] for joint in over)
    details = [f"{draft.joint_names[joint]} {values[joint]:.4g} (limit {limits[joint]:.4g})" for joint in over]
    raise _RejectedError(verdict, f"{what}: {_summary(details)}")


def _rest_to_rest_points(spline: BSpline, frame_times: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``(3, T, D)`` spline positions, velocities, accelerations at the frames, plan time.

    The ends are set exactly, not merely to within rounding: point 0 is the start pose (the measured
    pose clamped to the limits) and both ends are at rest, because JTC compares the end velocity with
    0.0 and the bridge compares point 0 with the measured pose.
    """
    points = np.stack([spline(frame_times, nu=order) for order in range(3)])
    points[0, 0] = start
    points[1:, [0, -1]] = 0.0
    return points


def _retimed(
    points: np.ndarray, frame_times: np.ndarray, embodiment: Embodiment, config: GateConfig, draft: _Draft
) -> Trajectory:
    """The slowest-needed uniform retiming of ``points`` whose executed motion meets every limit.

    Velocity, acceleration and jerk scale with ``time_scale``, its square and its cube, so a
    violation by a factor ``f`` of a limit is cured by multiplying ``time_scale`` by
    ``f ** (-1 / order)``; the retimer applies the largest such cut (with :data:`RETIME_MARGIN`) and
    checks again, because steps charged over one controller tick (a rounding-level acceleration
    step of the emitted points, say) scale with one power of ``time_scale`` less.
    """
    start = points[0, 0]
    scale = config.time_scale
    for attempt in range(1, config.max_retime_iterations + 1):
        trajectory = _timed_trajectory(embodiment.joint_names, frame_times, points, scale, config.emit_accelerations)
        violations = validate_trajectory(trajectory, embodiment, config.controller_rate_hz, start_positions=start)
        dynamic = [violation for violation in violations if violation.kind in DYNAMIC_KINDS]
        if not dynamic or scale == config.min_time_scale or attempt == config.max_retime_iterations:
            break
        scale = max(config.min_time_scale, scale * _slowdown(dynamic))
    draft.time_scale = scale
    if not violations:
        return trajectory
    draft.violations = violations
    draft.flag(violation.joint for violation in violations)
    details = _summary([str(violation) for violation in violations])
    if dynamic:
        raise _RejectedError(
            Verdict.DYNAMIC_LIMITS,
            f"velocity/acceleration/jerk limits unmet on the executed motion at time_scale {scale:.3g} "
            f"(min_time_scale {config.min_time_scale:.3g}, at most {config.max_retime_iterations} retimings): "
            f"{details}",
        )
    draft.position_violations = sum(violation.count for violation in violations if violation.kind == "position")
    raise _RejectedError(
        _final_verdict(violations, embodiment), f"executed motion at time_scale {scale:.3g}: {details}"
    )


def _timed_trajectory(
    joint_names: tuple[str, ...], frame_times: np.ndarray, points: np.ndarray, scale: float, emit_accelerations: bool
) -> Trajectory:
    """Plan-time spline points played ``1 / scale`` times slower."""
    accelerations = points[2] * scale**2 if emit_accelerations else None
    return Trajectory(joint_names, frame_times / scale, points[0], points[1] * scale, accelerations)


def _slowdown(dynamic: Sequence[Violation]) -> float:
    """Factor on ``time_scale`` that brings the worst dynamic violation under its limit."""
    return RETIME_MARGIN * min(
        (violation.limit / abs(violation.value)) ** (1.0 / _DERIVATIVE_ORDER[violation.kind]) for violation in dynamic
    )


def _final_verdict(violations: Sequence[Violation], embodiment: Embodiment) -> Verdict:
    """Verdict for an executed motion whose dynamics hold but which breaks another check."""
    position_joints = {violation.joint for violation in violations if violation.kind == "position"}
    if position_joints - set(embodiment.gripper_joints):
        return Verdict.POSITION_LIMIT
    if position_joints:
        return Verdict.GRIPPER_RANGE
    # Point 0 and the end state are set exactly by construction; anything else is a bug here.
    return Verdict.INTERNAL_ERROR


def _acceptance_reason(draft: _Draft, trajectory: Trajectory, config: GateConfig) -> str:
    worst_offset = int(np.argmax(np.abs(draft.start_offset)))
    return (
        f"accepted: EVA reward {draft.reward.reward:.3g} >= {config.min_reward:.3g}; start offset up to "
        f"{draft.start_offset[worst_offset]:.3g} ({draft.joint_names[worst_offset]}) faded out over "
        f"{config.start_offset_fade_s:g} s; smoothing deviation up to {draft.max_smoothing_deviation:.3g}; "
        f"time_scale {draft.time_scale:.3g} ({trajectory.duration:.3g} s of motion)"
    )


def _embodiment_columns(joint_names: Sequence[str], embodiment: Embodiment) -> np.ndarray:
    unknown = [name for name in joint_names if name not in embodiment.joint_names]
    if unknown:
        raise ValueError(
            f"trajectory.joint_names: {unknown} are not joints of embodiment {embodiment.name}, "
            f"whose joints are {list(embodiment.joint_names)}"
        )
    return np.array([embodiment.joint_names.index(name) for name in joint_names])


def _unbounded_violations(names: Sequence[str], segment_times: np.ndarray, unbounded: np.ndarray) -> list[Violation]:
    return [
        Violation(
            names[column],
            "unbounded",
            math.nan,
            math.nan,
            float(segment_times[np.argmax(unbounded[:, column])]),
            int(unbounded[:, column].sum()),
        )
        for column in np.flatnonzero(unbounded.any(axis=0))
    ]


def _position_violations(
    trajectory: Trajectory, bounds: MotionBounds, embodiment: Embodiment, columns: np.ndarray, start: StartState | None
) -> list[Violation]:
    """Commanded positions beyond the real limits; JTC's blend from a start beyond a stop may reach back to it.

    Pieces: the segments, and point 0 itself where a blend leads to it (so the trajectory's own first
    pose is held to the limits even when the blend's bounds are widened).
    """
    names = trajectory.joint_names
    strict_lower, strict_upper = (bound[columns] for bound in embodiment.position_bounds(with_tolerance=False))
    lowest, highest = bounds.lowest_positions, bounds.highest_positions
    lower = np.broadcast_to(strict_lower, lowest.values.shape).copy()
    upper = np.broadcast_to(strict_upper, highest.values.shape).copy()
    if bounds.lead_in:
        band_lower, band_upper = (bound[columns] for bound in embodiment.position_bounds())
        lower[0] = np.minimum(strict_lower, np.maximum(start.positions, band_lower))
        upper[0] = np.maximum(strict_upper, np.minimum(start.positions, band_upper))
        point_0, at = trajectory.positions[:1], np.full((1, len(names)), trajectory.times[0])
        lowest = Extremes(np.vstack([lowest.values, point_0]), np.vstack([lowest.times, at]))
        highest = Extremes(np.vstack([highest.values, point_0]), np.vstack([highest.times, at]))
        lower, upper = np.vstack([lower, strict_lower]), np.vstack([upper, strict_upper])
    below, above = lower - lowest.values, highest.values - upper
    excess = np.maximum(below, above)
    beyond = excess > POSITION_ROUNDING
    violations = []
    for column in np.flatnonzero(beyond.any(axis=0)):
        piece = int(np.argmax(excess[:, column]))
        low_side = below[piece, column] >= above[piece, column]
        side, limit = (lowest, lower) if low_side else (highest, upper)
        violations.append(
            Violation(
                names[column],
                "position",
                float(side.values[piece, column]),
                float(limit[piece, column]),
                float(side.times[piece, column]),
                int(beyond[:, column].sum()),
            )
        )
    return violations


def _magnitude_violations(
    names: Sequence[str], kind: str, segments: Extremes, steps: Extremes, limits: np.ndarray
) -> list[Violation]:
    values = np.concatenate([segments.values, steps.values])
    times = np.concatenate([segments.times, steps.times])
    # NaN (an overflowing step of infinities) counts as beyond: it cannot be shown to be within.
    over = ~(np.abs(values) <= limits)
    violations = []
    for column in np.flatnonzero(over.any(axis=0)):
        worst = int(np.argmax(np.where(over[:, column], np.nan_to_num(np.abs(values[:, column]), nan=np.inf), -1.0)))
        violations.append(
            Violation(
                names[column],
                kind,
                float(values[worst, column]),
                float(limits[column]),
                float(times[worst, column]),
                int(over[:, column].sum()),
            )
        )
    return violations


def _start_violations(trajectory: Trajectory, start: np.ndarray, tolerance: np.ndarray) -> list[Violation]:
    difference = trajectory.positions[0] - start
    return [
        Violation(trajectory.joint_names[column], "start", float(difference[column]), float(tolerance[column]), 0.0)
        for column in np.flatnonzero(np.abs(difference) > tolerance)
    ]


def _end_velocity_violations(trajectory: Trajectory) -> list[Violation]:
    end_velocity = trajectory.velocities[-1]
    return [
        Violation(trajectory.joint_names[column], "end_velocity", float(end_velocity[column]), 0.0, trajectory.duration)
        for column in np.flatnonzero(end_velocity != 0.0)
    ]


def _per_joint(name: str, values: float | ArrayLike, count: int) -> np.ndarray:
    """``values`` as ``(count,)`` finite floats (one value is repeated)."""
    try:
        array = np.broadcast_to(np.asarray(values, dtype=np.float64), (count,)).copy()
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected one number or {count} (one per joint), got {values!r}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: must be finite, got {array.tolist()}")
    return array


def _finite_tuple(name: str, values: object) -> tuple[float, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"{name}: expected a list of finite numbers (one per joint), got {values!r}")
    return tuple(_finite(f"{name}[{index}]", value) for index, value in enumerate(values))


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _summary(details: Sequence[str]) -> str:
    """``details`` joined by semicolons, at most :data:`_REASON_ITEMS` of them."""
    shown = "; ".join(details[:_REASON_ITEMS])
    hidden = len(details) - _REASON_ITEMS
    return f"{shown} (+{hidden} more)" if hidden > 0 else shown
