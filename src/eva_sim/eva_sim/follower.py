"""A JointTrajectoryController (JTC) on its topic interface, without ROS: the simulated robot's controllers.

The simulated robot must execute what the controller bridge sends the way ros2_control's
JointTrajectoryController would, so that a trajectory that works in the sim works on the robot
and a message the robot would refuse is refused here too. Interpolation is
:func:`eva_idm.trajectory.sample`, the sampler the bridge checks its trajectories with, so bridge
and sim cannot disagree about the motion. The behaviour is taken from JTC's source,
ros2_controllers branch ``jazzy`` at ed360c97 (4.42.1); ``cpp:N`` below is a line of
``joint_trajectory_controller/src/joint_trajectory_controller.cpp`` there, ``traj:N`` of
``src/trajectory.cpp``. Reproduced:

* **Validation** (``validate_trajectory_msg``, cpp:1671-1816), in JTC's order: the joint names must
  be exactly the controller's (cpp:1676-1714; partial goals are off by default); **an empty
  trajectory is rejected with JTC's reason "Empty trajectory received."** (cpp:1695-1699) and the
  previous command goes on, so a stop is never an empty message; a non-zero velocity at the last
  point is rejected (cpp:1717-1730, ``allow_nonzero_velocity_at_trajectory_end: false``); with a
  non-zero stamp, a trajectory whose *last* point lies in the past is rejected (cpp:1733-1749);
  ``time_from_start`` must strictly increase (cpp:1755-1763); positions are required and every
  filled field has one value per joint (cpp:1797-1804); effort is rejected (cpp:1806-1813, no
  effort command interface).
* **Start time** (traj:126-131): ``header.stamp == 0`` starts the trajectory when it arrives;
  otherwise ``time_from_start`` counts from the stamp.
* **Before point 0** (traj:148-169) the controller interpolates from its state at arrival — the
  measured state, JTC's default without ``interpolate_from_desired_state`` (cpp:297-315) — to
  point 0 over ``[arrival, stamp + time_from_start[0]]``: with point 0 at the measured pose (what
  the bridge sends) the robot holds still until the stamp; elsewhere it moves there over the delay.
* **A late trajectory** (point 0 already due, its end still ahead) is sampled where it should be
  now, between the two points around now, ignoring the state at arrival (traj:173-206): the
  command jumps, as on the robot.
* **Interpolation** follows the fields filled (traj:256-407): positions only linear, with
  velocities cubic, with accelerations too quintic.
* **A new message replaces the old one** (cpp:274-284); nothing is merged.
* **After the last point** the last position is held; ``cmd_timeout`` after the end the command is
  stale: the controller holds the measured position and says so once (cpp:350-369, "Aborted due
  to command timeout"). JTC disables ``cmd_timeout`` unless ``cmd_timeout > goal_time``
  (cpp:1231-1250); :mod:`eva_idm.controllers` refuses such a configuration.

Where this follower still departs from JTC (each stricter or simpler, none more permissive):

* Non-finite positions, velocities or accelerations are rejected; JTC has no such check
  (cpp:1671-1816) and would command them.
* Duplicate joint names are rejected; JTC does not check for them (cpp:1702-1714).
* A field filled for some points only, or accelerations without velocities, is rejected; JTC
  validates sizes point by point (cpp:1797-1804) and interpolates each segment with what both
  ends have (traj:279-281), and with accelerations but no velocities commands zeros (traj:265).
* A message takes effect when it arrives, between ticks; JTC swaps it in at its next update
  (cpp:274-284). The state at arrival is the measured state of the last tick.
* The trajectory is sampled at the tick's own time; JTC sends the hardware the sample one period
  ahead (cpp:326-329) and advances its trajectory time by period x speed scaling (cpp:314-319;
  no speed scaling here).
* Path and goal tolerances are not checked (cpp:376-384, 386-406, 541-573): the bridge watches
  tracking and the goal itself. Hence also no hold on a goal-time overrun on the topic interface
  (cpp:558-573).
* ``cmd_timeout`` always holds the measured position; JTC decelerates instead when
  ``decelerate_on_cancel`` is configured (cpp:359-368, ``decelerate_to_hold_position``
  cpp:1851-1937).
* Only the topic interface is modelled here (the FollowJointTrajectory action is served on top of
  :meth:`TrajectoryFollower.validate`, :meth:`~TrajectoryFollower.receive` and
  :meth:`~TrajectoryFollower.hold` by :mod:`eva_sim.ros.trajectory_action`); no lifecycle
  (activate holds the current position, cpp:1228-1229; deactivate keeps the last position command, cpp:1255-1321).

The arm itself is a first-order lag (time constant ``time_constant``) behind the commanded
position, clamped to the position limits, so measured and commanded states differ as on a robot.
Velocities are measured as the change of position per update.

Messages are plain data (:class:`TrajectoryCommand`) so this module imports no ROS; the node
converts ``trajectory_msgs/JointTrajectory`` into them. Times are seconds of the clock the
controller runs on (sim time in the simulator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from eva_idm.controllers import TrajectoryController
from eva_idm.embodiment import Embodiment
from eva_idm.trajectory import StartState, Trajectory, sample

# Resolution of builtin_interfaces Time and Duration: times are rounded to it.
NANOSECOND = 1e-9
# JTC compares the last point's velocities with float epsilon.
REST_VELOCITY = float(np.finfo(np.float32).eps)


class CommandError(ValueError):
    """A trajectory message the controller refuses; the message names the field and the value."""


@dataclass(frozen=True)
class TrajectoryPoint:
    """One ``trajectory_msgs/JointTrajectoryPoint``: values in the message's joint order, empty = not given.

    Attributes:
        time_from_start: seconds after the trajectory's start.
        positions, velocities, accelerations, effort: one value per joint or empty.
    """

    time_from_start: float
    positions: tuple[float, ...]
    velocities: tuple[float, ...] = ()
    accelerations: tuple[float, ...] = ()
    effort: tuple[float, ...] = ()


@dataclass(frozen=True)
class TrajectoryCommand:
    """One ``trajectory_msgs/JointTrajectory`` message.

    Attributes:
        joint_names: names of the columns of every point.
        stamp: ``header.stamp`` in seconds; 0 starts the trajectory on arrival.
        points: the points (none is refused, as JTC does).
    """

    joint_names: tuple[str, ...]
    stamp: float
    points: tuple[TrajectoryPoint, ...]


@dataclass(frozen=True, eq=False)
class _Active:
    """An accepted trajectory: times relative to ``origin``, from ``start`` (the state at arrival; None when late)."""

    trajectory: Trajectory
    start: StartState | None
    origin: float

    @property
    def end(self) -> float:
        return self.origin + self.trajectory.duration


class TrajectoryFollower:
    """One JointTrajectoryController and the joints it drives (see the module docstring).

    Not thread-safe: call :meth:`receive` and :meth:`update` from one thread, with times that never
    go backwards (ValueError otherwise).

    Args:
        name: controller name, used in notices.
        joint_names: the joints it commands, in command order.
        initial_positions: where the joints stand at ``now``.
        position_lower, position_upper: limits the measured positions are clamped to.
        cmd_timeout: seconds after a trajectory's end before its command is stale (> 0).
        time_constant: first-order lag of measured behind commanded positions, seconds (0 = none).
        now: the current time, seconds.
    """

    def __init__(
        self,
        name: str,
        joint_names: Sequence[str],
        initial_positions: ArrayLike,
        position_lower: ArrayLike,
        position_upper: ArrayLike,
        cmd_timeout: float,
        time_constant: float,
        now: float,
    ) -> None:
        self.name = name
        self.joint_names = tuple(joint_names)
        width = len(self.joint_names)
        if width == 0 or len(set(self.joint_names)) != width:
            raise ValueError(f"joint_names: need unique names, got {list(self.joint_names)}")
        self._lower = _vector("position_lower", position_lower, width)
        self._upper = _vector("position_upper", position_upper, width)
        if not (self._lower < self._upper).all():
            raise ValueError(f"position_lower/position_upper: need lower < upper, got {self._lower} and {self._upper}")
        if not (math.isfinite(cmd_timeout) and cmd_timeout > 0.0):
            raise ValueError(f"cmd_timeout: must be a finite number of seconds > 0, got {cmd_timeout}")
        if not (math.isfinite(time_constant) and time_constant >= 0.0):
            raise ValueError(f"time_constant: must be a finite number of seconds >= 0, got {time_constant}")
        self.cmd_timeout, self.time_constant = float(cmd_timeout), float(time_constant)
        self._time = self._latest = _checked_time(now)
        self._measured = np.clip(_vector("initial_positions", initial_positions, width), self._lower, self._upper)
        self._measured_velocity = np.zeros(width)
        self._hold = self._measured.copy()
        self._commanded = (self._hold.copy(), np.zeros(width), np.zeros(width))
        self._active: _Active | None = None
        self._status = "idle"

    @property
    def status(self) -> str:
        """``idle``, ``executing``, ``finished``, ``stale`` or ``holding``.

        ``idle``: the initial pose; ``finished``: holding the last point; ``stale``: holding the
        measured position after ``cmd_timeout``; ``holding``: holding it after :meth:`hold`.
        """
        return self._status

    @property
    def measured_positions(self) -> np.ndarray:
        """Measured joint positions at the last update (a copy)."""
        return self._measured.copy()

    @property
    def measured_velocities(self) -> np.ndarray:
        """Measured joint velocities at the last update (a copy)."""
        return self._measured_velocity.copy()

    @property
    def commanded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Commanded positions, velocities and accelerations at the last update (copies)."""
        return tuple(value.copy() for value in self._commanded)

    @property
    def end_time(self) -> float | None:
        """When the current trajectory reaches its last point, seconds; None while holding."""
        return self._active.end if self._active else None

    def receive(self, command: TrajectoryCommand, now: float) -> str:
        """Take a new message at time ``now``; returns what it does, for a log line.

        Raises:
            CommandError: the message is refused (naming the field and the value); the previous
                command goes on unchanged.
        """
        now = self._advance_clock(now)
        trajectory, origin = self._checked(command, now)
        late = origin < now
        start = None if late else StartState(self._measured.copy(), self._measured_velocity.copy())
        self._active = _Active(trajectory, start, origin)
        self._status = "executing"
        return (f"accepted {len(trajectory.times)} point(s) ({trajectory.interpolation}"
                f"{', late: sampled from now' if late else ''}), ending at {self._active.end:.3f} s")

    def validate(self, command: TrajectoryCommand, now: float) -> None:
        """Run :meth:`receive`'s checks at time ``now`` without taking the message (an action goal's check).

        Raises:
            CommandError: :meth:`receive` would refuse the message, with the same reason.
        """
        self._checked(command, self._advance_clock(now))

    def hold(self, now: float) -> None:
        """Drop the trajectory and hold the measured position of the last update; status ``holding``.

        JTC's ``set_hold_position`` (cpp:1839-1849), as on a cancelled action goal.
        """
        self._advance_clock(now)
        self._hold_measured("holding")

    def update(self, now: float) -> str | None:
        """Advance to ``now``: command the trajectory, let the arm follow; returns a notice to log, if any."""
        now = self._advance_clock(now)
        notice = None
        active = self._active
        if active is not None and now > active.end + self.cmd_timeout:
            self._hold_measured("stale")
            notice = (f"command timed out: the trajectory ended at {active.end:.3f} s and cmd_timeout is "
                      f"{self.cmd_timeout} s; holding the measured position")
            active = None
        if active is not None:
            self._commanded = sample(active.trajectory, now - active.origin, active.start)
            if now >= active.end:
                self._status = "finished"
        else:
            zeros = np.zeros_like(self._hold)
            self._commanded = (self._hold.copy(), zeros, zeros.copy())
        self._follow(now)
        return notice

    def _advance_clock(self, now: float) -> float:
        """``now``, checked to be no earlier than any time given before."""
        now = _checked_time(now)
        if now < self._latest:
            raise ValueError(f"now: time went backwards from {self._latest} s to {now} s")
        self._latest = now
        return now

    def _follow(self, now: float) -> None:
        """First-order lag of the measured position toward the commanded one, clamped to the limits."""
        elapsed = now - self._time
        if elapsed <= 0.0:
            return
        gain = 1.0 if self.time_constant == 0.0 else -math.expm1(-elapsed / self.time_constant)
        previous = self._measured
        self._measured = np.clip(previous + gain * (self._commanded[0] - previous), self._lower, self._upper)
        self._measured_velocity = (self._measured - previous) / elapsed
        self._time = now

    def _hold_measured(self, status: str) -> None:
        self._active, self._hold, self._status = None, self._measured.copy(), status

    def _checked(self, command: TrajectoryCommand, now: float) -> tuple[Trajectory, float]:
        """The checks of :meth:`receive` in JTC's order; the trajectory and its origin (see :meth:`_trajectory`)."""
        order = self._message_order(command.joint_names)
        if not command.points:
            raise CommandError("Empty trajectory received.")
        return self._trajectory(command, order, now)

    def _message_order(self, joint_names: Sequence[str]) -> np.ndarray:
        """Index into the message's columns of each of the controller's joints."""
        names = list(joint_names)
        if not names:
            raise CommandError(f"joint_names: empty; {self.name} needs all of {list(self.joint_names)}")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise CommandError(f"joint_names: {duplicates} given more than once in {names}")
        unknown = [name for name in names if name not in self.joint_names]
        if unknown:
            raise CommandError(f"joint_names: {unknown} are not joints of {self.name} "
                                  f"(it commands {list(self.joint_names)})")
        missing = [name for name in self.joint_names if name not in names]
        if missing:
            raise CommandError(f"joint_names: {missing} missing; partial goals are not allowed, "
                                  f"{self.name} needs all of {list(self.joint_names)}")
        return np.array([names.index(name) for name in self.joint_names])

    def _trajectory(self, command: TrajectoryCommand, order: np.ndarray, now: float) -> tuple[Trajectory, float]:
        """The trajectory in controller joint order and the time its first kept point is due.

        A late trajectory keeps the point before now and everything after it, so that sampling at
        ``now`` lies between the two points around now, as in JTC.
        """
        stamp = command.stamp
        if not (math.isfinite(stamp) and stamp >= 0.0):
            raise CommandError(f"header.stamp: must be a finite time >= 0 s, got {stamp}")
        points = command.points
        times = np.array([_time_from_start(index, point) for index, point in enumerate(points)])
        for index in range(1, len(times)):
            if times[index] <= times[index - 1]:
                raise CommandError(
                    f"points[{index}].time_from_start: {times[index]} s is not after points[{index - 1}]'s "
                    f"{times[index - 1]} s; times must strictly increase")
        fields = {name: self._field(points, name, command.joint_names, order)
                  for name in ("positions", "velocities", "accelerations")}
        for index, point in enumerate(points):
            if point.effort:
                raise CommandError(f"points[{index}].effort: JTC does not support effort, got {list(point.effort)}")
        if fields["positions"] is None:
            raise CommandError("points[0].positions: empty; the position-controlled joints need positions")
        if fields["accelerations"] is not None and fields["velocities"] is None:
            raise CommandError("points[*].accelerations: given without velocities; JTC interpolates with "
                                  "accelerations only together with velocities")
        last = fields["velocities"][-1] if fields["velocities"] is not None else np.zeros(len(order))
        moving = np.flatnonzero(np.abs(last) > REST_VELOCITY)
        if moving.size:
            joint = self.joint_names[moving[0]]
            raise CommandError(
                f"points[{len(points) - 1}].velocities: the last point must be at rest "
                f"(allow_nonzero_velocity_at_trajectory_end: false), got {last[moving[0]]} for {joint}")
        start = now if stamp == 0.0 else stamp
        relative = np.round((start + times - now) / NANOSECOND) * NANOSECOND
        if relative[-1] < 0.0:
            raise CommandError(
                f"header.stamp: the trajectory ends at {start + times[-1]:.9f} s (stamp {stamp:.9f} s + last "
                f"time_from_start {times[-1]} s), before now ({now:.9f} s)")
        first = int(np.flatnonzero(relative <= 0.0)[-1]) if relative[0] < 0.0 else 0
        kept = {name: None if value is None else value[first:] for name, value in fields.items()}
        origin = min(0.0, relative[first])
        try:
            trajectory = Trajectory(self.joint_names, relative[first:] - origin, kept["positions"],
                                    kept["velocities"], kept["accelerations"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        return trajectory, now + origin

    def _field(self, points: Sequence[TrajectoryPoint], name: str, joint_names: Sequence[str],
               order: np.ndarray) -> np.ndarray | None:
        """``(N, D)`` values of field ``name`` in controller order, None when no point gives it."""
        rows = [getattr(point, name) for point in points]
        given = [index for index, row in enumerate(rows) if len(row)]
        if not given:
            return None
        if len(given) != len(rows):
            without = next(index for index, row in enumerate(rows) if not len(row))
            raise CommandError(f"points[{without}].{name}: empty while points[{given[0]}] has {name}; "
                                  "fill them for every point or for none")
        for index, row in enumerate(rows):
            if len(row) != len(joint_names):
                raise CommandError(f"points[{index}].{name}: {len(row)} values for {len(joint_names)} joint names")
        values = np.array(rows, dtype=np.float64)
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            index, column = bad[0]
            raise CommandError(f"points[{index}].{name}: non-finite value {values[index, column]} for "
                                  f"{joint_names[column]}")
        return values[:, order]


class SimulatedRobot:
    """The robot's joints driven by one :class:`TrajectoryFollower` per controller, in embodiment order.

    Joints no controller commands hold their initial positions. With ``gripper_in_metres`` the
    controllers receive gripper values as finger travel in metres (converted with the embodiment's
    gripper mapping); the measured state is always normalised, as ``joint_states`` carries it.
    """

    def __init__(
        self,
        embodiment: Embodiment,
        controllers: Sequence[TrajectoryController],
        initial_positions: ArrayLike,
        time_constant: float,
        now: float,
        gripper_in_metres: bool = False,
    ) -> None:
        self.embodiment = embodiment
        names = embodiment.joint_names
        initial = _vector("initial_positions", initial_positions, len(names))
        if not controllers:
            raise ValueError("controllers: need at least one controller")
        rates = {controller.update_rate_hz for controller in controllers}
        if len(rates) != 1:
            raise ValueError(f"controllers: expected one update rate, got {sorted(rates)}")
        self.update_rate_hz = rates.pop()
        lower, upper = embodiment.per_joint("position_lower"), embodiment.per_joint("position_upper")
        self._initial = initial
        self._columns: dict[str, np.ndarray] = {}
        self.followers: dict[str, TrajectoryFollower] = {}
        for controller in controllers:
            unknown = [joint for joint in controller.joints if joint not in names]
            if unknown:
                raise ValueError(f"{controller.name}.joints: {unknown} are not joints of {embodiment.name} "
                                 f"({list(names)})")
            columns = np.array([names.index(joint) for joint in controller.joints])
            self._columns[controller.name] = columns
            self.followers[controller.name] = TrajectoryFollower(
                controller.name, controller.joints, initial[columns], lower[columns], upper[columns],
                controller.cmd_timeout, time_constant, now)
        self._gripper_span = embodiment.gripper_open_m - embodiment.gripper_closed_m
        self._metres = set(embodiment.gripper_joints) if gripper_in_metres else set()

    def receive(self, controller: str, command: TrajectoryCommand, now: float) -> str:
        """Hand ``command`` to ``controller``; see :meth:`TrajectoryFollower.receive`."""
        return self.followers[controller].receive(self._normalised(command), now)

    def validate(self, controller: str, command: TrajectoryCommand, now: float) -> None:
        """Check ``command`` for ``controller`` without taking it; see :meth:`TrajectoryFollower.validate`."""
        self.followers[controller].validate(self._normalised(command), now)

    def controller_state(self, controller: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Commanded positions and velocities, measured positions and velocities of ``controller``'s joints.

        In its joint order and in the units its commands use (grippers in metres with ``gripper_in_metres``).
        """
        follower = self.followers[controller]
        commanded = follower.commanded
        values = [commanded[0], commanded[1], follower.measured_positions, follower.measured_velocities]
        metres = np.array([joint in self._metres for joint in follower.joint_names])
        if metres.any():
            closed = self.embodiment.gripper_closed_m
            for index, value in enumerate(values):
                value[metres] = value[metres] * self._gripper_span + (closed if index % 2 == 0 else 0.0)
        return tuple(values)

    def update(self, now: float) -> dict[str, str]:
        """Advance every controller to ``now``; controller name -> notice, for those that have one."""
        notices = {name: follower.update(now) for name, follower in self.followers.items()}
        return {name: notice for name, notice in notices.items() if notice}

    @property
    def positions(self) -> np.ndarray:
        """Measured positions in embodiment order (grippers normalised)."""
        return self._gather(lambda follower: follower.measured_positions, self._initial)

    @property
    def velocities(self) -> np.ndarray:
        """Measured velocities in embodiment order (grippers normalised per second)."""
        return self._gather(lambda follower: follower.measured_velocities, np.zeros_like(self._initial))

    @property
    def commanded_positions(self) -> np.ndarray:
        """Commanded positions in embodiment order (grippers normalised)."""
        return self._gather(lambda follower: follower.commanded[0], self._initial)

    def statuses(self) -> Mapping[str, str]:
        """Controller name -> :attr:`TrajectoryFollower.status`."""
        return {name: follower.status for name, follower in self.followers.items()}

    def _gather(self, read: Callable[[TrajectoryFollower], np.ndarray], base: np.ndarray) -> np.ndarray:
        result = base.copy()
        for name, follower in self.followers.items():
            result[self._columns[name]] = read(follower)
        return result

    def _normalised(self, command: TrajectoryCommand) -> TrajectoryCommand:
        """``command`` with gripper values in metres turned into normalised units (when so configured)."""
        columns = [index for index, name in enumerate(command.joint_names) if name in self._metres]
        if not columns:
            return command
        closed, span = self.embodiment.gripper_closed_m, self._gripper_span

        def convert(values: tuple[float, ...], offset: float) -> tuple[float, ...]:
            if len(values) != len(command.joint_names):
                return values  # the follower rejects it, naming the field
            return tuple((value - offset) / span if index in columns else value for index, value in enumerate(values))

        points = tuple(
            TrajectoryPoint(point.time_from_start, convert(point.positions, closed), convert(point.velocities, 0.0),
                            convert(point.accelerations, 0.0), point.effort)
            for point in command.points)
        return TrajectoryCommand(command.joint_names, command.stamp, points)


def _time_from_start(index: int, point: TrajectoryPoint) -> float:
    value = point.time_from_start
    if not (math.isfinite(value) and value >= 0.0):
        raise CommandError(f"points[{index}].time_from_start: must be a finite duration >= 0 s, got {value}")
    return float(value)


def _checked_time(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"now: expected a finite time in seconds, got {now!r}")
    return float(now)


def _vector(name: str, values: ArrayLike, width: int) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if array.shape != (width,) or not np.isfinite(array).all():
        raise ValueError(f"{name}: expected {width} finite values, got {array.tolist()}")
    return array
