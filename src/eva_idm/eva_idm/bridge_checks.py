"""The controller bridge's checks of one plan against the robot's state, and the commands it sends, without ROS.

The bridge is the last place a bad trajectory can be stopped (JTC checks structure only, and the
ros2_control limiter clamps, letting NaN through), so it re-checks every ``GatedPlan`` on its own,
whatever the IDM node decided, in this order, stopping at the first failure:

1. **Structure** (``MALFORMED_TRAJECTORY``): a plan id, a gate verdict of executable, joint names
   exactly the embodiment's in its order, a zero trajectory stamp (the bridge sets the start), at
   least 2 and at most ``max_points`` points, point 0 at time 0, times strictly increasing and at
   most ``max_duration``, positions and velocities at every point (accelerations at all or none),
   no effort, every value finite, and a usable ``joint_state_at_image``.
2. **Joint states** (``JOINT_STATES_STALE`` / ``JOINT_STATES_IMPLAUSIBLE``): the newest
   ``joint_states`` is younger than ``max_joint_state_age`` on the node clock, names every
   embodiment joint once, and is finite and within the limits plus ``joint_state_margin``.
3. **Image age** (``IMAGE_TOO_OLD``): node clock now minus the plan's (image) stamp is at most
   ``max_image_age``; a zero stamp has no age and is refused.
4. **Robot moved** (``ROBOT_MOVED``): ``joint_state_at_image`` within ``moved_tolerance`` of the
   measured pose, per joint.
5. **Start** (``START_OFFSET``): trajectory point 0 within ``start_tolerance`` of the measured pose
   clamped to the mechanical stops (a measurement may lie in the tolerance band beyond a stop; a
   command never does, so the gate starts its plans on the stop: JTC blends the few milliradians
   from the measured state during the start delay). Point 0 is then replaced by that clamped
   pose, and the difference faded out over the
   embodiment's ``start_offset_fade_s`` (or the whole trajectory if shorter) with the gate's quintic
   weight, velocities and accelerations adjusted to match: a bare replacement would put the whole
   difference into the first segment, where a millimetre-scale step already breaks the jerk limit.
6. **Limits** (``LIMIT_VIOLATION``): every waypoint within the position (no tolerance band: that
   band judges measurements and raw decodes, never commands), velocity and acceleration limits,
   and the motion a JTC interpolates from what is sent, bounded exactly between any two instants
   (a controller ticks at any offset from the stamp), within every position, velocity,
   acceleration and jerk limit, ending at rest
   (:func:`eva_idm.motion.validate_trajectory`, the gate's validator).

Reasons name the field, joint, value and limit. Times are integer nanoseconds on the node clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from eva_idm.bridge_config import BridgeConfig
from eva_idm.controllers import TrajectoryController
from eva_idm.embodiment import Embodiment
from eva_idm.motion import POSITION_ROUNDING, offset_fade_weight, validate_trajectory
from eva_idm.stopping import CommandedState, StopPlan, stop_trajectory
from eva_idm.trajectory import Trajectory

NS_PER_S = 1_000_000_000
# Reasons list at most this many items (joints, names, violations), then say how many more.
_REASON_ITEMS = 6


class State(IntEnum):
    """``eva_msgs/msg/ExecutionStatus`` states."""

    ACCEPTED = 1
    REJECTED = 2
    EXECUTING = 3
    SUCCEEDED = 4
    ABORTED = 5


class Code(IntEnum):
    """``eva_msgs/msg/ExecutionStatus`` reason codes."""

    NONE = 0
    MALFORMED_TRAJECTORY = 1
    LIMIT_VIOLATION = 2
    ROBOT_MOVED = 3
    IMAGE_TOO_OLD = 4
    ESTOP_LATCHED = 5
    JOINT_STATES_STALE = 6
    JOINT_STATES_IMPLAUSIBLE = 7
    NOT_STANDSTILL = 8
    TRACKING_ERROR = 9
    BUSY = 10
    START_OFFSET = 11
    CANCELLED = 12
    INTERNAL_ERROR = 13


@dataclass(frozen=True)
class JointStateInput:
    """A ``sensor_msgs/JointState`` as plain values: names, positions and velocities by index, stamp in ns."""

    names: Sequence[str]
    positions: Sequence[float]
    velocities: Sequence[float]
    stamp_ns: int


@dataclass(frozen=True)
class PointInput:
    """A ``trajectory_msgs/JointTrajectoryPoint`` as plain values; ``time_from_start_ns`` in ns."""

    positions: Sequence[float]
    velocities: Sequence[float]
    accelerations: Sequence[float]
    effort: Sequence[float]
    time_from_start_ns: int


@dataclass(frozen=True)
class PlanInput:
    """An ``eva_msgs/msg/GatedPlan`` as plain values (see the message for the fields' meaning).

    Attributes:
        plan_id: the plan's id.
        image_stamp_ns: ``header.stamp``, the plan's image time, ns on the node clock.
        state_at_image: ``joint_state_at_image``.
        gate_accepted: ``report.executable``.
        joint_names: ``trajectory.joint_names``.
        trajectory_stamp_ns: ``trajectory.header.stamp`` (must be zero).
        points: ``trajectory.points``.
    """

    plan_id: str
    image_stamp_ns: int
    state_at_image: JointStateInput
    gate_accepted: bool
    joint_names: Sequence[str]
    trajectory_stamp_ns: int
    points: Sequence[PointInput]


@dataclass(frozen=True, eq=False)
class JointReading:
    """A ``joint_states`` message judged once on arrival; arrays in embodiment order.

    Attributes:
        stamp_ns: the message's stamp.
        positions, velocities: ``(D,)`` values, None when ``problem`` is set.
        problem: why the message is implausible, naming the joint, value and limit; '' when plausible.
    """

    stamp_ns: int
    positions: np.ndarray | None
    velocities: np.ndarray | None
    problem: str


@dataclass(frozen=True, eq=False)
class PlanVerdict:
    """The outcome of :meth:`PlanChecker.check`: ``code`` NONE with the trajectory to send, or why not."""

    code: Code
    reason: str
    trajectory: Trajectory | None = None

    @property
    def accepted(self) -> bool:
        """True when every check passed."""
        return self.code is Code.NONE


@dataclass(frozen=True, eq=False)
class ControllerCommand:
    """One ``trajectory_msgs/JointTrajectory`` for one controller, before its start stamp is set.

    The stamp is given when the message is published (:class:`eva_idm.bridge.BridgeOutput`), so
    that building large messages cannot eat into the time between the stamp and the start.

    Attributes:
        controller: controller name (topic ``<controller>/joint_trajectory``).
        joint_names: the controller's joints, in its order.
        times: ``(N,)`` time from start of each point, seconds.
        positions, velocities: ``(N, J)`` in the controller's units (grippers in metres when configured).
        accelerations: ``(N, J)`` or None.
        is_stop: True for a stop (:mod:`eva_idm.stopping`), False for a plan's motion.
    """

    controller: str
    joint_names: tuple[str, ...]
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray | None = None
    is_stop: bool = False


class _RejectedError(Exception):
    """Stops :meth:`PlanChecker.check` at the first failed check; never leaves it."""

    def __init__(self, code: Code, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class PlanChecker:
    """The bridge's checks (module docstring) for one embodiment, controller set and configuration.

    Pure: no state, so plans may be checked on any thread while the robot is monitored on another.
    """

    def __init__(self, config: BridgeConfig, embodiment: Embodiment, controllers: Sequence[TrajectoryController]):
        self.config, self.embodiment, self.controllers = config, embodiment, tuple(controllers)
        self.rate_hz = self.controllers[0].update_rate_hz
        self.goal_time = max(controller.goal_time for controller in self.controllers)
        self._columns = [np.array([embodiment.joint_names.index(joint) for joint in controller.joints])
                         for controller in self.controllers]
        self._grippers = embodiment.gripper_mask()
        lower, upper = embodiment.position_bounds()
        self._plausible = (lower - config.joint_state_margin, upper + config.joint_state_margin)
        self.stops = embodiment.position_bounds(with_tolerance=False)  # what commands stay within

    def read_joint_state(self, sample: JointStateInput) -> JointReading:
        """``sample`` in embodiment order, or the reason it is implausible (missing joints, NaN, out of range)."""
        positions = _by_name(sample.names, sample.positions, self.embodiment.joint_names, "joint_states", "position")
        velocities = _by_name(sample.names, sample.velocities, self.embodiment.joint_names, "joint_states",
                              "velocity")
        problem = next((value for value in (positions, velocities) if isinstance(value, str)), "")
        if not problem:
            lower, upper = self._plausible
            outside = np.flatnonzero((positions < lower) | (positions > upper))
            problem = _summary("joint_states: position outside the limits (tolerance band included) widened by "
                               f"joint_state_margin {self.config.joint_state_margin:g}",
                               [f"{self.embodiment.joint_names[j]} {positions[j]:.4g} not in "
                                f"[{lower[j]:.4g}, {upper[j]:.4g}]" for j in outside])
        if problem:
            return JointReading(sample.stamp_ns, None, None, problem)
        return JointReading(sample.stamp_ns, positions, velocities, "")

    def joint_state_problem(self, reading: JointReading | None, now_ns: int) -> tuple[Code, str] | None:
        """Why ``reading`` cannot be trusted at ``now_ns`` (stale, from the future, implausible); None if it can."""
        if reading is None:
            return Code.JOINT_STATES_STALE, "no joint_states received yet"
        if reading.problem:
            return Code.JOINT_STATES_IMPLAUSIBLE, reading.problem
        age = (now_ns - reading.stamp_ns) / NS_PER_S
        if age > self.config.max_joint_state_age:
            return Code.JOINT_STATES_STALE, (f"newest joint_states is {age:.4g} s old on the node clock "
                                             f"(max_joint_state_age {self.config.max_joint_state_age:g} s)")
        if age < -self.config.clock_tolerance:
            return Code.JOINT_STATES_IMPLAUSIBLE, (f"newest joint_states is stamped {-age:.4g} s ahead of the node "
                                                   f"clock (clock_tolerance {self.config.clock_tolerance:g} s)")
        return None

    def check(self, plan: PlanInput, reading: JointReading | None, now_ns: int) -> PlanVerdict:
        """Every check of the module docstring; the accepted trajectory has point 0 = the (clamped) measured pose."""
        try:
            trajectory, at_image = self._structure(plan)
            problem = self.joint_state_problem(reading, now_ns)
            if problem:
                raise _RejectedError(*problem)
            self._image_age(plan.image_stamp_ns, now_ns)
            measured = reading.positions
            self._compare(Code.ROBOT_MOVED, "the robot moved since the plan's image: joint_state_at_image",
                          at_image, measured, self.config.moved_tolerance, "moved_tolerance")
            start = np.clip(measured, *self.stops)
            self._compare(Code.START_OFFSET, "trajectory point 0", trajectory.positions[0], start,
                          self.config.start_tolerance, "start_tolerance")  # the gate starts on the stop too
            executed = self._from_measured(trajectory, start)
            self._limits(executed, start)
        except _RejectedError as rejection:
            return PlanVerdict(rejection.code, rejection.reason)
        return PlanVerdict(Code.NONE, f"passed the bridge's checks: {len(executed.times)} points, "
                                      f"{executed.duration:.3g} s of motion", executed)

    def commands(self, trajectory: Trajectory, is_stop: bool = False) -> tuple[ControllerCommand, ...]:
        """One command per controller (its slice of ``trajectory``); grippers converted if configured."""
        commands = []
        for controller, columns in zip(self.controllers, self._columns, strict=True):
            fields = [trajectory.positions, trajectory.velocities, trajectory.accelerations]
            positions, velocities, accelerations = (None if values is None else values[:, columns].copy()
                                                    for values in fields)
            grippers = self._grippers[columns]
            if self.config.gripper_in_metres and grippers.any():
                span = self.embodiment.gripper_open_m - self.embodiment.gripper_closed_m
                positions[:, grippers] = self.embodiment.gripper_to_metres(positions[:, grippers])
                for derivative in (velocities, accelerations):
                    if derivative is not None:
                        derivative[:, grippers] *= span
            commands.append(ControllerCommand(controller.name, controller.joints, trajectory.times.copy(),
                                              positions, velocities, accelerations, is_stop))
        return tuple(commands)

    def stop_plan(self, state: CommandedState) -> StopPlan:
        """The stop from the commanded ``state`` to rest, held for ``stop_hold`` (:mod:`eva_idm.stopping`)."""
        return stop_trajectory(state, self.embodiment, self.config.stop_hold)

    def _structure(self, plan: PlanInput) -> tuple[Trajectory, np.ndarray]:
        """The plan's trajectory and ``joint_state_at_image`` positions, or MALFORMED_TRAJECTORY."""
        config, expected = self.config, self.embodiment.joint_names
        if not plan.plan_id:
            _malformed("plan_id: must not be empty")
        if not plan.gate_accepted:
            _malformed("report.executable: false; the IDM gate did not accept this plan")
        names = tuple(plan.joint_names)
        if names != expected:
            _malformed(f"trajectory.joint_names: expected the {len(expected)} joints of {self.embodiment.name} in "
                       f"embodiment order, got {_names_problem(names, expected)}")
        if plan.trajectory_stamp_ns != 0:
            _malformed(f"trajectory.header.stamp: must be zero (the bridge sets the start), got "
                       f"{plan.trajectory_stamp_ns / NS_PER_S:.9g} s")
        points = plan.points
        if not 2 <= len(points) <= config.max_points:
            _malformed(f"trajectory.points: expected 2 to max_points {config.max_points} points (rest to rest), "
                       f"got {len(points)}")
        times_ns = [point.time_from_start_ns for point in points]
        if times_ns[0] != 0:
            _malformed(f"trajectory.points[0].time_from_start: must be 0 (point 0 is the start pose), got "
                       f"{times_ns[0] / NS_PER_S:.9g} s")
        for index in range(1, len(times_ns)):
            if times_ns[index] <= times_ns[index - 1]:
                _malformed(f"trajectory.points[{index}].time_from_start: {times_ns[index] / NS_PER_S:.9g} s is not "
                           f"after point {index - 1}'s {times_ns[index - 1] / NS_PER_S:.9g} s (times must increase)")
        duration = times_ns[-1] / NS_PER_S
        if duration > config.max_duration:
            _malformed(f"trajectory: lasts {duration:.6g} s, longer than max_duration {config.max_duration:g} s")
        with_accelerations = any(len(point.accelerations) for point in points)
        fields = ("positions", "velocities", "accelerations") if with_accelerations else ("positions", "velocities")
        arrays = {field: _matrix(points, field, expected) for field in fields}
        for index, point in enumerate(points):
            if len(point.effort):
                _malformed(f"trajectory.points[{index}].effort: must be empty (position-controlled joints), "
                           f"got {len(point.effort)} values")
        at_image = _by_name(plan.state_at_image.names, plan.state_at_image.positions, expected,
                            "joint_state_at_image", "position")
        if isinstance(at_image, str):
            _malformed(at_image)
        try:
            trajectory = Trajectory(expected, np.array(times_ns) / NS_PER_S, arrays["positions"],
                                    arrays["velocities"], arrays.get("accelerations"))
        except ValueError as error:  # the checks above should leave nothing for it to find
            _malformed(f"trajectory: {error}")
        return trajectory, at_image

    def _image_age(self, stamp_ns: int, now_ns: int) -> None:
        if stamp_ns == 0:
            raise _RejectedError(Code.IMAGE_TOO_OLD, "header.stamp: zero, so the plan's image age is unknown")
        age = (now_ns - stamp_ns) / NS_PER_S
        if age > self.config.max_image_age:
            raise _RejectedError(Code.IMAGE_TOO_OLD, f"the plan's image is {age:.6g} s old on the node clock "
                                                     f"(max_image_age {self.config.max_image_age:g} s)")
        if age < -self.config.clock_tolerance:
            raise _RejectedError(Code.IMAGE_TOO_OLD, f"the plan's image is stamped {-age:.6g} s ahead of the node "
                                                     f"clock (clock_tolerance {self.config.clock_tolerance:g} s)")

    def _compare(self, code: Code, what: str, values: np.ndarray, measured: np.ndarray, tolerance: float,
                 setting_name: str) -> None:
        """Reject with ``code`` naming each joint where ``|values - measured|`` exceeds ``tolerance``."""
        difference = values - measured
        over = np.flatnonzero(np.abs(difference) > tolerance)
        if len(over):
            raise _RejectedError(code, _summary(
                f"{what} differs from the measured pose by more than {setting_name} {tolerance:g}",
                [f"{self.embodiment.joint_names[j]} {values[j]:.4g} vs measured {measured[j]:.4g} "
                 f"(difference {difference[j]:+.4g})" for j in over]))

    def _from_measured(self, trajectory: Trajectory, measured: np.ndarray) -> Trajectory:
        """``trajectory`` starting at the measured pose, the difference faded out: what the controllers get.

        The fade weight ``w(t)`` falls from 1 to 0 along a quintic smoothstep with zero slope and
        curvature at both ends, so point 0 stays at rest and the end is untouched; each point's
        velocity and acceleration gain the derivatives of ``w(t) * offset``.
        """
        offset = measured - trajectory.positions[0]
        fade = min(self.embodiment.gate.start_offset_fade_s, trajectory.duration)
        times = trajectory.times
        positions = trajectory.positions + offset_fade_weight(times, fade)[:, None] * offset
        positions[0] = measured
        # A plan resting on a stop, faded by a measurement a femtoradian closer to it, lands a rounding
        # error beyond the stop: put it back on the stop (anything larger is left for the limit check).
        lower, upper = self.stops
        positions = np.where((positions < lower) & (positions >= lower - POSITION_ROUNDING), lower, positions)
        positions = np.where((positions > upper) & (positions <= upper + POSITION_ROUNDING), upper, positions)
        velocities, accelerations = trajectory.velocities, trajectory.accelerations
        if fade > 0.0:
            phase = np.clip(times / fade, 0.0, 1.0)[:, None]
            velocities = velocities - 30.0 * phase**2 * (1.0 - phase) ** 2 / fade * offset
            if accelerations is not None:
                accelerations = accelerations - 60.0 * phase * (1.0 - phase) * (1.0 - 2.0 * phase) / fade**2 * offset
        return Trajectory(trajectory.joint_names, times, positions, velocities, accelerations)

    def _limits(self, trajectory: Trajectory, measured: np.ndarray) -> None:
        """LIMIT_VIOLATION unless the waypoints and the interpolated motion meet every limit."""
        embodiment, names = self.embodiment, self.embodiment.joint_names
        lower, upper = self.stops  # the band is for measurements only
        waypoint_problems, count = [], 0
        for field, values, low, high in (
            ("position", trajectory.positions, lower, upper),
            ("velocity", trajectory.velocities, -embodiment.per_joint("velocity_limit"),
             embodiment.per_joint("velocity_limit")),
            ("acceleration", trajectory.accelerations, -embodiment.per_joint("acceleration_limit"),
             embodiment.per_joint("acceleration_limit")),
        ):
            if values is None:
                continue
            outside = np.argwhere((values < low) | (values > high))
            count += len(outside)
            waypoint_problems += [f"point {point} {names[joint]} {field} {values[point, joint]:.4g} not in "
                                  f"[{low[joint]:.4g}, {high[joint]:.4g}]" for point, joint in outside[:_REASON_ITEMS]]
        if waypoint_problems:  # also keeps absurd values (1e300) out of the interpolation below
            raise _RejectedError(Code.LIMIT_VIOLATION, _summary("waypoint values beyond the embodiment's limits",
                                                                waypoint_problems, count))
        violations = validate_trajectory(trajectory, embodiment, self.rate_hz, start_positions=measured,
                                         start_tolerance=self.config.start_tolerance)
        if violations:
            raise _RejectedError(Code.LIMIT_VIOLATION, _summary(
                "the motion the controllers interpolate (bounded at every instant; point 0 = measured pose) breaks "
                "the embodiment's limits", [str(violation) for violation in violations]))


def _malformed(reason: str) -> None:
    raise _RejectedError(Code.MALFORMED_TRAJECTORY, reason)


def _matrix(points: Sequence[PointInput], field: str, joint_names: Sequence[str]) -> np.ndarray:
    """``(N, D)`` finite values of ``field`` at every point, or MALFORMED_TRAJECTORY naming point and joint."""
    rows = []
    for index, point in enumerate(points):
        values = getattr(point, field)
        if len(values) != len(joint_names):
            _malformed(f"trajectory.points[{index}].{field}: expected {len(joint_names)} values (one per joint), "
                       f"got {len(values)}")
        rows.append(values)
    matrix = np.array(rows, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        point, joint = bad[0]
        _malformed(f"trajectory.points[{point}].{field}[{joint}] ({joint_names[joint]}): non-finite value "
                   f"{matrix[point, joint]}")
    return matrix


def _by_name(names: Sequence[str], values: Sequence[float], expected: Sequence[str], message: str,
             field: str) -> np.ndarray | str:
    """``values`` of the ``expected`` joints, looked up in ``names``, or what is wrong (naming the field)."""
    if len(values) != len(names):
        return f"{message}: {len(values)} {field} values for {len(names)} names (one per name needed)"
    index = {}
    for position, name in enumerate(names):
        if name in index and name in expected:
            return f"{message}: joint {name!r} named more than once"
        index[name] = position
    missing = [name for name in expected if name not in index]
    if missing:
        return _summary(f"{message}: joints missing", [repr(name) for name in missing])
    array = np.array([values[index[name]] for name in expected], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        return f"{message}: non-finite {field} {array[bad[0]]} of {expected[bad[0]]}"
    return array


def _names_problem(names: tuple[str, ...], expected: Sequence[str]) -> str:
    duplicated = sorted({name for name in names if names.count(name) > 1})
    unknown = [name for name in names if name not in expected]
    missing = [name for name in expected if name not in names]
    details = [f"{label} {_few(items)}" for label, items in
               (("duplicated", duplicated), ("unknown", unknown), ("missing", missing)) if items]
    return "; ".join(details) if details else f"the wrong order {_few(list(names))}"


def _few(items: Sequence[object]) -> str:
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item) for item in items[:_REASON_ITEMS])
    hidden = len(items) - _REASON_ITEMS
    return f"[{shown}{f', +{hidden} more' if hidden > 0 else ''}]"


def _summary(what: str, details: Sequence[str], total: int | None = None) -> str:
    """``what: detail; detail`` with at most :data:`_REASON_ITEMS` of ``total`` details, or '' without any."""
    if not details:
        return ""
    shown = details[:_REASON_ITEMS]
    hidden = (len(details) if total is None else total) - len(shown)
    return f"{what}: {'; '.join(shown)}{f' (+{hidden} more)' if hidden > 0 else ''}"
