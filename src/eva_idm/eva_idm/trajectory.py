"""Joint trajectories sampled the way ros2_control's JointTrajectoryController (JTC) executes them.

The controller bridge checks what it sends, and the simulated robot executes what it receives,
with this one sampler, so a trajectory that passes our checks is the motion the robot makes.
JTC's rules, reproduced here:

* **Interpolation follows the filled fields.** Positions only: linear per segment. Positions and
  velocities: cubic Hermite per segment (matches both ends' position and velocity). Positions,
  velocities and accelerations: quintic per segment (matches position, velocity and acceleration
  at both ends). Accelerations without velocities are refused (JTC has no such mode).
* **Before point 0** (``times[0] > 0``) the controller interpolates from the state it had when the
  trajectory arrived (``start_state``, at ``t = 0``) to point 0, using the richest of the modes
  above that both the start state and point 0 can feed. With ``times[0] == 0`` there is no such
  segment: point 0 is commanded at once, a step if the robot is elsewhere.
* **After the last point** the last position is held. JTC echoes the last point's velocities
  there; they must be zero (JTC's default ``allow_nonzero_velocity_at_trajectory_end: false``), so
  this module holds with zero velocity and acceleration.
* Segment ``k`` covers ``times[k] <= t < times[k + 1]``.

Angle wrap-around of continuous joints is not modelled. Times are seconds from the trajectory's
start (``header.stamp``, or arrival for a zero stamp); negative times are refused.

Every segment is a polynomial of degree <= 5 in local time, so velocity, acceleration and jerk
are exact derivatives, not finite differences. :func:`motion_profile` adds what the analytic
derivatives alone miss: a step in position, velocity or acceleration (at a knot of a trajectory
whose fields are inconsistent, when leaving the start state, or when entering the hold) happens
within one controller period, so it is charged as its size times the controller rate.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# Quintic is JTC's richest mode; lower modes use the leading coefficients only.
DEGREE = 5
INTERPOLATIONS = ("linear", "cubic", "quintic")
# A JointTrajectory's time_from_start has nanosecond resolution; closer points cannot be sent, and
# segment polynomials (coefficients divided by up to duration**5) stay finite above it.
MIN_TIME_STEP = 1e-9


def _falling_factorial(power: int, order: int) -> int:
    """d^order/du^order of u**power is falling_factorial * u**(power - order); 0 when order > power."""
    return math.perm(power, order) if order <= power else 0


# _DERIVATIVE_FACTORS[n, p]: the factor of the n-th derivative of u**p.
_DERIVATIVE_FACTORS = np.array([[_falling_factorial(p, n) for p in range(DEGREE + 1)] for n in range(4)], dtype=float)


def _hermite_solvers() -> tuple[np.ndarray, ...]:
    """Per mode, the matrix giving the top coefficients of a Hermite segment from its end residuals.

    A mode matching ``m`` derivatives (0 linear, 1 cubic, 2 quintic) fixes coefficients ``0..m`` from
    the start state (a Taylor polynomial) and solves the ``m + 1`` coefficients ``m+1..2m+1`` from
    the residuals ``r_n = h**n * (end_n - taylor^(n)(h))``. In units of ``x_p = c_p h**p`` that system
    is the same for every segment length: ``sum_p falling_factorial(p, n) x_p = r_n``.
    """
    solvers = []
    for matched in range(3):
        powers = range(matched + 1, 2 * matched + 2)
        system = np.array([[_falling_factorial(p, n) for p in powers] for n in range(matched + 1)], dtype=float)
        solvers.append(np.linalg.inv(system))
    return tuple(solvers)


_HERMITE_SOLVERS = _hermite_solvers()


@dataclass(frozen=True, eq=False)
class Trajectory:
    """A joint trajectory as JTC receives it; arrays become read-only float64 copies.

    Attributes:
        joint_names: one unique name per column.
        times: ``(N,)`` time from start of each point, seconds: first 0 or >= 1 ns, then rising by
            at least :data:`MIN_TIME_STEP`.
        positions: ``(N, D)`` positions (rad; grippers normalised).
        velocities: ``(N, D)`` or None; filling them selects cubic interpolation.
        accelerations: ``(N, D)`` or None; needs velocities; selects quintic interpolation.

    Raises:
        ValueError: naming the field and the value, on any inconsistency.
    """

    joint_names: tuple[str, ...]
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray | None = None
    accelerations: np.ndarray | None = None

    def __post_init__(self) -> None:
        names = _checked_names(self.joint_names)
        times = _checked_array("times", self.times, names, ndim=1)
        if len(times) == 0:
            raise ValueError("times: a trajectory needs at least one point, got none")
        if times[0] < 0.0:
            raise ValueError(f"times: the first time must be >= 0, got {times[0]}")
        if 0.0 < times[0] < MIN_TIME_STEP:
            raise ValueError(f"times: a first time > 0 must be at least {MIN_TIME_STEP} s, got {times[0]}")
        for index in np.flatnonzero(np.diff(times) < MIN_TIME_STEP):
            raise ValueError(
                f"times: must increase by at least {MIN_TIME_STEP} s per point, got {times[index + 1]} "
                f"at point {index + 1} after {times[index]} at point {index}"
            )
        shape = (len(times), len(names))
        object.__setattr__(self, "joint_names", names)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "positions", _checked_array("positions", self.positions, names, shape=shape))
        for field_name in ("velocities", "accelerations"):
            value = getattr(self, field_name)
            if value is not None:
                object.__setattr__(self, field_name, _checked_array(field_name, value, names, shape=shape))
        if self.accelerations is not None and self.velocities is None:
            raise ValueError("accelerations: given without velocities; JTC interpolates those only with velocities")

    @property
    def num_joints(self) -> int:
        """Width D of the joint vector."""
        return len(self.joint_names)

    @property
    def duration(self) -> float:
        """Time from start of the last point, seconds."""
        return float(self.times[-1])

    @property
    def interpolation(self) -> str:
        """``"linear"``, ``"cubic"`` or ``"quintic"``: how JTC interpolates between these points."""
        return INTERPOLATIONS[self._matched_derivatives]

    @property
    def _matched_derivatives(self) -> int:
        return 0 if self.velocities is None else 1 if self.accelerations is None else 2

    def _states(self, matched: int) -> np.ndarray:
        """``(N, matched + 1, D)``: each point's position and its first ``matched`` derivatives."""
        return np.stack([self.positions, self.velocities, self.accelerations][: matched + 1], axis=1)


