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
are exact derivatives, not finite differences. :func:`motion_bounds` bounds them exactly over
every segment, so no motion between two controller ticks escapes a check, at any phase of the
ticks; it adds what the analytic derivatives alone miss: a step in position, velocity or
acceleration (at a knot of a trajectory whose fields are inconsistent, when leaving the start
state, or when entering the hold) happens within one controller period, so it is charged as its
size times the controller rate.
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
# Newton's method within brackets (motion_bounds' roots of cubics and quartics on [0, 1]). A Newton
# step below _NEWTON_TOLERANCE leaves an error of about its square (quadratic convergence); bisection
# alone narrows a bracket to _BRACKET_TOLERANCE in about 40 halvings. A value within _ROOT_TOLERANCE
# times the sum of the coefficients' magnitudes is a root to within rounding.
_ROOT_ITERATIONS = 100
_NEWTON_TOLERANCE = 1e-7
_BRACKET_TOLERANCE = 1e-12
_ROOT_TOLERANCE = 4.0 * np.finfo(np.float64).eps
# A difference of the two sides of a knot within this many times the magnitude of the terms summed
# is rounding, not a step.
_STEP_ROUNDING = 16.0 * np.finfo(np.float64).eps


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
class Extremes:
    """The worst value of one quantity on each piece of the motion, and when it occurs.

    Attributes:
        values: ``(K, D)`` per piece and joint.
        times: ``(K, D)`` seconds from the trajectory's start at which each value occurs.
    """

    values: np.ndarray
    times: np.ndarray


@dataclass(frozen=True, eq=False)
class MotionBounds:
    """Exact bounds of what a controller ticking at ``rate_hz`` commands, whatever the phase of its ticks.

    Built by :func:`motion_bounds`. The pieces of the motion are its ``S`` segments (the lead-in from
    the start state first, when there is one) and its ``M`` knots (segment ends; the first knot also
    ends the time before the trajectory, the last one begins the hold).

    Attributes:
        lead_in: whether segment 0 is JTC's blend from the start state to point 0 (``times[0] > 0``
            with a start state), not a segment between two of the trajectory's points.
        segment_times: ``(S,)`` start time of each segment.
        lowest_positions, highest_positions: per segment, its exact lowest and highest position; a
            one-point trajectory has one piece instead, its point.
        velocities, accelerations, jerks: per segment, the exact value of largest magnitude (signed).
        stepped_velocities, stepped_accelerations, stepped_jerks: per knot with a step in the next
            lower quantity, what a controller tick across it can see (:func:`motion_bounds`); zero at
            knots without one.
        unbounded: ``(S, D)``, true where a segment's polynomial is not finite in floating point (absurd
            values); such segments are left out of the extremes and cannot be bounded.
    """

    lead_in: bool
    segment_times: np.ndarray
    lowest_positions: Extremes
    highest_positions: Extremes
    velocities: Extremes
    accelerations: Extremes
    jerks: Extremes
    stepped_velocities: Extremes
    stepped_accelerations: Extremes
    stepped_jerks: Extremes
    unbounded: np.ndarray


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
    rate_hz = _checked_rate(rate_hz)
    # The small slack keeps 3.0 s at 100 Hz at 301 ticks despite 3.0 * 100 rounding up.
    return np.arange(math.ceil(duration * rate_hz - 1e-9) + 1) / rate_hz


