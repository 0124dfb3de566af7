"""Limits hold between samples: every segment of the executed motion is bounded exactly.

A real controller ticks at an arbitrary offset from a trajectory's start, so a check on one grid
of ticks leaves the motion between them unchecked. ``motion_bounds`` finds the extremes of
position, velocity, acceleration and jerk of every segment's polynomial in closed form (and by
bracketed Newton for the quintic's cubic and quartic derivatives); ``validate_trajectory`` checks
those. The properties here: the bounds are the true extremes (cross-checked against numpy's own
root finder), and whenever the validator finds nothing, dense sampling at any offset finds nothing
either, however adversarially the points are spaced.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from eva_idm.embodiment import load_embodiment
from eva_idm.motion import POSITION_ROUNDING, validate_trajectory
from eva_idm.trajectory import StartState, Trajectory, motion_bounds, sample, sample_uniform

EMBODIMENT = load_embodiment("aloha_agilex")
RATE = 100.0
PERIOD = 1.0 / RATE
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
# A joint with a stop at 0 (fl_joint2: the home pose sits on it) and a gripper (normalised 0..1).
JOINTS = ("fl_joint2", "left_gripper")
COLUMNS = [EMBODIMENT.joint_names.index(name) for name in JOINTS]
LOWER, UPPER = (bound[COLUMNS] for bound in EMBODIMENT.position_bounds(with_tolerance=False))
LIMITS = {kind: EMBODIMENT.per_joint(f"{kind}_limit")[COLUMNS] for kind in ("velocity", "acceleration", "jerk")}


def segment_polynomials(trajectory: Trajectory, start: StartState | None) -> list[tuple[float, float, np.ndarray]]:
    """``(knot, duration, coefficients (D, 6))`` per segment in normalised time, recovered from ``sample`` alone.

    Independent of the module's coefficients: six samples of a degree-5 polynomial fix it.
    """
    knots = trajectory.times if start is None or trajectory.times[0] == 0.0 else np.r_[0.0, trajectory.times]
    nodes = np.linspace(0.0, 1.0, 6)
    vandermonde = np.vander(nodes, 6, increasing=True)
    pieces = []
    for knot, end in zip(knots[:-1], knots[1:], strict=True):
        duration = end - knot
        # The last node sits 1e-12 of the segment short of its end (the next segment starts there).
        values = sample(trajectory, knot + duration * np.minimum(nodes, 1.0 - 1e-12), start)[0]
        pieces.append((knot, duration, np.linalg.solve(vandermonde, values).T))
    return pieces


def reference_extremes(coefficients: np.ndarray, order: int) -> tuple[float, float]:
    """Lowest and highest value on [0, 1] of the ``order``-th derivative of one polynomial, via numpy's roots.

    Real parts of complex roots are candidates too (a double root rounded complex), harmlessly: any
    point of [0, 1] gives a value the polynomial takes.
    """
    # Coefficients at rounding level (a cubic rebuilt as a quintic) would make numpy's companion matrix
    # ill-conditioned; they are trimmed.
    polynomial = np.polynomial.Polynomial(coefficients).trim(1e-12 * np.abs(coefficients).max()).deriv(order)
    critical = np.clip(polynomial.deriv().roots().real, 0.0, 1.0)
    values = polynomial(np.concatenate([[0.0, 1.0], critical]))
    return values.min(), values.max()


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), matched=st.sampled_from([0, 1, 2]), points=st.integers(2, 7),
       spacing=st.sampled_from(["even", "ragged", "nanoseconds"]), lead=st.booleans())
def test_the_bounds_are_the_extremes_of_every_segment(seed, matched, points, spacing, lead):
    rng = np.random.default_rng(seed)
    gaps = {"even": np.full(points - 1, 0.05), "ragged": rng.uniform(1e-3, 0.5, points - 1),
            "nanoseconds": rng.choice([2e-9, 1e-6, 0.02], points - 1)}[spacing]
    times = (0.1 if lead else 0.0) + np.r_[0.0, np.cumsum(gaps)]
    fields = [rng.normal(0.0, scale, (points, 2)) for scale in (1.0, 3.0, 10.0)[: matched + 1]]
    trajectory = Trajectory(("a", "b"), times, *fields)
    start = StartState.at_rest(rng.normal(size=2)) if lead else None
    bounds = motion_bounds(trajectory, RATE, start)
    extremes = [bounds.lowest_positions, bounds.highest_positions, bounds.velocities, bounds.accelerations,
                bounds.jerks]
    for segment, (knot, duration, coefficients) in enumerate(segment_polynomials(trajectory, start)):
        assert bounds.segment_times[segment] == pytest.approx(knot)
        for joint in range(2):
            # Compared in the segment's normalised time s = (t - knot) / duration. The reference is
            # rebuilt from samples at float times, whose rounding is large in s on nanosecond segments.
            resolution = np.finfo(float).eps * (knot + duration) / duration
            tolerance = (1e-8 + 1e5 * resolution) * max(1.0, np.abs(coefficients[joint]).max())
            for order in range(4):
                low, high = reference_extremes(coefficients[joint], order)
                scale = duration**order
                if order == 0:
                    assert bounds.lowest_positions.values[segment, joint] == pytest.approx(low, abs=tolerance)
                    assert bounds.highest_positions.values[segment, joint] == pytest.approx(high, abs=tolerance)
                else:
                    peak = extremes[order + 1].values[segment, joint] * scale
                    assert abs(peak) == pytest.approx(max(-low, high), abs=tolerance)
                    at = extremes[order + 1].times[segment, joint]  # where it is reached: in the segment
                    assert knot - 1e-12 <= at <= knot + duration + 1e-12


def test_a_cubic_overshoot_between_ticks_is_found_where_it_peaks():
    """From rest at 0 to rest at 0 within 4 ms, moving at 1 rad/s at a point 1 ms in: all between two 100 Hz ticks."""
    trajectory = Trajectory(("a",), [0.0, 0.001, 0.004], [[0.0], [0.0], [0.0]], [[0.0], [1.0], [0.0]])
    bounds = motion_bounds(trajectory, RATE)
    # Second segment: p(s) = v h (s - 2 s^2 + s^3), highest at s = 1/3: 4/27 v h.
    assert bounds.highest_positions.values[1, 0] == pytest.approx(4 / 27 * 0.003, rel=1e-12)
    assert bounds.highest_positions.times[1, 0] == pytest.approx(0.001 + 0.003 / 3, rel=1e-12)
    # First segment: p(s) = v h (s^3 - s^2), lowest at s = 2/3: -4/27 v h.
    assert bounds.lowest_positions.values[0, 0] == pytest.approx(-4 / 27 * 0.001, rel=1e-12)
    # The ticks from t = 0 see nothing of it.
    _, on_the_grid, velocities, _ = sample_uniform(trajectory, RATE)
    assert np.abs(on_the_grid).max() == 0.0 and np.abs(velocities).max() == 0.0


def test_steps_are_charged_over_one_tick_with_the_motion_around_them():
    # Linear: the velocity step at t = 1 (1 -> -1 rad/s) executes within one 10 ms tick.
    linear = Trajectory(("a", "b"), [0.0, 1.0, 2.0], [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    bounds = motion_bounds(linear, RATE)
    assert np.abs(bounds.accelerations.values).max() == 0.0
    assert bounds.stepped_accelerations.values[1, 0] == pytest.approx(-200.0)
    assert bounds.stepped_accelerations.times[1, 0] == 1.0
    # Point 0 at t = 0 away from the start state is commanded at once: a one-tick velocity pulse, plus
    # the segment's own 1 rad/s within that tick (approached as the tick before falls just before t = 0).
    jump = Trajectory(("a", "b"), [0.0, 1.0], [[1.0, 1.0], [2.0, 2.0]])
    stepped = motion_bounds(jump, RATE, start_state=[0.0, 0.0]).stepped_velocities.values
    np.testing.assert_allclose(stepped[0], [101.0, 101.0])
    # Cubic with inconsistent velocities: the acceleration step at t = 1 shows up as jerk.
    cubic = Trajectory(("a", "b"), [0.0, 1.0, 2.0], np.zeros((3, 2)), [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    bounds = motion_bounds(cubic, RATE)
    assert np.abs(bounds.stepped_jerks.values).max() > 10 * np.abs(bounds.jerks.values).max()


def test_steps_within_one_tick_add_up():
    """Ten velocity steps of 0.04 rad/s within 1 ms: each alone is 4 rad/s^2 over a tick (legal), together 40.

    A linear trajectory ramps up to 0.4 rad/s in those ten steps and back down in ten steps 20 ms apart.
    """
    up, down = 1.0 + 1e-4 * np.arange(10), 2.0 + 0.02 * np.arange(10)
    times = np.r_[0.0, up, down, 2.5]
    slopes = 0.04 * np.r_[np.arange(1, 11), np.arange(9, -1, -1)]  # of the segments from each knot but the first
    positions = np.r_[0.0, 0.0, np.cumsum(slopes * np.diff(times)[1:])][:, None]
    trajectory = Trajectory(("fl_joint1",), times, positions)
    stepped = motion_bounds(trajectory, RATE).stepped_accelerations.values[:, 0]
    assert stepped[1] == pytest.approx(0.4 * RATE) and np.abs(stepped[11:]).max() == pytest.approx(0.04 * RATE)
    violations = validate_trajectory(trajectory, EMBODIMENT, RATE)
    # Charged at each up-step for those within one period after it: all but the last see two or more.
    assert [(violation.kind, violation.count, violation.time) for violation in violations] == [
        ("acceleration", 9, 1.0)
    ]


def test_points_nanoseconds_apart_are_bounded_like_any_other():
    """1 microradian in 1 ns is 1000 rad/s: sent between two ticks, it must not pass."""
    trajectory = Trajectory(("fl_joint1",), [0.0, 0.0051, 0.0051 + 1e-9, 0.02], [[0.5], [0.5], [0.500001], [0.500001]])
    violations = validate_trajectory(trajectory, EMBODIMENT, RATE, start_positions=[0.5])
    velocity = next(violation for violation in violations if violation.kind == "velocity")
    assert velocity.value == pytest.approx(1000.0, rel=1e-6) and velocity.time == pytest.approx(0.0051, abs=1e-9)


@pytest.mark.parametrize("interpolation", ["linear", "cubic", "quintic"])
def test_a_plan_still_on_the_100_hz_grid_but_racing_between_it_is_refused(interpolation: str):
    """The attack the grid check accepted: at rest on every tick from t = 0, 100x the velocity limit between two."""
    pose = 0.5
    tick, rise = 0.05, 0.0015
    times = [0.0, tick, tick + 0.003, tick + 0.003 + rise, tick + 0.003 + 2 * rise, tick + 0.003 + 3 * rise,
             tick + PERIOD, tick + 2 * PERIOD]
    positions = np.full((len(times), 1), pose)
    positions[[3, 4]] += 100 * EMBODIMENT.velocity_limit[0] * rise  # a trapezoid between the ticks at 50 and 60 ms
    rest = np.zeros_like(positions)
    fields = {"linear": [positions], "cubic": [positions, rest], "quintic": [positions, rest, rest]}[interpolation]
    trajectory = Trajectory(("fl_joint1",), times, *fields)
    _, on_the_grid, velocities, _ = sample_uniform(trajectory, RATE, StartState.at_rest([pose]))
    assert np.abs(on_the_grid - pose).max() < 1e-12 and np.abs(velocities).max() < 1e-9
    violations = validate_trajectory(trajectory, EMBODIMENT, RATE, start_positions=[pose])
    velocity = next(violation for violation in violations if violation.kind == "velocity")
    assert abs(velocity.value) >= 100 * EMBODIMENT.velocity_limit[0] * (1 - 1e-9)
    assert tick < velocity.time < tick + PERIOD


def test_what_cannot_be_bounded_is_refused_with_a_reason():
    trajectory = Trajectory(("fl_joint1",), [0.0, 10.0], [[0.0], [0.0]], [[1e308], [-1e308]])
    violations = validate_trajectory(trajectory, EMBODIMENT, RATE)
    unbounded = next(violation for violation in violations if violation.kind == "unbounded")
    assert unbounded.joint == "fl_joint1" and unbounded.count == 1 and unbounded.time == 0.0
    assert "cannot be bounded" in str(unbounded)


def test_a_one_point_trajectory_is_its_point():
    trajectory = Trajectory(JOINTS, [0.0], [[-0.001, 0.5]])
    bounds = motion_bounds(trajectory, RATE)
    np.testing.assert_array_equal(bounds.lowest_positions.values, [[-0.001, 0.5]])
    violations = validate_trajectory(trajectory, EMBODIMENT, RATE)
    assert [(violation.joint, violation.kind, violation.limit) for violation in violations] == [
        ("fl_joint2", "position", 0.0)
    ]


def adversarial_times(rng: np.random.Generator, duration: float, count: int, spacing: str) -> np.ndarray:
    """Point times from 0 to ``duration``: even, clustered nanoseconds apart, or just off the 100 Hz ticks."""
    if spacing == "even":
        inner = np.linspace(0.0, duration, count)[1:-1]
    elif spacing == "clusters":
        centres = rng.uniform(0.0, duration, max(1, count // 4))
        gap = rng.choice([1e-9, 1e-7, 1e-5, 1e-3])  # cubic segments 1 ns long amplify rounding to ~100 rad/s^2
        inner = (centres[:, None] + gap * np.arange(1, 5)).ravel()
    elif spacing == "between ticks":
        ticks = rng.integers(1, int(duration * RATE), count)
        inner = (ticks + rng.uniform(0.05, 0.95, count)) * PERIOD
    else:
        inner = rng.uniform(0.0, duration, count)
    kept = [0.0]
    for time in np.sort(inner[(inner > 1e-6) & (inner < duration - 1e-6)]):
        if time - kept[-1] >= 1.01e-9:  # JTC's nanosecond resolution, with room for rounding
            kept.append(time)
    return np.array([*kept, duration])


def minimum_jerk(start: np.ndarray, move: np.ndarray, duration: float, times: np.ndarray) -> list[np.ndarray]:
    """Position, velocity, acceleration of a minimum-jerk move at ``times``."""
    phase = (times / duration)[:, None]
    return [start + move * (10 * phase**3 - 15 * phase**4 + 6 * phase**5),
            move * (30 * phase**2 - 60 * phase**3 + 30 * phase**4) / duration,
            move * (60 * phase - 180 * phase**2 + 120 * phase**3) / duration**2]


def dense_times(trajectory: Trajectory, rng: np.random.Generator) -> np.ndarray:
    """100,000 even instants, 20,000 random ones, and each point's neighbourhood down to a picosecond."""
    around = trajectory.times[:, None] + np.array([-1e-9, -1e-12, 0.0, 1e-12, 1e-9])
    return np.clip(np.concatenate([np.linspace(0.0, trajectory.duration, 100_000),
                                   rng.uniform(0.0, trajectory.duration, 20_000), around.ravel()]), 0.0, None)


