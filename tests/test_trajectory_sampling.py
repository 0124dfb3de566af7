"""The sampler interpolates like JointTrajectoryController: linear, cubic or quintic, start blending, hold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.interpolate import CubicSpline

from eva_idm.trajectory import StartState, Trajectory, motion_bounds, sample, sample_uniform, tick_times

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True)
NAMES = ("a", "b")
TIMES = np.array([0.0, 0.4, 1.0, 1.5])


def polynomial(coefficients: list[float], t: np.ndarray, order: int = 0) -> np.ndarray:
    """d^order/dt^order of sum_p coefficients[p] t**p."""
    return np.polynomial.polynomial.polyval(t, np.polynomial.polynomial.polyder(coefficients, order))


def polynomial_trajectory(coefficients: list[float], matched: int) -> Trajectory:
    """Points on one polynomial (the same in both joints), with ``matched`` derivatives filled."""
    fields = [np.repeat(polynomial(coefficients, TIMES, order)[:, None], 2, axis=1) for order in range(matched + 1)]
    return Trajectory(NAMES, TIMES, *fields)


def test_interpolation_follows_the_filled_fields():
    positions = np.zeros((2, 2))
    assert Trajectory(NAMES, [0, 1], positions).interpolation == "linear"
    assert Trajectory(NAMES, [0, 1], positions, positions).interpolation == "cubic"
    assert Trajectory(NAMES, [0, 1], positions, positions, positions).interpolation == "quintic"


def test_linear_reproduces_points_and_uses_the_segment_slope():
    trajectory = Trajectory(NAMES, [0.0, 1.0, 3.0], [[0.0, 1.0], [2.0, 1.0], [1.0, -1.0]])
    positions, velocities, accelerations = sample(trajectory, [0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(positions, [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [1.5, 0.0]])
    np.testing.assert_allclose(velocities, [[2.0, 0.0], [2.0, 0.0], [-0.5, -1.0], [-0.5, -1.0]])
    np.testing.assert_array_equal(accelerations, 0.0)


@pytest.mark.parametrize(
    ("coefficients", "matched"), [([1.0, 2.0, -3.0, 0.5], 1), ([0.5, -1.0, 2.0, 0.7, -0.4, 0.1], 2)]
)
def test_cubic_and_quintic_reproduce_a_polynomial_of_their_degree(coefficients: list[float], matched: int):
    """Hermite segments fed a polynomial's own derivatives return that polynomial between the points."""
    trajectory = polynomial_trajectory(coefficients, matched)
    times = np.linspace(0.0, TIMES[-1], 97, endpoint=False)
    derivatives = sample(trajectory, times)
    for order, values in enumerate(derivatives):
        np.testing.assert_allclose(values[:, 0], polynomial(coefficients, times, order), atol=1e-9)
    # The bounds' jerk is the analytic third derivative's largest magnitude, exactly (a polynomial of
    # degree <= 2: at an end or at the vertex).
    arrival = StartState(*(np.full(2, polynomial(coefficients, 0.0, order)) for order in range(3)))
    jerks = motion_bounds(trajectory, 100.0, arrival).jerks.values[:, 0]
    fine = np.linspace(0.0, TIMES[-1], 100_001)
    assert np.abs(jerks).max() == pytest.approx(np.abs(polynomial(coefficients, fine, 3)).max(), rel=1e-9)


@pytest.mark.parametrize("matched", [0, 1, 2])
def test_points_and_end_states_are_reproduced_exactly(matched: int):
    rng = np.random.default_rng(matched)
    fields = [rng.normal(size=(4, 2)) for _ in range(matched + 1)]
    trajectory = Trajectory(NAMES, TIMES, *fields)
    derivatives = sample(trajectory, TIMES[:-1])
    for order in range(matched + 1):
        np.testing.assert_allclose(derivatives[order], fields[order][:-1], atol=1e-12)
    # The end of the last segment, approached from inside, meets the last point's state.
    near_end = sample(trajectory, TIMES[-1] - 1e-12)
    for order in range(matched + 1):
        np.testing.assert_allclose(near_end[order], fields[order][-1], atol=1e-6)


def test_after_the_last_point_the_position_is_held_at_rest():
    trajectory = polynomial_trajectory([0.0, 1.0, 1.0, -0.3], matched=1)
    positions, velocities, accelerations = sample(trajectory, [TIMES[-1], TIMES[-1] + 2.0])
    np.testing.assert_array_equal(positions, np.repeat(trajectory.positions[-1:], 2, axis=0))
    np.testing.assert_array_equal(velocities, 0.0)
    np.testing.assert_array_equal(accelerations, 0.0)


def test_scalar_time_gives_one_state():
    positions, velocities, _ = sample(polynomial_trajectory([1.0, 2.0], matched=0), 0.5)
    assert positions.shape == velocities.shape == (2,)
    np.testing.assert_allclose(positions, 2.0)