def sample_uniform(
    trajectory: Trajectory, rate_hz: float, start_state: StartState | ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(times, positions, velocities, accelerations)`` at every tick of :func:`tick_times`."""
    times = tick_times(trajectory.duration, rate_hz)
    return (times, *sample(trajectory, times, start_state))


def motion_bounds(
    trajectory: Trajectory, rate_hz: float, start_state: StartState | ArrayLike | None = None
) -> MotionBounds:
    """Exact bounds of the motion a controller ticking at ``rate_hz`` executes, at any phase of its ticks.

    A real controller ticks at an arbitrary offset from the trajectory's start, so checking samples
    on one grid leaves the motion between them unchecked. Instead, every segment is bounded exactly:
    position and its derivatives are one polynomial of degree <= 5 and its derivatives there, whose
    extremes lie at the segment's ends or at roots of the next derivative. Those roots come in closed
    form up to degree 2; the cubic and quartic ones of quintic segments are found by Newton's method
    kept inside brackets between consecutive roots of their own derivative, where the polynomial is
    monotone and so has at most one root, closely enough that the extreme values are exact to
    rounding (the value at an extremum is flat in the root's error). Everything is
    vectorised over segments and joints, in the segments' normalised time.

    A step (a knot where position, velocity or acceleration jumps: leaving the start state, fields that
    disagree, entering the hold) executes within one controller period, so, as the sampled check this
    replaces did, it is charged over one tick: the finite difference a tick across steps of total size
    ``s`` in the next lower quantity can see is at most ``s * rate_hz`` plus the largest analytic value
    in the segments that tick touches. For each knot that is taken over the steps within one period
    from it, which bounds every tick window holding the same knots; a tick holding none sees a mean of
    the analytic values, already bounded. The time before the trajectory and the hold after it are at
    rest.

    Args:
        trajectory: the trajectory.
        rate_hz: the controller's update rate.
        start_state: as for :func:`sample`; missing derivatives are taken as zero (the robot is still).
    """
    period = 1.0 / _checked_rate(rate_hz)
    start = _as_start_state(start_state, trajectory.num_joints)
    # Absurd values overflow to infinities, which the limits then refuse (or, in a segment's
    # coefficients, flag it unbounded); degenerate polynomials give non-finite roots, which are dropped.
    with np.errstate(all="ignore"):
        knot_times, coefficients = _segments(trajectory, start)
        unbounded = ~np.isfinite(coefficients).all(axis=2)
        coefficients = np.where(unbounded[..., np.newaxis], 0.0, coefficients)
        lows, low_at, highs, high_at = _segment_extremes(
            coefficients, knot_times, 2 * trajectory._matched_derivatives + 1
        )
        larger_high = np.abs(highs) >= np.abs(lows)
        peaks, peak_at = np.where(larger_high, highs, lows), np.where(larger_high, high_at, low_at)
        stepped = _step_charges(trajectory, start, knot_times, coefficients, np.abs(peaks), period)
    if len(coefficients):
        lowest, highest = Extremes(lows[0], low_at[0]), Extremes(highs[0], high_at[0])
    else:
        point = trajectory.positions[:1]
        lowest = highest = Extremes(point, np.full_like(point, trajectory.times[0]))
    knot_grid = np.broadcast_to(knot_times[:, np.newaxis], (len(knot_times), trajectory.num_joints))
    return MotionBounds(
        len(knot_times) > len(trajectory.times),
        knot_times[:-1],
        lowest,
        highest,
        *(Extremes(peaks[order], peak_at[order]) for order in (1, 2, 3)),
        *(Extremes(charge, knot_grid) for charge in stepped),
        unbounded,
    )


def _segment_extremes(
    coefficients: np.ndarray, knot_times: np.ndarray, degree: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(lows, low_at, highs, high_at)``, each ``(4, S, D)``: per derivative order 0..3 and segment, its extremes.

    Values in physical units (``d^n/dt^n = h**-n d^n/ds^n``), times in seconds from the start.
    """
    segments, joints, _ = coefficients.shape
    durations = np.diff(knot_times)
    lows, low_at, highs, high_at = _unit_interval_extremes(
        np.ascontiguousarray(coefficients.reshape(segments * joints, DEGREE + 1).T), degree
    )
    scales = durations[np.newaxis, :, np.newaxis] ** -np.arange(4)[:, np.newaxis, np.newaxis]
    lows, highs = (values.reshape(4, segments, joints) * scales for values in (lows, highs))
    low_at, high_at = (
        knot_times[:-1, np.newaxis] + durations[:, np.newaxis] * at.reshape(4, segments, joints)
        for at in (low_at, high_at)
    )
    return lows, low_at, highs, high_at


def _unit_interval_extremes(
    coefficients: np.ndarray, degree: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lowest and highest values on [0, 1] of ``E`` polynomials ``(DEGREE + 1, E)`` and of their first 3 derivatives.

    Coefficients are in ascending order, one column per polynomial (rows of a power are contiguous,
    which keeps the vectorised evaluation fast). Returns ``(lows, low_at, highs, high_at)``, each
    ``(4, E)``: per derivative order 0..3, the extreme value (in units of the normalised variable)
    and the point of [0, 1] where it occurs.
    """
    count = coefficients.shape[1]
    derivatives = [coefficients[: degree + 1]]
    for _ in range(degree):
        derivatives.append(_derivative(derivatives[-1]))
    # critical[q]: points of [0, 1] among which are all roots there of the q-th derivative.
    critical = {degree: np.zeros((0, count))}
    for order in range(degree - 1, 0, -1):
        critical[order] = _roots_on_unit_interval(derivatives[order], critical[order + 1])
    extremes = np.zeros((4, 4, count))
    ends = np.repeat([[0.0], [1.0]], count, axis=1)
    columns = np.arange(count)
    for order in range(min(degree, 3) + 1):
        candidates = np.concatenate([ends, critical.get(order + 1, np.zeros((0, count)))])
        values = _horner(derivatives[order], candidates)
        lowest, highest = np.argmin(values, axis=0), np.argmax(values, axis=0)
        extremes[:, order] = (
            values[lowest, columns], candidates[lowest, columns], values[highest, columns], candidates[highest, columns]
        )
    return extremes[0], extremes[1], extremes[2], extremes[3]


def _roots_on_unit_interval(polynomials: np.ndarray, derivative_critical: np.ndarray) -> np.ndarray:
    """``(n, E)`` points of [0, 1] among which are all roots there of ``(n + 1, E)`` polynomials of degree <= n.

    Spare slots hold 0, an end of the interval (every caller takes the ends as candidates anyway).
    Degree 1 and 2 are solved in closed form; higher degrees between consecutive points of
    ``derivative_critical`` (which include the derivative's roots), where each polynomial is
    monotone and so has at most one root, by :func:`_bracketed_roots`.
    """
    degree = len(polynomials) - 1
    if degree == 1:
        roots = -polynomials[:1] / polynomials[1:]
    elif degree == 2:
        roots = _quadratic_roots(polynomials)
    else:
        ends = np.zeros((1, polynomials.shape[1]))
        edges = np.sort(np.concatenate([ends, derivative_critical, ends + 1.0]), axis=0)
        at_edges = _horner(polynomials, edges)
        left, right, at_left, at_right = edges[:-1], edges[1:], at_edges[:-1], at_edges[1:]
        roots = np.where(at_left == 0.0, left, np.where(at_right == 0.0, right, 0.0))
        slots, columns = np.nonzero(np.sign(at_left) * np.sign(at_right) < 0.0)
        roots[slots, columns] = _bracketed_roots(
            polynomials[:, columns],
            *(values[slots, columns] for values in (left, right, at_left, at_right)),
        )
    return np.clip(np.where(np.isfinite(roots), roots, 0.0), 0.0, 1.0)


def _quadratic_roots(polynomials: np.ndarray) -> np.ndarray:
    """``(2, E)`` real roots of ``c0 + c1 s + c2 s^2`` ``(3, E)``; the vertex for complex ones, non-finite for none.

    Uses the form that avoids cancellation (``q = -(c1 + sign(c1) sqrt(disc)) / 2``, roots ``q / c2``
    and ``c0 / q``). Where there is no real root the polynomial keeps its sign, so the vertex is only a
    harmless extra candidate, and it covers a double root that rounding made complex.
    """
    constant, linear, quadratic = polynomials
    discriminant = linear * linear - 4.0 * quadratic * constant
    half_sum = -0.5 * (linear + np.copysign(np.sqrt(np.maximum(discriminant, 0.0)), linear))
    vertex = -linear / (2.0 * quadratic)
    real = discriminant >= 0.0
    roots = np.stack([np.where(real, half_sum / quadratic, vertex), np.where(real, constant / half_sum, vertex)])
    return np.where(quadratic == 0.0, -constant / linear, roots)


def _bracketed_roots(
    polynomials: np.ndarray, left: np.ndarray, right: np.ndarray, at_left: np.ndarray, at_right: np.ndarray
) -> np.ndarray:
    """The root of each polynomial ``(n + 1, K)``, monotone on ``[left, right]`` ``(K,)`` with a sign change there.

    Starts at the secant point; Newton steps that leave the current bracket become bisections, so it
    converges for every polynomial (at worst like bisection: about 40 halvings of [0, 1] to
    :data:`_BRACKET_TOLERANCE`). One is done once its value is within the rounding error of
    evaluating it, or a Newton step is below :data:`_NEWTON_TOLERANCE` (quadratic convergence makes
    that step's own error negligible), or its bracket is below :data:`_BRACKET_TOLERANCE`. The
    working arrays shrink to the unfinished ones whenever those are fewer than half.
    """
    secant = left - at_left * (right - left) / (at_right - at_left)
    roots = np.where((secant >= left) & (secant <= right), secant, 0.5 * (left + right))
    rounding = _ROOT_TOLERANCE * np.abs(polynomials).sum(axis=0)  # bounds the evaluation error on [0, 1]
    slopes = _derivative(polynomials)
    rows, point, low, high, sign_left = np.arange(len(roots)), roots.copy(), left, right, np.sign(at_left)
    active = np.ones(len(roots), dtype=bool)
    for _ in range(_ROOT_ITERATIONS):
        value = _horner(polynomials, point[np.newaxis])[0]
        slope = _horner(slopes, point[np.newaxis])[0]
        root_is_right = np.sign(value) == sign_left
        low = np.where(root_is_right, point, low)
        high = np.where(root_is_right, high, point)
        newton = point - value / slope
        is_newton = (newton >= low) & (newton <= high)
        found = np.abs(value) <= rounding
        step = np.where(found, point, np.where(is_newton, newton, 0.5 * (low + high)))
        converged = is_newton & (np.abs(step - point) <= _NEWTON_TOLERANCE)
        finished = found | converged | (high - low <= _BRACKET_TOLERANCE)
        point = np.where(active, step, point)
        active &= ~finished
        if not active.any():
            break
        if 2 * np.count_nonzero(active) < len(active):
            roots[rows] = point
            rows, point, low, high = rows[active], point[active], low[active], high[active]
            sign_left, rounding = sign_left[active], rounding[active]
            polynomials, slopes = polynomials[:, active], slopes[:, active]
            active = np.ones(len(rows), dtype=bool)
    roots[rows] = point
    return roots


def _derivative(polynomials: np.ndarray) -> np.ndarray:
    """Coefficients ``(n, E)`` of the derivatives of polynomials ``(n + 1, E)``, ascending."""
    return polynomials[1:] * np.arange(1, len(polynomials))[:, np.newaxis]


def _horner(polynomials: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Values ``(C, E)`` of polynomials ``(n + 1, E)`` (ascending coefficients) at ``(C, E)`` points."""
    values = np.empty(points.shape)
    values[...] = polynomials[-1]
    for coefficient in polynomials[-2::-1]:
        values *= points
        values += coefficient
    return values


def _step_charges(
    trajectory: Trajectory,
    start: StartState | None,
    knot_times: np.ndarray,
    coefficients: np.ndarray,
    segment_peaks: np.ndarray,
    period: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Velocity, acceleration and jerk ``(M, D)`` charged at each knot for the steps one period from it.

    ``segment_peaks`` ``(4, S, D)``: each segment's largest magnitude of position and its derivatives.
    At knot ``i`` the charge of derivative ``n`` is ``rate * (sum of |steps of n - 1| at knots within one
    period from it) + (largest analytic |n-th derivative| on the segments those ticks touch)``, signed
    like knot ``i``'s own step; zero where there is no step.
    """
    segments = len(knot_times) - 1
    # Values at each segment's start and end, per derivative order 0..2: (3, S, D).
    inverse_powers = np.diff(knot_times)[np.newaxis, :, np.newaxis] ** -np.arange(3)[:, np.newaxis, np.newaxis]
    at_start = np.moveaxis(coefficients[:, :, :3] * np.diagonal(_DERIVATIVE_FACTORS)[:3], 2, 0) * inverse_powers
    at_end = np.einsum("np,sdp->nsd", _DERIVATIVE_FACTORS[:3], coefficients) * inverse_powers
    held = np.zeros((3, 1, trajectory.num_joints))
    held[0, 0] = trajectory.positions[-1]
    before = _state_before(trajectory, start)[:, np.newaxis]
    right, left = np.concatenate([at_start, held], axis=1), np.concatenate([before, at_end], axis=1)
    steps = right - left
    # Where the fields agree, a knot's two sides differ by rounding only (of the end value's sum of
    # terms); that is no step, and charging it would move the worst instant onto the knot.
    end_terms = np.einsum("np,sdp->nsd", _DERIVATIVE_FACTORS[:3], np.abs(coefficients)) * inverse_powers
    terms = np.abs(right) + np.abs(np.concatenate([before, end_terms], axis=1))
    magnitudes = np.where(np.abs(steps) <= _STEP_ROUNDING * terms, 0.0, np.abs(steps))
    # Knots i .. last[i] lie within one period from knot i; a tick holding them (and no earlier knot)
    # starts in segment i - 1 and ends by segment last[i]: those are the segments it touches.
    last = np.searchsorted(knot_times, knot_times + period, side="right") - 1
    totals = np.concatenate([np.zeros((3, 1, trajectory.num_joints)), np.cumsum(magnitudes, axis=1)], axis=1)
    window_steps = totals[:, last + 1] - totals[:, np.arange(len(knot_times))]
    if segments:
        first = np.maximum(np.arange(len(knot_times)) - 1, 0)
        touched = _range_maxima(segment_peaks[1:], first, np.minimum(last, segments - 1))
    else:
        touched = np.zeros_like(window_steps)
    charges = np.where(window_steps > 0.0, window_steps / period + touched, 0.0)
    signed = np.where(steps < 0.0, -charges, charges)
    return signed[0], signed[1], signed[2]


def _range_maxima(values: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """``max(values[:, first[i] : last[i] + 1])`` for each ``i``: ``(Q, S, D)`` values -> ``(Q, len(first), D)``.

    A sparse table (the maxima over every run of ``2**k`` rows) answers each range with two overlapping
    runs, so ranges spanning thousands of segments (points nanoseconds apart) cost no more than short
    ones; runs are built only as long as the longest range needs.
    """
    level = np.floor(np.log2(last - first + 1)).astype(int)
    runs = values
    maxima = np.empty((values.shape[0], len(first), values.shape[2]))
    for size in range(level.max(initial=0) + 1):
        if size:  # maxima over every run of 2**size rows, from those of half the length
            runs = np.maximum(runs[:, : -(2 ** (size - 1))], runs[:, 2 ** (size - 1) :])
        chosen = np.flatnonzero(level == size)
        maxima[:, chosen] = np.maximum(runs[:, first[chosen]], runs[:, last[chosen] - 2**size + 1])
    return maxima


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
        durations = knot_times[segment + 1] - knot_times[segment]
        result[:, inside] = _polynomial_derivatives(
            coefficients[segment], (flat[inside] - knot_times[segment]) / durations, durations, highest
        )
    return result[:, 0] if times.ndim == 0 else result


def _segments(trajectory: Trajectory, start: StartState | None) -> tuple[np.ndarray, np.ndarray]:
    """Knot times ``(M,)`` and per-segment coefficients ``(M - 1, D, DEGREE + 1)`` in normalised time.

    Segment ``k`` is ``sum_p x_p s**p`` with ``s = (t - knot_k) / h_k`` in [0, 1]: in these units each
    coefficient is a difference of positions (of velocities times ``h``, ...), so segments nanoseconds
    or minutes long alike keep finite, well-scaled coefficients.
    """
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
    """Normalised coefficients ``(S, D, DEGREE + 1)`` of segments joining ``start`` to ``end`` ``(S, m + 1, D)``.

    The lowest ``m + 1`` coefficients reproduce the start state (a Taylor polynomial); the next
    ``m + 1`` solve :data:`_HERMITE_SOLVERS`' system for the end state's residuals. Linear, cubic and
    quintic Hermite segments are the cases ``m = 0, 1, 2``.
    """
    segments, rows, joints = start.shape
    matched = rows - 1
    scale = durations[:, None, None] ** np.arange(rows)[None, :, None]  # the n-th derivative in s is h**n times it in t
    coefficients = np.zeros((segments, joints, DEGREE + 1))
    for order in range(rows):
        coefficients[:, :, order] = start[:, order] * scale[:, order] / math.factorial(order)
    taylor_at_end = np.einsum("np,sdp->snd", _DERIVATIVE_FACTORS[:rows, :rows], coefficients[:, :, :rows])
    residuals = end * scale - taylor_at_end
    coefficients[:, :, matched + 1 : 2 * matched + 2] = np.einsum("pn,snd->sdp", _HERMITE_SOLVERS[matched], residuals)
    return coefficients


def _polynomial_derivatives(
    coefficients: np.ndarray, local_times: np.ndarray, durations: np.ndarray, highest: int
) -> np.ndarray:
    """``(highest + 1, K, D)`` value and time derivatives of normalised polynomials ``(K, D, DEGREE + 1)``.

    ``local_times`` ``(K,)`` are the normalised times ``s`` in [0, 1], ``durations`` ``(K,)`` the segments' lengths.
    """
    exponents = np.arange(DEGREE + 1)
    powers = local_times[:, None] ** exponents
    derivatives = []
    for order in range(highest + 1):
        # Term p of the order-th derivative is x_p * falling_factorial(p, order) * s**(p - order) / h**order.
        weights = _DERIVATIVE_FACTORS[order] * powers[:, np.maximum(exponents - order, 0)]
        derivatives.append(np.einsum("kdp,kp->kd", coefficients, weights) / durations[:, None] ** order)
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


def _checked_rate(rate_hz: float) -> float:
    if isinstance(rate_hz, bool) or not (isinstance(rate_hz, numbers.Real) and math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate_hz: must be a finite number > 0, got {rate_hz!r}")
    return float(rate_hz)


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
