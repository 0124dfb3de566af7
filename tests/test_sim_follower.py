"""The simulated robot's controllers follow JointTrajectoryController's topic-interface rules (ROS-free core)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from eva_idm.embodiment import load_embodiment
from eva_idm.node_parameters import config_from_parameters, parameter_specs
from eva_idm.trajectory import StartState, Trajectory, sample
from eva_sim.follower import CommandError, SimulatedRobot, TrajectoryCommand, TrajectoryFollower, TrajectoryPoint
from eva_sim.sim_config import HOME_POSE, SimRobotConfig, build_sim_robot

ROOT = Path(__file__).resolve().parents[1]
CONTROLLERS = str(ROOT / "config" / "aloha_controllers.yaml")
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)
NAMES = ("j1", "j2", "j3")
LOWER, UPPER = (-2.0, -2.0, 0.0), (2.0, 2.0, 1.0)
START = (0.0, 0.0, 0.5)
T0 = 100.0
TICK = 0.01


def follower(time_constant: float = 0.0, cmd_timeout: float = 1.0) -> TrajectoryFollower:
    return TrajectoryFollower("arm", NAMES, START, LOWER, UPPER, cmd_timeout, time_constant, T0)


def point(time_from_start: float, positions, velocities=(), accelerations=(), effort=()) -> TrajectoryPoint:
    return TrajectoryPoint(time_from_start, tuple(positions), tuple(velocities), tuple(accelerations), tuple(effort))


def command(*points: TrajectoryPoint, names=NAMES, stamp: float = 0.0) -> TrajectoryCommand:
    return TrajectoryCommand(tuple(names), stamp, points)


def advance(arm: TrajectoryFollower, start: float, until: float) -> list[str]:
    """Tick ``arm`` every TICK from ``start`` up to ``until``; the notices it gave."""
    notices = []
    for now in np.arange(1, round((until - start) / TICK) + 1) * TICK + start:
        notice = arm.update(float(now))
        if notice:
            notices.append(notice)
    return notices


@pytest.mark.parametrize(("fields", "mid_velocity"), [(1, 1.0), (2, 1.5), (3, 1.875)])
def test_interpolation_follows_the_filled_fields(fields: int, mid_velocity: float):
    """Rest to rest over 1 s: linear, cubic and quintic peak at 1, 1.5 and 1.875 times the mean speed."""
    arm = follower()
    rest = [(0.0, 0.0, 0.0)] * (fields - 1)
    arm.receive(command(point(0.0, START, *rest), point(1.0, (1.0, -1.0, 1.0), *rest)), T0)
    advance(arm, T0, T0 + 0.5)
    positions, velocities, _ = arm.commanded
    np.testing.assert_allclose(positions, [0.5, -0.5, 0.75], atol=1e-9)
    np.testing.assert_allclose(velocities, [mid_velocity, -mid_velocity, 0.5 * mid_velocity], atol=1e-9)
    np.testing.assert_allclose(arm.measured_positions, positions)  # no lag with time_constant 0
    assert arm.status == "executing"
    advance(arm, T0 + 0.5, T0 + 1.2)
    np.testing.assert_allclose(arm.commanded[0], [1.0, -1.0, 1.0])
    np.testing.assert_array_equal(arm.commanded[1], 0.0)
    assert arm.status == "finished"


@PROPERTY
@given(st.permutations(range(3)), st.lists(st.floats(-1.5, 1.5), min_size=6, max_size=6),
       st.integers(50, 1000).map(lambda milliseconds: milliseconds / 1000))  # messages carry nanoseconds
def test_the_command_is_the_shared_sampler_in_controller_joint_order(order, values, duration):
    """Any joint order in the message; the motion is eva_idm.trajectory's, timed from arrival."""
    positions = np.array(values).reshape(2, 3)
    positions[:, 2] = np.clip(positions[:, 2], 0.0, 1.0)
    velocities = np.array([[0.3, -0.2, 0.1], [0.0, 0.0, 0.0]])
    arm = follower()
    names = [NAMES[index] for index in order]
    arm.receive(command(point(0.2, positions[0, order], velocities[0, order]),
                        point(0.2 + duration, positions[1, order], velocities[1, order]), names=names), T0)
    expected = Trajectory(NAMES, [0.2, 0.2 + duration], positions, velocities)
    for elapsed in (0.1, 0.2, 0.2 + duration / 2, 0.2 + duration + 0.05):
        arm.update(T0 + elapsed)
        wanted = sample(expected, elapsed, StartState(np.array(START), np.zeros(3)))
        for got, want in zip(arm.commanded, wanted, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-9)