def test_before_point_0_the_start_state_is_blended_in_with_the_richest_common_mode():
    trajectory = Trajectory(NAMES, [1.0, 2.0], [[1.0, 1.0], [2.0, 2.0]], [[1.0, 0.0], [0.0, 0.0]])
    # Positions-only start state: JTC can only interpolate linearly.
    positions, velocities, _ = sample(trajectory, [0.0, 0.5], start_state=[0.0, 0.0])
    np.testing.assert_allclose(positions, [[0.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(velocities, [[1.0, 1.0], [1.0, 1.0]])
    # Start at rest with velocities: cubic Hermite from (0, 0 rad, 0 rad/s) to (1 s, 1 rad, v0).
    positions, velocities, _ = sample(trajectory, [0.0, 0.5, 1.0], start_state=StartState.at_rest([0.0, 0.0]))
    # p(u) = (3 - v0) u^2 + (v0 - 2) u^3: at u = 0.5 that is 0.5 - v0 / 8.
    np.testing.assert_allclose(positions, [[0.0, 0.0], [0.375, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(velocities, [[0.0, 0.0], [1.25, 1.5], [1.0, 0.0]])


def test_without_start_state_times_before_point_0_hold_point_0():
    trajectory = Trajectory(NAMES, [1.0, 2.0], [[1.0, 1.0], [2.0, 2.0]])
    positions, velocities, _ = sample(trajectory, [0.0, 0.99])
    np.testing.assert_array_equal(positions, [[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(velocities, 0.0)


def test_a_point_0_at_time_0_is_commanded_at_once():
    trajectory = Trajectory(NAMES, [0.0, 1.0], [[1.0, 1.0], [2.0, 2.0]])
    positions, _, _ = sample(trajectory, 0.0, start_state=[0.0, 0.0])
    np.testing.assert_array_equal(positions, [1.0, 1.0])
    # The controller executes that step within one tick: charged as velocity (1 rad over 10 ms, plus
    # the segment's own 1 rad/s within that tick).
    stepped = motion_bounds(trajectory, 100.0, start_state=[0.0, 0.0]).stepped_velocities.values
    np.testing.assert_allclose(stepped[0], [101.0, 101.0])


def test_sample_uniform_ticks_cover_the_trajectory():
    trajectory = polynomial_trajectory([0.0, 1.0], matched=0)
    times, positions, velocities, accelerations = sample_uniform(trajectory, 100.0)
    np.testing.assert_allclose(np.diff(times), 0.01)
    assert times[0] == 0.0 and times[-1] == pytest.approx(TIMES[-1])
    assert positions.shape == velocities.shape == accelerations.shape == (len(times), 2)
    assert len(tick_times(3.0, 100.0)) == 301


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"times": [0.0, 0.5, 0.5]}, "times", "0.5"),
        ({"times": [-0.1, 0.5, 1.0]}, "times", "-0.1"),
        ({"times": [1e-12, 0.5, 1.0]}, "times", "1e-12"),
        ({"times": []}, "times", "none"),
        ({"positions": [[0.0, 0.0], [1.0, np.nan], [2.0, 2.0]]}, "positions", "joint b"),
        ({"positions": np.zeros((3, 3))}, "positions", "(3, 3)"),
        ({"velocities": np.zeros((2, 2))}, "velocities", "(2, 2)"),
        ({"velocities": [[0.0, 0.0], [np.inf, 0.0], [0.0, 0.0]]}, "velocities", "inf"),
        ({"accelerations": np.zeros((3, 2))}, "accelerations", "without velocities"),
        ({"joint_names": ("a", "a")}, "joint_names", "['a']"),
        ({"joint_names": ("a",)}, "positions", "(3, 1)"),
        ({"joint_names": ("a", "")}, "joint_names", "''"),
    ],
)
def test_validation_errors_name_the_field_and_value(changes: dict, field: str, value: str):
    arguments = {"joint_names": NAMES, "times": [0.0, 0.5, 1.0], "positions": np.zeros((3, 2))} | changes
    with pytest.raises(ValueError, match=rf"^{field}:") as error:
        Trajectory(**arguments)
    assert value in str(error.value)


def test_sampling_arguments_are_checked():
    trajectory = polynomial_trajectory([0.0, 1.0], matched=0)
    with pytest.raises(ValueError, match=r"^t: .*-1"):
        sample(trajectory, -1.0)
    with pytest.raises(ValueError, match=r"^start_state.positions: expected 2 values"):
        sample(trajectory, 0.0, start_state=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"^rate_hz: .*0"):
        sample_uniform(trajectory, 0.0)


def test_arrays_are_read_only_copies():
    positions = np.zeros((2, 2))
    trajectory = Trajectory(NAMES, [0.0, 1.0], positions)
    positions[0, 0] = 5.0
    assert trajectory.positions[0, 0] == 0.0
    with pytest.raises(ValueError):
        trajectory.positions[0, 0] = 1.0


@PROPERTY
@given(
    gaps=arrays(np.float64, st.integers(1, 8), elements=st.floats(0.05, 1.0)),
    seed=st.integers(0, 2**32 - 1),
    start=st.sampled_from([0.0, 0.25, 1.0]),
)
def test_a_c2_cubic_spline_is_reproduced_by_cubic_and_quintic_interpolation(gaps: np.ndarray, seed: int, start: float):
    """Points at a cubic spline's knots with its derivatives replay that spline (cross-check with scipy)."""
    times = start + np.concatenate([[0.0], np.cumsum(gaps)])
    values = np.random.default_rng(seed).uniform(-2.0, 2.0, size=(len(times), 2))
    spline = CubicSpline(times, values, bc_type="clamped")
    cubic = Trajectory(NAMES, times, values, spline(times, 1))
    quintic = Trajectory(NAMES, times, values, spline(times, 1), spline(times, 2))
    queries = np.linspace(times[0], times[-1], 50, endpoint=False)
    for trajectory in (cubic, quintic):
        positions, velocities, accelerations = sample(trajectory, queries)
        np.testing.assert_allclose(positions, spline(queries), atol=1e-9)
        np.testing.assert_allclose(velocities, spline(queries, 1), atol=1e-8)
        np.testing.assert_allclose(accelerations, spline(queries, 2), atol=1e-6)
    # Blending from rest at point 0 into a clamped spline (at rest there too) stays at point 0;
    # after the end the end is held.
    positions, velocities, _ = sample(cubic, [start / 2, times[-1] + 1.0], start_state=StartState.at_rest(values[0]))
    np.testing.assert_allclose(positions, values[[0, -1]], atol=1e-12)
    np.testing.assert_allclose(velocities[1], 0.0)