def assert_commands_within_limits(trajectory: Trajectory, start: np.ndarray, rng: np.random.Generator) -> None:
    """Independently of the validator: dense samples, and ticks at random phases, keep every limit.

    Positions stay within the real limits, or, for a joint starting beyond a stop (within the band),
    never further beyond it than the start.
    """
    at_rest = StartState.at_rest(start)
    positions, velocities, accelerations = sample(trajectory, dense_times(trajectory, rng), at_rest)
    lower, upper = np.minimum(LOWER, start) - POSITION_ROUNDING, np.maximum(UPPER, start) + POSITION_ROUNDING
    assert (positions >= lower).all() and (positions <= upper).all()
    assert (np.abs(velocities) <= LIMITS["velocity"] * (1 + 1e-9)).all()
    assert (np.abs(accelerations) <= LIMITS["acceleration"] * (1 + 1e-9)).all()
    # A controller at a random phase: finite differences over one tick, from the robot at rest before t = 0.
    for phase in rng.uniform(0.0, PERIOD, 20):
        ticks = np.arange(phase, trajectory.duration + 2 * PERIOD, PERIOD)
        commanded = [np.vstack([before, values]) for before, values in
                     zip((start, np.zeros(2), np.zeros(2)), sample(trajectory, ticks, at_rest), strict=True)]
        for lower_order, kind in zip(commanded, LIMITS, strict=True):
            assert (np.abs(np.diff(lower_order, axis=0)) * RATE <= LIMITS[kind] * (1 + 1e-9) + 1e-9).all(), kind


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), matched=st.sampled_from([0, 1, 2]),
       spacing=st.sampled_from(["even", "clusters", "between ticks", "random"]), count=st.integers(2, 60),
       attack=st.sampled_from(["none", "velocity spike", "position nudge", "toward the stop"]),
       size=st.sampled_from([1e-4, 1e-2, 1.0, 100.0]))