def test_a_future_stamp_holds_until_then_when_point_0_is_the_current_pose():
    """The bridge's form: point 0 = measured pose at the stamp, both arms with the same future stamp."""
    arm = follower()
    arm.receive(command(point(0.0, START), point(1.0, (1.0, 1.0, 1.0)), stamp=T0 + 0.5), T0)
    advance(arm, T0, T0 + 0.5)
    np.testing.assert_allclose(arm.commanded[0], START)
    assert arm.end_time == pytest.approx(T0 + 1.5)
    advance(arm, T0 + 0.5, T0 + 1.0)
    np.testing.assert_allclose(arm.commanded[0], [0.5, 0.5, 0.75], atol=1e-9)
    advance(arm, T0 + 1.0, T0 + 1.5)
    np.testing.assert_allclose(arm.commanded[0], [1.0, 1.0, 1.0])


def test_before_point_0_the_arrival_state_is_interpolated_to_point_0_as_jtc_does():
    arm = follower()
    arm.receive(command(point(0.0, (1.0, 1.0, 1.0)), stamp=T0 + 1.0), T0)  # JTC ramps over the whole delay
    advance(arm, T0, T0 + 0.5)
    np.testing.assert_allclose(arm.commanded[0], [0.5, 0.5, 0.75], atol=1e-9)
    now_arm = follower()
    now_arm.receive(command(point(0.0, (1.0, 1.0, 1.0))), T0)  # stamp 0, time 0: point 0 at once
    now_arm.update(T0 + TICK)
    np.testing.assert_allclose(now_arm.commanded[0], [1.0, 1.0, 1.0])


def test_a_late_trajectory_is_sampled_where_it_should_be_now_as_jtc_does():
    """JTC (traj.cpp:173-206) interpolates between the points around now and ignores the state at arrival."""
    arm = follower()
    late = command(point(0.5, (2.0, 2.0, 1.0)), point(1.5, (1.0, 1.0, 1.0)), point(2.5, (0.0, 1.0, 1.0)),
                   stamp=T0 - 1.0)
    assert "late: sampled from now" in arm.receive(late, T0)
    arm.update(T0)
    np.testing.assert_allclose(arm.commanded[0], [1.5, 1.5, 1.0], atol=1e-9)  # halfway from point 0 to point 1
    advance(arm, T0, T0 + 1.0)
    np.testing.assert_allclose(arm.commanded[0], [0.5, 1.0, 1.0], atol=1e-9)
    assert arm.end_time == pytest.approx(T0 + 1.5)


def test_a_trajectory_ending_in_the_past_is_rejected():
    arm = follower()
    with pytest.raises(CommandError, match=r"header.stamp: the trajectory ends at 99.500000000 s \(stamp "
                                              r"99.000000000 s \+ last time_from_start 0.5 s\), before now"):
        arm.receive(command(point(0.5, (1.0, 1.0, 1.0)), stamp=T0 - 1.0), T0)


def test_a_new_message_replaces_the_old_one():
    arm = follower()
    arm.receive(command(point(1.0, (1.0, 1.0, 1.0))), T0)
    advance(arm, T0, T0 + 0.5)
    arm.receive(command(point(0.5, (-1.0, -1.0, 0.0))), T0 + 0.5)
    advance(arm, T0 + 0.5, T0 + 1.5)
    np.testing.assert_allclose(arm.commanded[0], [-1.0, -1.0, 0.0])
    np.testing.assert_allclose(arm.measured_positions, [-1.0, -1.0, 0.0])


