"""Stop trajectories: from the commanded state to rest within the limits, in a form JTC accepts."""

from __future__ import annotations

import numpy as np
import pytest

from eva_idm.embodiment import load_embodiment
from eva_idm.motion import GateConfig, plan_to_motion
from eva_idm.stopping import CommandedState, stop_trajectory
from eva_idm.trajectory import sample

EMBODIMENT = load_embodiment("aloha_agilex")
LOWER, UPPER = EMBODIMENT.position_bounds(with_tolerance=False)
ACCELERATION = EMBODIMENT.per_joint("acceleration_limit")
JERK = EMBODIMENT.per_joint("jerk_limit")
VELOCITY = EMBODIMENT.per_joint("velocity_limit")
MIDDLE = np.array([0.0, 1.2, 1.2, 0.0, 0.0, 0.0, 0.5] * 2)


def dense(plan, count: int = 20001):
    """Positions, velocities, accelerations and jerks of the stop as JTC interpolates it, densely sampled."""
    times = np.linspace(0.0, plan.trajectory.duration, count)
    positions, velocities, accelerations = sample(plan.trajectory, times)
    jerks = np.diff(accelerations, axis=0) / np.diff(times)[:, None]
    return times, positions, velocities, accelerations, jerks


def commanded_states(seed: int, count: int):
    """States the bridge really commands: random smooth plans through the gate, sampled at random times."""
    rng = np.random.default_rng(seed)
    config = GateConfig.from_embodiment(EMBODIMENT, time_scale=1.0)
    states = []
    while len(states) < count:
        start = rng.uniform(LOWER + 0.25 * (UPPER - LOWER), UPPER - 0.25 * (UPPER - LOWER))
        phase = np.linspace(0.0, 1.0, 33)[:, None]
        decoded = start + rng.uniform(-0.6, 0.6, 14) * (0.5 - 0.5 * np.cos(np.pi * phase * rng.uniform(1, 3)))
        result = plan_to_motion(decoded, 16.0, start, EMBODIMENT, config)
        if result.executable:
            elapsed = rng.uniform(0.0, result.trajectory.duration)
            states.append(CommandedState(*sample(result.trajectory, elapsed)))
    return states


STATES = commanded_states(7, 30)


def test_almost_every_commanded_state_stops_within_every_limit():
    notes = [stop_trajectory(state, EMBODIMENT, hold=0.5).note for state in STATES]
    assert sum(bool(note) for note in notes) <= 3, notes


@pytest.mark.parametrize("state", STATES)
def test_a_stop_continues_the_commanded_motion_and_brakes_within_the_limits(state):
    plan = stop_trajectory(state, EMBODIMENT, hold=0.5)
    # A plan braking onto a stop at its own limit leaves this profile (whose peak deceleration is 1.5x
    # the mean) no room: it brakes harder rather than pass the stop, and says so.
    assert plan.note in ("", f"braking in {plan.braking_time:.3g} s beyond the acceleration or jerk limits, to "
                             "stay inside the mechanical stops") and plan.braking_time > 0.0
    trajectory = plan.trajectory
    assert trajectory.interpolation == "quintic" and trajectory.times[0] == 0.0
    np.testing.assert_allclose(trajectory.positions[0], state.positions)  # no step in position,
    np.testing.assert_allclose(trajectory.velocities[0], state.velocities)  # velocity
    np.testing.assert_allclose(trajectory.accelerations[0], state.accelerations)  # or acceleration
    times, positions, velocities, accelerations, jerks = dense(plan)
    if not plan.note:
        assert (np.abs(accelerations) <= ACCELERATION * (1 + 1e-9)).all()
        assert (np.abs(jerks) <= JERK * 1.001).all()
    assert ((positions >= LOWER - 1e-12) & (positions <= UPPER + 1e-12)).all()
    at_rest = times >= plan.braking_time
    np.testing.assert_allclose(velocities[at_rest], 0.0, atol=1e-9)
    assert trajectory.duration == pytest.approx(plan.braking_time + 0.5)
    np.testing.assert_array_equal(trajectory.velocities[-1], 0.0)  # JTC's end-at-rest rule holds


def test_a_still_robot_gets_a_hold_jtc_accepts():
    plan = stop_trajectory(CommandedState.at_rest(MIDDLE), EMBODIMENT, hold=1.0)
    assert plan.braking_time == 0.0 and len(plan.trajectory.times) == 2  # never an empty trajectory
    np.testing.assert_array_equal(plan.trajectory.positions, [MIDDLE, MIDDLE])
    assert plan.trajectory.duration == 1.0


def test_a_faster_motion_brakes_longer_and_the_shortest_allowed_stop_is_taken():
    arms = ~EMBODIMENT.gripper_mask()
    slow = stop_trajectory(CommandedState(MIDDLE, np.where(arms, 0.2, 0.0), np.zeros(14)), EMBODIMENT, hold=0.5)
    fast = stop_trajectory(CommandedState(MIDDLE, np.where(arms, 2.0, 0.0), np.zeros(14)), EMBODIMENT, hold=0.5)
    assert fast.braking_time > slow.braking_time and fast.note == slow.note == ""
    # v0 (1 - 3 s^2 + 2 s^3) peaks in deceleration at 1.5 v0 / T: the limit (5 rad/s^2 x 0.95) sets T.
    assert fast.braking_time == pytest.approx(1.5 * 2.0 / (0.95 * 5.0), rel=0.06)


def test_a_stop_that_would_pass_a_mechanical_stop_brakes_harder_and_says_so():
    near = MIDDLE.copy()
    near[1] = UPPER[1] - 0.05  # fl_joint2 heading for its upper stop at 2 rad/s
    velocities = np.zeros(14)
    velocities[1] = 2.0
    plan = stop_trajectory(CommandedState(near, velocities, np.zeros(14)), EMBODIMENT, hold=0.5)
    assert "to stay inside the mechanical stops" in plan.note
    _, positions, *_ = dense(plan)
    assert positions[:, 1].max() <= UPPER[1]


def test_hold_must_be_positive():
    with pytest.raises(ValueError, match="hold: must be > 0 s"):
        stop_trajectory(CommandedState.at_rest(MIDDLE), EMBODIMENT, hold=0.0)