@dataclass(frozen=True, eq=False)
class StartState:
    """The joint state when the trajectory arrives; missing derivatives are unknown, as in JTC.

    Attributes:
        positions: ``(D,)`` measured positions.
        velocities: ``(D,)`` or None.
        accelerations: ``(D,)`` or None; used only together with velocities.
    """

    positions: np.ndarray
    velocities: np.ndarray | None = None
    accelerations: np.ndarray | None = None

    def __post_init__(self) -> None:
        for field_name in ("positions", "velocities", "accelerations"):
            value = getattr(self, field_name)
            if value is not None:
                object.__setattr__(self, field_name, _checked_array(f"start_state.{field_name}", value, None, ndim=1))

    @classmethod
    def at_rest(cls, positions: ArrayLike) -> StartState:
        """A robot standing still at ``positions`` (stop-and-go execution's start state)."""
        positions = np.asarray(positions, dtype=np.float64)
        return cls(positions, np.zeros_like(positions), np.zeros_like(positions))

    @property
    def _matched_derivatives(self) -> int:
        return 0 if self.velocities is None else 1 if self.accelerations is None else 2


@dataclass(frozen=True, eq=False)
class MotionProfile:
    """What a controller ticking at ``rate_hz`` commands: ``(K, D)`` arrays at ``times`` ``(K,)``.

    ``velocities``, ``accelerations`` and ``jerks`` are the analytic derivatives at each tick,
    except where a step of the next lower quantity since the previous tick, times the rate, is
    larger in magnitude; then that finite difference is reported (see the module docstring).
    For a smooth motion the finite difference is a mean over one tick and never exceeds the true
    peak, so this adds no false alarms, only the steps the analytic values cannot see.
    """

    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray
    jerks: np.ndarray