def test_an_empty_message_is_rejected_with_jtcs_reason_and_the_motion_goes_on():
    """Since ros2_controllers PR #902 JTC rejects an empty trajectory (cpp:1695-1699): it is no stop."""
    arm = follower(time_constant=0.05)
    arm.receive(command(point(1.0, (1.0, 1.0, 1.0))), T0)
    advance(arm, T0, T0 + 0.5)
    with pytest.raises(CommandError, match=r"^Empty trajectory received\.$"):
        arm.receive(command(), T0 + 0.5)
    advance(arm, T0 + 0.5, T0 + 2.0)
    np.testing.assert_allclose(arm.commanded[0], [1.0, 1.0, 1.0])
    assert arm.status == "finished"
    with pytest.raises(CommandError, match=r"joint_names: empty; arm needs all of \['j1', 'j2', 'j3'\]"):
        arm.receive(command(names=()), T0 + 2.0)  # names are checked first, as in JTC


BAD_COMMANDS = [
    (command(point(1.0, (1, 1, 1)), names=("j1", "j2", "jx")),
     r"joint_names: \['jx'\] are not joints of arm \(it commands \['j1', 'j2', 'j3'\]\)"),
    (command(point(1.0, (1, 1, 1)), names=("j1", "j2", "j2")), r"joint_names: \['j2'\] given more than once"),
    (command(point(1.0, (1, 1)), names=("j1", "j2")),
     r"joint_names: \['j3'\] missing; partial goals are not allowed"),
    (command(point(1.0, (1, 1))), r"points\[0\].positions: 2 values for 3 joint names"),
    (command(point(1.0, (1, 1, 1), (0, 0))), r"points\[0\].velocities: 2 values for 3 joint names"),
    (command(point(1.0, (1, 1, 1), (0, 0, 0), (0, 0, 0, 0))), r"points\[0\].accelerations: 4 values for 3"),
    (command(point(1.0, (1, math.nan, 1))), r"points\[0\].positions: non-finite value nan for j2"),
    (command(point(0.5, (1, 1, 1), (0, 0, 0)), point(1.0, (1, 1, 1), (0, math.inf, 0))),
     r"points\[1\].velocities: non-finite value inf for j2"),
    (command(point(0.5, (1, 1, 1)), point(0.5, (0, 0, 0))),
     r"points\[1\].time_from_start: 0.5 s is not after points\[0\]'s 0.5 s; times must strictly increase"),
    (command(point(-0.1, (1, 1, 1))), r"points\[0\].time_from_start: must be a finite duration >= 0 s, got -0.1"),
    (command(point(0.5, (1, 1, 1), (0, 0, 0)), point(1.0, (1, 1, 1))),
     r"points\[1\].velocities: empty while points\[0\] has velocities"),
    (command(point(1.0, (1, 1, 1), (), (0, 0, 0))), r"accelerations: given without velocities"),
    (command(point(1.0, (1, 1, 1), (0, 0.5, 0))),
     r"points\[0\].velocities: the last point must be at rest .* got 0.5 for j2"),
    (command(point(1.0, (1, 1, 1), (), (), (1, 1, 1))), r"points\[0\].effort: JTC does not support effort"),
    (command(point(1.0, ())), r"points\[0\].positions: empty"),
    (command(point(1.0, (1, 1, 1)), stamp=math.nan), r"header.stamp: must be a finite time >= 0 s, got nan"),
]


@pytest.mark.parametrize(("bad", "error"), BAD_COMMANDS)
def test_bad_messages_are_rejected_naming_the_field_and_value(bad: TrajectoryCommand, error: str):
    with pytest.raises(CommandError, match=error):
        follower().receive(bad, T0)


