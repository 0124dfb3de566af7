"""Stop trajectories: bring every joint to rest from its commanded state, as a controller will accept it.

A stop must be something a real JointTrajectoryController executes. An empty ``JointTrajectory``
is not: since ros2_controllers PR #902 (Dec 2023, in Jazzy) JTC's ``validate_trajectory_msg``
rejects it ("Empty trajectory received") and goes on executing the previous trajectory. What JTC
does itself when it must stop is the idea used here (its ``decelerate_to_hold_position`` /
stop-on-cancel behaviour): decelerate from the current state to rest within the limits, then hold.

**Which state.** JTC blends a new trajectory from its own state (the desired state it is
commanding, or the measured one, by configuration), which the bridge cannot read over the topic
interface. What the bridge does know exactly is what it commanded: the trajectory it sent and its
start stamp. So the stop starts from the *commanded* state (position, velocity, acceleration) at
the stop's own start stamp, a little in the future (``lead``), so that the message arrives before
its first point is due: JTC then interpolates from its state at arrival, which lies on the same
commanded motion, to point 0, a blend between two states of one smooth curve. If the message is
late, JTC samples the stop at the current time; the stop and the old motion agree to second order
near its start, so that jump is negligible (and the sim follower reproduces it). Where nothing was
ever commanded, the measured pose at rest is the state.

**The profile.** All joints stop over one duration ``T`` (both arms end their motion together),
velocity falling along the cubic ``v(s) = v0 (1 - 3 s^2 + 2 s^3) + a0 T (s - 2 s^2 + s^3)``,
``s = t / T``: it starts with the commanded velocity and acceleration (no step in either) and
ends with zero velocity and acceleration. Acceleration is then quadratic and jerk linear in ``s``,
so their extrema are exact (ends and the vertex), and ``T`` is the shortest duration on a
geometric grid for which every joint stays within its acceleration and jerk limits. Positions are
the quartic integral; the quintic JTC interpolates between points carrying positions, velocities
and accelerations reproduces a quartic exactly, so the points below are the motion. A stop that
would carry a joint past a mechanical stop is shortened until it does not (harder braking beats
hitting the stop) and says so. After the last decelerating point the pose is held by one more
point ``hold`` later: a trajectory whose last point lies in the past is rejected by JTC, so the
stop's end lies well after any plausible delivery delay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eva_idm.embodiment import Embodiment
from eva_idm.trajectory import Trajectory

# Durations tried, shortest first: 5 ms to ~20 s, 5 % apart.
_DURATIONS = 0.005 * 1.05 ** np.arange(171)
# Aim this far below the limits, so that the executed stop never lands a hair above one.
_MARGIN = 0.95
# Decelerating points per stop (the motion between them is exact; more points help controllers
# configured to interpolate without accelerations).
_POINTS = 11


@dataclass(frozen=True)
class CommandedState:
    """Positions, velocities and accelerations being commanded at one instant, in embodiment order."""

    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray

    @classmethod
    def at_rest(cls, positions: np.ndarray) -> CommandedState:
        """Standing still at ``positions``."""
        positions = np.asarray(positions, dtype=np.float64)
        return cls(positions, np.zeros_like(positions), np.zeros_like(positions))


@dataclass(frozen=True, eq=False)
class StopPlan:
    """A stop: the trajectory (times from its start stamp), how long braking takes, and any compromise.

    Attributes:
        trajectory: positions, velocities and accelerations; point 0 is the commanded state.
        braking_time: seconds from the start stamp until every joint is at rest.
        note: '' or why a limit could not be kept (a stop that must brake harder than the
            acceleration limit to stay inside the mechanical stops).
    """

    trajectory: Trajectory
    braking_time: float
    note: str = ""


def stop_trajectory(state: CommandedState, embodiment: Embodiment, hold: float) -> StopPlan:
    """The stop from ``state`` to rest (module docstring), holding the final pose until ``braking + hold``."""
    if not hold > 0.0:
        raise ValueError(f"hold: must be > 0 s (a stop must end after it arrives), got {hold}")
    v0, a0 = state.velocities, state.accelerations
    acceleration_limit = _MARGIN * embodiment.per_joint("acceleration_limit")
    jerk_limit = _MARGIN * embodiment.per_joint("jerk_limit")
    lower, upper = embodiment.position_bounds(with_tolerance=False)
    moving = bool(np.any(v0 != 0.0) or np.any(a0 != 0.0))
    note = ""
    if not moving:
        duration = 0.0
    else:
        within_dynamics = _within_dynamics(v0, a0, _DURATIONS, acceleration_limit, jerk_limit)
        within_stops = _within_stops(state, _DURATIONS, lower, upper)
        good = within_dynamics & within_stops
        if good.any():
            duration = float(_DURATIONS[np.argmax(good)])
        elif within_stops.any():
            duration = float(_DURATIONS[np.flatnonzero(within_stops)[-1]])
            note = (f"braking in {duration:.3g} s beyond the acceleration or jerk limits, to stay inside the "
                    "mechanical stops")
        else:
            duration = float(_DURATIONS[0])
            note = f"no stop within the mechanical stops exists from this state; braking in {duration:.3g} s"
    times, positions, velocities, accelerations = _profile(state, duration)
    times = np.append(times, duration + hold)
    positions = np.vstack([positions, positions[-1]])
    velocities = np.vstack([velocities, np.zeros_like(v0)])
    accelerations = np.vstack([accelerations, np.zeros_like(v0)])
    trajectory = Trajectory(embodiment.joint_names, times, positions, velocities, accelerations)
    return StopPlan(trajectory, duration, note)


def _profile(state: CommandedState, duration: float) -> tuple[np.ndarray, ...]:
    """``(times, positions, velocities, accelerations)`` of the deceleration, ``_POINTS`` points (one at rest)."""
    if duration == 0.0:
        zeros = np.zeros_like(state.positions)
        return np.zeros(1), state.positions[None], zeros[None], zeros[None]
    s = np.linspace(0.0, 1.0, _POINTS)[:, None]
    v0, a0, span = state.velocities, state.accelerations, duration
    velocities = v0 * (1 - 3 * s**2 + 2 * s**3) + a0 * span * (s - 2 * s**2 + s**3)
    accelerations = v0 / span * (-6 * s + 6 * s**2) + a0 * (1 - 4 * s + 3 * s**2)
    positions = _positions(state, span, s)
    velocities[-1] = accelerations[-1] = 0.0
    return s[:, 0] * span, positions, velocities, accelerations


def _within_dynamics(v0: np.ndarray, a0: np.ndarray, durations: np.ndarray, acceleration_limit: np.ndarray,
                     jerk_limit: np.ndarray) -> np.ndarray:
    """Per duration, whether braking keeps every joint's acceleration and jerk (exact extrema) within the limits."""
    span = durations[:, None]
    # a(s) = c0 + c1 s + c2 s^2; its extrema on [0, 1] lie at the ends or the vertex.
    c0, c1, c2 = np.broadcast_to(a0, (len(durations), len(a0))), -6 * v0 / span - 4 * a0, 6 * v0 / span + 3 * a0
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.clip(np.where(c2 != 0.0, -c1 / (2 * c2), 0.0), 0.0, 1.0)
    peak_acceleration = np.maximum.reduce([np.abs(c0), np.abs(c0 + c1 + c2), np.abs(c0 + c1 * vertex + c2 * vertex**2)])
    # j(s) is linear in s: its extrema are at the ends.
    peak_jerk = np.maximum(np.abs(-6 * v0 / span**2 - 4 * a0 / span), np.abs(6 * v0 / span**2 + 2 * a0 / span))
    return ((peak_acceleration <= acceleration_limit) & (peak_jerk <= jerk_limit)).all(axis=1)