def test_whenever_the_validator_finds_nothing_dense_sampling_finds_nothing(seed, matched, spacing, count, attack,
                                                                          size):
    """Adversarial point spacings and edits; accepted ones are checked at 120,000 instants and random tick phases."""
    rng = np.random.default_rng(seed)
    duration = rng.uniform(0.3, 3.0)
    times = adversarial_times(rng, duration, count, spacing)
    start = np.array([rng.choice([0.0, rng.uniform(0.0, 0.05), rng.uniform(0.3, 2.5)]), rng.uniform(0.0, 1.0)])
    move = rng.uniform(-0.5, 0.5, 2) * min(1.0, duration**2 / 2)
    fields = minimum_jerk(start, move, duration, times)[: matched + 1]
    interior = int(rng.integers(1, len(times) - 1)) if len(times) > 2 else None
    if interior is not None and attack == "velocity spike" and matched:
        fields[1][interior] += rng.choice([-1, 1], 2) * size * LIMITS["velocity"]
    elif interior is not None and attack == "position nudge":
        fields[0][interior] += rng.normal(0.0, size * 1e-3, 2)
    elif attack == "toward the stop":  # the whole motion shifted onto, or a hair past, j2's stop at 0
        fields[0][:, 0] -= start[0] + rng.choice([0.0, size * 1e-5])
    trajectory = Trajectory(JOINTS, times, *fields)
    violations = validate_trajectory(trajectory, EMBODIMENT, RATE, start_positions=trajectory.positions[0])
    event("accepted" if not violations else "refused")
    if not violations:
        measured = trajectory.positions[0]
        band = EMBODIMENT.per_joint("position_tolerance")[COLUMNS]
        assert ((measured >= LOWER - band) & (measured <= UPPER + band)).all()
        assert_commands_within_limits(trajectory, measured, rng)