def sample(
    trajectory: Trajectory, t: ArrayLike, start_state: StartState | ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, velocities and accelerations JTC commands at time(s) ``t``.

    Args:
        trajectory: the trajectory.
        t: a time or a 1-D array of times, seconds from the trajectory's start, each >= 0.
        start_state: the state at arrival (``t = 0``), interpolated from before point 0; an array
            is taken as positions only. Without it, times before point 0 hold point 0.

    Returns:
        ``(positions, velocities, accelerations)``, each ``(D,)`` for a scalar ``t`` or ``(K, D)``.
    """
    derivatives = _evaluate(trajectory, t, _as_start_state(start_state, trajectory.num_joints), highest=2)
    return derivatives[0], derivatives[1], derivatives[2]


def tick_times(duration: float, rate_hz: float) -> np.ndarray:
    """Controller ticks ``k / rate_hz`` from 0 up to the first tick at or after ``duration``."""
    if isinstance(rate_hz, bool) or not (isinstance(rate_hz, numbers.Real) and math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate_hz: must be a finite number > 0, got {rate_hz!r}")
    # The small slack keeps 3.0 s at 100 Hz at 301 ticks despite 3.0 * 100 rounding up.
    return np.arange(math.ceil(duration * rate_hz - 1e-9) + 1) / rate_hz


def sample_uniform(
    trajectory: Trajectory, rate_hz: float, start_state: StartState | ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(times, positions, velocities, accelerations)`` at every tick of :func:`tick_times`."""
    times = tick_times(trajectory.duration, rate_hz)
    return (times, *sample(trajectory, times, start_state))


def motion_profile(
    trajectory: Trajectory, rate_hz: float, start_state: StartState | ArrayLike | None = None
) -> MotionProfile:
    """The motion a controller ticking at ``rate_hz`` executes, with derivatives for limit checks.

    The tick before ``t = 0`` is the start state (missing derivatives taken as zero: the robot is
    still), or point 0 at rest without a start state, so a jump on arrival is charged too.
    """
    start = _as_start_state(start_state, trajectory.num_joints)
    times = tick_times(trajectory.duration, rate_hz)
    analytic = _evaluate(trajectory, times, start, highest=3)
    before = _state_before(trajectory, start)
    executed = [analytic[0]]
    for order in (1, 2, 3):
        lower = np.concatenate([before[order - 1][np.newaxis], analytic[order - 1]])
        stepped = np.diff(lower, axis=0) * rate_hz
        executed.append(np.where(np.abs(stepped) > np.abs(analytic[order]), stepped, analytic[order]))
    return MotionProfile(times, *executed)


def _evaluate(trajectory: Trajectory, t: ArrayLike, start: StartState | None, highest: int) -> np.ndarray:
    """``(highest + 1, K, D)`` position and derivatives at times ``t`` (``(highest + 1, D)`` for a scalar)."""
    times = np.asarray(t, dtype=np.float64)
    if times.ndim > 1:
        raise ValueError(f"t: expected a time or a 1-D array of times, got shape {times.shape}")
    flat = np.atleast_1d(times)
    if not np.isfinite(flat).all() or (flat < 0.0).any():
        bad = flat[~(np.isfinite(flat) & (flat >= 0.0))][0]
        raise ValueError(f"t: times must be finite and >= 0 (seconds from the trajectory's start), got {bad}")
    knot_times, coefficients = _segments(trajectory, start)
    result = np.zeros((highest + 1, len(flat), trajectory.num_joints))
    result[0] = np.where((flat >= knot_times[-1])[:, None], trajectory.positions[-1], trajectory.positions[0])
    inside = (flat >= knot_times[0]) & (flat < knot_times[-1])
    if inside.any():
        segment = np.searchsorted(knot_times, flat[inside], side="right") - 1
        result[:, inside] = _polynomial_derivatives(coefficients[segment], flat[inside] - knot_times[segment], highest)
    return result[:, 0] if times.ndim == 0 else result


def _segments(trajectory: Trajectory, start: StartState | None) -> tuple[np.ndarray, np.ndarray]:
    """Knot times ``(M,)`` and per-segment coefficients ``(M - 1, D, DEGREE + 1)`` in local time."""
    matched = trajectory._matched_derivatives
    states = trajectory._states(matched)
    coefficients = _hermite_coefficients(np.diff(trajectory.times), states[:-1], states[1:])
    if start is None or trajectory.times[0] == 0.0:
        return trajectory.times, coefficients
    lead_matched = min(matched, start._matched_derivatives)
    start_values = np.stack([start.positions, start.velocities, start.accelerations][: lead_matched + 1])
    point_0 = trajectory._states(lead_matched)[:1]
    lead = _hermite_coefficients(trajectory.times[:1], start_values[np.newaxis], point_0)
    return np.concatenate([[0.0], trajectory.times]), np.concatenate([lead, coefficients])


def _hermite_coefficients(durations: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Coefficients ``(S, D, DEGREE + 1)`` of the segments joining ``start`` to ``end`` states ``(S, m + 1, D)``.

    The lowest ``m + 1`` coefficients reproduce the start state; the next ``m + 1`` make the
    segment reach the end state after ``durations``. Linear, cubic and quintic Hermite segments are
    the cases ``m = 0, 1, 2``.
    """
    segments, rows, joints = start.shape
    matched = rows - 1
    coefficients = np.zeros((segments, joints, DEGREE + 1))
    for order in range(rows):
        coefficients[:, :, order] = start[:, order] / math.factorial(order)
    taylor_at_end = _polynomial_derivatives(coefficients, durations, matched)
    scale = durations[:, None, None] ** np.arange(rows)[None, :, None]
    residuals = (end - np.moveaxis(taylor_at_end, 0, 1)) * scale
    scaled = np.einsum("pn,snd->sdp", _HERMITE_SOLVERS[matched], residuals)
    powers = np.arange(matched + 1, 2 * matched + 2)
    coefficients[:, :, powers] = scaled / durations[:, None, None] ** powers
    return coefficients


def _polynomial_derivatives(coefficients: np.ndarray, local_times: np.ndarray, highest: int) -> np.ndarray:
    """``(highest + 1, K, D)`` value and derivatives of polynomials ``(K, D, DEGREE + 1)`` at ``local_times``."""
    exponents = np.arange(DEGREE + 1)
    powers = local_times[:, None] ** exponents
    derivatives = []
    for order in range(highest + 1):
        # Term p of the order-th derivative is c_p * falling_factorial(p, order) * u**(p - order).
        weights = _DERIVATIVE_FACTORS[order] * powers[:, np.maximum(exponents - order, 0)]
        derivatives.append(np.einsum("kdp,kp->kd", coefficients, weights))
    return np.stack(derivatives)


def _state_before(trajectory: Trajectory, start: StartState | None) -> np.ndarray:
    """``(3, D)`` position, velocity and acceleration held before the first tick."""
    before = np.zeros((3, trajectory.num_joints))
    if start is None:
        before[0] = trajectory.positions[0]
        return before
    before[0] = start.positions
    if start.velocities is not None:
        before[1] = start.velocities
    if start.accelerations is not None:
        before[2] = start.accelerations
    return before


def _as_start_state(start_state: StartState | ArrayLike | None, num_joints: int) -> StartState | None:
    """``start_state`` as a :class:`StartState` checked against the trajectory's width; an array is positions."""
    if start_state is None:
        return None
    start = start_state if isinstance(start_state, StartState) else StartState(start_state)
    for field_name in ("positions", "velocities", "accelerations"):
        value = getattr(start, field_name)
        if value is not None and value.shape != (num_joints,):
            raise ValueError(
                f"start_state.{field_name}: expected {num_joints} values (one per joint), got shape {value.shape}"
            )
    return start


def _checked_names(joint_names: object) -> tuple[str, ...]:
    if isinstance(joint_names, str):
        raise ValueError(f"joint_names: expected a sequence of names, got the string {joint_names!r}")
    names = tuple(joint_names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"joint_names: expected non-empty strings, got {list(names)}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"joint_names: must be unique, got {duplicates} more than once in {list(names)}")
    return names


def _checked_array(
    field_name: str,
    value: object,
    joint_names: tuple[str, ...] | None,
    ndim: int | None = None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A read-only float64 copy of ``value``, checked for shape and finiteness."""
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{field_name}: expected numbers, got {value!r}") from None
    if shape is not None and array.shape != shape:
        raise ValueError(f"{field_name}: expected shape {shape} (points, joints), got {array.shape}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{field_name}: expected a {ndim}-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        where = f"index {index}"
        if len(index) == 2 and joint_names is not None:
            where = f"point {index[0]}, joint {joint_names[index[1]]}"
        raise ValueError(f"{field_name}: non-finite value {array[index]} at {where}")
    array.flags.writeable = False
    return array