def _within_stops(state: CommandedState, durations: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Per duration, whether braking keeps every joint inside its position limits (or no further out).

    ``v(s) = (1 - s)^2 (v0 + s (2 v0 + a0 T))``: besides ``s = 1`` it vanishes only at
    ``s* = -v0 / (2 v0 + a0 T)``, so the quartic's extrema lie at ``s = 1`` and ``s*`` (exact).
    """
    span = durations[:, None]
    v0, a0 = state.velocities, state.accelerations
    with np.errstate(divide="ignore", invalid="ignore"):
        turning = np.clip(np.nan_to_num(-v0 / (2 * v0 + a0 * span), nan=1.0, posinf=1.0, neginf=1.0), 0.0, 1.0)
    low, high = np.minimum(lower, state.positions), np.maximum(upper, state.positions)
    inside = np.ones(durations.shape, dtype=bool)
    for s in (np.ones_like(turning), turning):
        positions = _positions(state, span, s)
        inside &= ((positions >= low) & (positions <= high)).all(axis=1)
    return inside


def _positions(state: CommandedState, span: np.ndarray | float, s: np.ndarray) -> np.ndarray:
    """Positions of the braking profile at phase ``s`` (broadcast against ``T``)."""
    v0, a0 = state.velocities, state.accelerations
    return state.positions + span * (v0 * (s - s**3 + s**4 / 2) + a0 * span * (s**2 / 2 - 2 * s**3 / 3 + s**4 / 4))