@PROPERTY
@given(st.sampled_from([bad for bad, _ in BAD_COMMANDS] + [command(names=("j1",))]),
       st.integers(0, 90).map(lambda ticks: ticks * TICK))
def test_a_rejected_message_changes_nothing(bad: TrajectoryCommand, when: float):
    """A twin that never saw the bad message moves exactly like the one that refused it."""
    arm, twin = follower(0.05), follower(0.05)
    for each in (arm, twin):
        each.receive(command(point(1.0, (1.0, -1.0, 1.0))), T0)
        advance(each, T0, T0 + when)
    with pytest.raises(CommandError):
        arm.receive(bad, T0 + when)
    for each in (arm, twin):
        advance(each, T0 + when, T0 + 1.5)
    np.testing.assert_array_equal(arm.measured_positions, twin.measured_positions)
    assert arm.status == twin.status == "finished"


def test_the_command_goes_stale_cmd_timeout_after_the_end_and_then_holds_where_the_arm_is():
    arm = follower(time_constant=0.5, cmd_timeout=1.0)
    arm.receive(command(point(0.5, (1.0, 1.0, 1.0))), T0)
    assert advance(arm, T0, T0 + 1.5) == []
    assert arm.status == "finished"
    notices = advance(arm, T0 + 1.5, T0 + 2.0)
    assert notices == ["command timed out: the trajectory ended at 100.500 s and cmd_timeout is 1.0 s; "
                       "holding the measured position"]
    assert arm.status == "stale"
    held = arm.commanded[0]
    assert (1.0 - held > 0.03).all()  # where the slow arm got to, not the last point
    advance(arm, T0 + 2.0, T0 + 4.0)
    np.testing.assert_allclose(arm.measured_positions, held, atol=1e-9)


@pytest.mark.parametrize("time_constant", [0.02, 0.1])
def test_the_measured_position_is_a_first_order_lag_of_the_commanded_one(time_constant: float):
    arm = follower(time_constant)
    arm.receive(command(point(0.0, (1.0, 0.0, 0.5))), T0)  # a step
    previous = arm.measured_positions
    for tick in range(1, 30):
        arm.update(T0 + tick * TICK)
        expected = 1.0 - math.exp(-tick * TICK / time_constant)
        assert arm.measured_positions[0] == pytest.approx(expected, rel=1e-9)
        assert arm.measured_velocities[0] == pytest.approx((arm.measured_positions[0] - previous[0]) / TICK)
        previous = arm.measured_positions
    assert arm.commanded[0][0] == 1.0


@PROPERTY
@given(st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3), st.sampled_from([0.0, 0.05]))
def test_measured_positions_stay_within_the_position_limits(target, time_constant):
    arm = follower(time_constant)
    arm.receive(command(point(0.3, target)), T0)
    for now in np.arange(1, 60) * TICK + T0:
        arm.update(float(now))
        assert (arm.measured_positions >= LOWER).all() and (arm.measured_positions <= UPPER).all()
    np.testing.assert_allclose(arm.measured_positions, np.clip(target, LOWER, UPPER), atol=1e-3)


def test_time_must_not_go_backwards():
    arm = follower()
    arm.update(T0 + 1.0)
    with pytest.raises(ValueError, match="now: time went backwards from 101.0 s to 100.5 s"):
        arm.update(T0 + 0.5)
    arm.receive(command(point(1.0, START)), T0 + 2.0)
    with pytest.raises(ValueError, match="now: time went backwards from 102.0 s to 101.5 s"):
        arm.update(T0 + 1.5)


def split_robot(**overrides) -> SimulatedRobot:
    return build_sim_robot(SimRobotConfig(**{"controllers_file": CONTROLLERS, **overrides}), T0)


