"""benchmarks/loop.py (`make bench-loop`) loads beside the demo it reuses, and summarises like its JSON says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "loop.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("loop_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)  # imports scripts/demo.py: a renamed demo constant fails here
        yield module
    finally:
        del sys.modules[spec.name]


def test_the_summary_has_median_p99_maximum_and_count(bench):
    values = [0.03, 0.01, 0.02, 0.5]
    result = bench.summary(values)
    assert (result["median"], result["max"], result["n"]) == (0.025, 0.5, 4)
    assert 0.02 < result["p99"] < 0.5


# The e-stop check: after the e-stop exactly the bridge's stop may come, one per arm controller.

HOLD = 1.0  # config/controller_bridge.yaml stop_hold
LEFT, RIGHT = "left_arm_controller/joint_trajectory", "right_arm_controller/joint_trajectory"


def messages(trajectory, stamp_ns: int = 1_000_000_000_000) -> list:
    """``trajectory`` (embodiment order) as the split layout's two JointTrajectory messages, stamped alike.

    Written here as the bridge writes them (one point per knot; accelerations where the trajectory has them).
    """
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    result = []
    for columns in (slice(0, 7), slice(7, 14)):
        message = JointTrajectory(joint_names=list(trajectory.joint_names[columns]))
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        for index, time_s in enumerate(trajectory.times):
            point = JointTrajectoryPoint(positions=trajectory.positions[index, columns].tolist(),
                                         velocities=trajectory.velocities[index, columns].tolist())
            if trajectory.accelerations is not None:
                point.accelerations = trajectory.accelerations[index, columns].tolist()
            point.time_from_start.sec, point.time_from_start.nanosec = divmod(round(time_s * 1e9), 1_000_000_000)
            message.points.append(point)
        result.append(message)
    return result


@pytest.fixture(scope="module")
def moving():
    """A gated plan as the IDM node emits it (accelerations filled) and the commanded state midway through it."""
    from eva_idm.embodiment import load_embodiment
    from eva_idm.motion import GateConfig, plan_to_motion
    from eva_idm.stopping import CommandedState
    from eva_idm.trajectory import sample

    embodiment = load_embodiment("aloha_agilex")
    start = np.array([0.0, 1.2, 1.2, 0.0, 0.0, 0.0, 0.5] * 2)
    phase = np.linspace(0.0, 1.0, 33)[:, None]
    decoded = start + 0.3 * (0.5 - 0.5 * np.cos(np.pi * phase))
    config = GateConfig.from_embodiment(embodiment, time_scale=1.0, emit_accelerations=True)
    plan = plan_to_motion(decoded, 16.0, start, embodiment, config)
    assert plan.executable, plan.reason
    return embodiment, plan.trajectory, CommandedState(*sample(plan.trajectory, plan.trajectory.duration / 2))


def stops(moving) -> list:
    from eva_idm.stopping import stop_trajectory

    embodiment, _, state = moving
    return messages(stop_trajectory(state, embodiment, HOLD).trajectory)


def arrivals(*items) -> list:
    return [(0.01 * index, topic, message) for index, (topic, message) in enumerate(items)]


def test_the_bridges_stop_for_both_arms_is_accepted(bench, moving):
    left, right = stops(moving)
    assert len(left.points) == 12 and bench.not_a_stop(left, HOLD) == ""
    bench.check_stops(arrivals((LEFT, left), (RIGHT, right)), HOLD, 0)
    from eva_idm.stopping import CommandedState, stop_trajectory

    embodiment, _, state = moving
    still = messages(stop_trajectory(CommandedState.at_rest(state.positions), embodiment, HOLD).trajectory)
    assert len(still[0].points) == 2  # arms at rest get a hold: the pose now and again stop_hold later
    bench.check_stops(arrivals((LEFT, still[0]), (RIGHT, still[1])), HOLD, 0)


def test_a_plan_after_the_estop_is_refused_even_with_accelerations_and_ending_at_rest(bench, moving):
    _, plan, _ = moving
    left, right = messages(plan)
    assert all(len(point.accelerations) == 7 for point in left.points) and not any(left.points[-1].velocities)
    with pytest.raises(SystemExit, match="left_arm_controller/joint_trajectory got .* points over .* ending at rest "
                                         "without holding the final pose stop_hold 1 s \\(a plan\\), not a stop"):
        bench.check_stops(arrivals((LEFT, left), (RIGHT, right)), HOLD, 3)
    stop_left, stop_right = stops(moving)
    with pytest.raises(SystemExit, match="a second message on right_arm_controller/joint_trajectory"):
        bench.check_stops(arrivals((LEFT, stop_left), (RIGHT, stop_right), (RIGHT, right)), HOLD, 3)
    without = messages(type(plan)(plan.joint_names, plan.times, plan.positions, plan.velocities))
    with pytest.raises(SystemExit, match="point 0 with 0 accelerations for 7 joints"):
        bench.check_stops(arrivals((LEFT, without[0]), (RIGHT, stop_right)), HOLD, 3)


def test_an_empty_trajectory_a_missing_arm_a_foreign_topic_or_mixed_stamps_fail(bench, moving):
    from trajectory_msgs.msg import JointTrajectory

    left, right = stops(moving)
    with pytest.raises(SystemExit, match="got an empty trajectory"):
        bench.check_stops(arrivals((LEFT, JointTrajectory(joint_names=list(left.joint_names))), (RIGHT, right)),
                          HOLD, 0)
    with pytest.raises(SystemExit, match="no stop on right_arm_controller/joint_trajectory"):
        bench.check_stops(arrivals((LEFT, left)), HOLD, 0)
    with pytest.raises(SystemExit, match="a message on bimanual_controller/joint_trajectory"):
        bench.check_stops(arrivals((LEFT, left), (RIGHT, right), ("bimanual_controller/joint_trajectory", left)),
                          HOLD, 0)
    with pytest.raises(SystemExit, match="holding the final pose stop_hold 0.5 s"):  # another bridge's stop_hold
        bench.check_stops(arrivals((LEFT, left), (RIGHT, right)), 0.5, 0)
    right.header.stamp.nanosec += 1
    with pytest.raises(SystemExit, match="different start stamps"):
        bench.check_stops(arrivals((LEFT, left), (RIGHT, right)), HOLD, 0)


def joint_state(velocity: float, position: float = 0.0):
    from sensor_msgs.msg import JointState

    return JointState(name=["a", "b"], position=[position, position], velocity=[0.0, velocity])


def test_rest_is_the_first_joint_state_from_which_on_every_velocity_stays_below_the_threshold(bench):
    states = [(0.0, joint_state(0.5)), (0.1, joint_state(0.005)), (0.2, joint_state(0.02)),
              (0.3, joint_state(0.009)), (0.4, joint_state(-0.009)), (0.5, joint_state(0.0))]
    assert bench.at_rest_from(states, 0.01)[0] == 0.3  # the still moment at 0.1 does not count
    assert bench.at_rest_from([*states, (0.6, joint_state(-0.01))], 0.01) is None  # not at rest at the end
    assert bench.at_rest_from([(0.0, joint_state(0.0))], 0.01)[0] == 0.0
    from sensor_msgs.msg import JointState

    assert bench.at_rest_from([(0.0, JointState(name=["a"], position=[0.0]))], 0.01) is None  # no velocities


def test_the_distance_to_the_plans_end_is_taken_by_joint_name(bench):
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    plan = {LEFT: JointTrajectory(joint_names=["b", "a"], points=[JointTrajectoryPoint(positions=[9.0, 9.0]),
                                                                   JointTrajectoryPoint(positions=[0.3, 0.1])])}
    final = joint_state(0.0)
    final.position = [0.1, 0.25]
    assert bench.distance_to_plan_end(final, plan) == pytest.approx(0.05)