def test_the_split_robot_moves_one_arm_while_the_other_holds():
    robot = split_robot(tracking_time_constant=0.0)
    np.testing.assert_array_equal(robot.positions, HOME_POSE)
    assert robot.update_rate_hz == 100.0
    assert set(robot.statuses().values()) == {"idle"}
    left = robot.followers["left_arm_controller"].joint_names
    target = (0.3, 0.5, 0.4, 0.1, -0.2, 0.3, 0.2)
    robot.receive("left_arm_controller", command(point(0.5, target), names=left), T0)
    for tick in range(1, 61):
        assert robot.update(T0 + tick * TICK) == {}
    np.testing.assert_allclose(robot.positions, target + HOME_POSE[7:])
    assert robot.statuses() == {"left_arm_controller": "finished", "right_arm_controller": "idle"}


def test_the_combined_robot_takes_all_joints_and_metres_for_the_grippers():
    robot = build_sim_robot(SimRobotConfig(controllers_file=CONTROLLERS, controller_layout="combined",
                                           tracking_time_constant=0.0, gripper_in_metres=True), T0)
    embodiment = robot.embodiment
    assert list(robot.followers) == ["bimanual_controller"]
    target = np.array(HOME_POSE)
    target[[6, 13]] = [0.0475 / 2, 0.0]  # metres: half open, closed
    robot.receive("bimanual_controller", command(point(0.2, target), names=embodiment.joint_names), T0)
    for tick in range(1, 31):
        robot.update(T0 + tick * TICK)
    expected = np.array(HOME_POSE)
    expected[[6, 13]] = [0.5, 0.0]
    np.testing.assert_allclose(robot.positions, expected)
    with pytest.raises(CommandError, match="partial goals are not allowed"):
        robot.receive("bimanual_controller", command(point(0.2, target[:7]), names=embodiment.joint_names[:7]),
                      T0 + 0.3)


def test_the_config_file_lists_every_parameter_with_its_default():
    document = yaml.safe_load((ROOT / "config" / "sim_robot.yaml").read_text())
    parameters = document["sim_robot"]["ros__parameters"]
    assert set(parameters) == {spec.name for spec in parameter_specs(SimRobotConfig)}
    assert config_from_parameters(SimRobotConfig, parameters, "config/sim_robot.yaml") == SimRobotConfig()
    assert len(SimRobotConfig().initial_positions) == load_embodiment("aloha_agilex").num_joints


@pytest.mark.parametrize(("values", "error"), [
    ({"controller_layout": "both"}, r"controller_layout: expected one of \['split', 'combined'\], got 'both'"),
    ({"camera_rate": -1.0}, "camera_rate: must be a finite number >= 0, got -1.0"),
    ({"clock_start": 0.0}, "clock_start: must be a finite number > 0, got 0.0"),
    ({"camera_width": 8}, r"camera_width: must be a whole number of pixels in \[16, 4096\], got 8"),
    ({"camera_heigth": 48}, "unknown parameter.*'camera_heigth' \\(did you mean 'camera_height'\\?\\)"),
    ({"real_time_factor": "fast"}, "real_time_factor: expected a number, got 'fast'"),
])
def test_bad_parameters_name_the_parameter(values, error):
    with pytest.raises(ValueError, match=error):
        config_from_parameters(SimRobotConfig, values, "config/sim_robot.yaml")


@pytest.mark.parametrize(("overrides", "error"), [
    ({"initial_positions": (0.0,) * 13}, "initial_positions: expected 14 values"),
    ({"initial_positions": (0.0, -0.5) + (0.0,) * 12}, r"initial_positions: fl_joint2 = -0.5 is outside .*\[0.0, "),
    ({"joint_state_rate": 200.0}, "joint_state_rate: 200.0 Hz is above the controllers' update_rate 100.0 Hz"),
    ({"controllers_file": "no/such/controllers.yaml"}, "no/such/controllers.yaml: cannot read"),
])
def test_the_robot_refuses_a_configuration_it_cannot_simulate(overrides, error):
    with pytest.raises(ValueError, match=error):
        split_robot(**overrides)
