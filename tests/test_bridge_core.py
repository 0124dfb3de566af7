"""The controller bridge's core without ROS: configuration, checks, commands and the execution state machine."""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from eva_idm.bridge import BridgeOutput, ControllerBridge, Level, Status
from eva_idm.bridge_checks import (
    NS_PER_S,
    Code,
    ControllerCommand,
    JointStateInput,
    PlanChecker,
    PlanInput,
    PlanVerdict,
    PointInput,
    State,
)
from eva_idm.bridge_config import BridgeConfig, load_bridge_setup
from eva_idm.controllers import ControllerConfigError
from eva_idm.motion import GateConfig, plan_to_motion
from eva_idm.node_parameters import config_from_parameters
from eva_idm.trajectory import Trajectory, sample

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = ROOT / "src" / "eva_msgs" / "msg" / "ExecutionStatus.msg"
CONFIG = BridgeConfig(standstill_window=0.1, start_delay=0.1, settle_time=0.1)
EMBODIMENT, CONTROLLERS = load_bridge_setup(CONFIG)
NAMES = EMBODIMENT.joint_names
T0 = 1_700_000_000 * NS_PER_S  # node clock at the start of each scenario
MS = 1_000_000
#                   j1   j2   j3   j4    j5   j6   gripper (x2 arms)
START = np.array([0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.5] * 2)
MOVE = np.array([0.4, 0.3, 0.2, -0.25, 0.15, 0.35, 0.3] * 2)


def motion(start: np.ndarray = START, move: np.ndarray = MOVE, seconds: float = 1.0) -> Trajectory:
    """An executable rest-to-rest trajectory from ``start``, made by the gate from a smooth decode."""
    phase = np.linspace(0.0, 1.0, int(seconds * 16) + 1)
    decoded = start + move * (0.5 * (1.0 - np.cos(np.pi * phase)))[:, None]
    result = plan_to_motion(decoded, 16.0, start, EMBODIMENT, GateConfig.from_embodiment(EMBODIMENT, time_scale=1.0))
    assert result.executable, result.reason
    return result.trajectory


def joints(positions: np.ndarray, stamp_ns: int, velocities: np.ndarray | None = None) -> JointStateInput:
    return JointStateInput(NAMES, list(positions), list(np.zeros(14) if velocities is None else velocities), stamp_ns)


def plan(trajectory: Trajectory, plan_id: str = "plan", image_ns: int = T0 - 60 * NS_PER_S,
         at_image: np.ndarray = START, **changes) -> PlanInput:
    points = [PointInput(list(trajectory.positions[k]), list(trajectory.velocities[k]), [], [],
                         round(trajectory.times[k] * NS_PER_S)) for k in range(len(trajectory.times))]
    made = PlanInput(plan_id, image_ns, joints(at_image, image_ns), True, NAMES, 0, points)
    return dataclasses.replace(made, **changes)


class Recorder(BridgeOutput):
    """The bridge's output, kept in order: ("send", commands) and ("status", Status) items, and each send's stamp."""

    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []
        self.stamps: list[int] = []

    def prepare(self, commands):
        return tuple(commands)

    def publish(self, prepared, stamp_ns: int) -> None:
        self.items.append(("send", prepared))
        self.stamps.append(stamp_ns)

    def report(self, status: Status) -> None:
        self.items.append(("status", status))

    def statuses(self) -> list[tuple[str, State, Code]]:
        return [(s.plan_id, s.state, s.code) for kind, s in self.items if kind == "status"]

    def sends(self) -> list[tuple[ControllerCommand, ...]]:
        return [commands for kind, commands in self.items if kind == "send"]

    def last(self) -> Status:
        return [s for kind, s in self.items if kind == "status"][-1]


class ManualClock:
    """The bridge's clock in these tests: the time they set, in ns (the node's clock in the node)."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


class Robot:
    """Joint states of a robot standing at ``pose`` (or following ``trajectory`` from ``start_ns``)."""

    def __init__(self, bridge: ControllerBridge, clock: ManualClock, pose: np.ndarray = START):
        self.bridge, self.clock, self.pose = bridge, clock, np.array(pose, dtype=float)

    def still(self, from_ns: int, until_ns: int, step_ns: int = 10 * MS) -> None:
        for stamp in range(from_ns, until_ns + 1, step_ns):
            self.bridge.joint_state(joints(self.pose, stamp))

    def follow(self, command_stamp_ns: int, trajectory: Trajectory, until_ns: int, now_ns: int,
               offset: np.ndarray | float = 0.0, step_ns: int = 10 * MS) -> int:
        """Publish the commanded motion (plus ``offset``) and tick the bridge until ``until_ns``; the last time."""
        for stamp in range(now_ns, until_ns + 1, step_ns):
            elapsed = max(0.0, (stamp - command_stamp_ns) / NS_PER_S)
            positions, velocities, _ = sample(trajectory, elapsed)
            self.pose = positions + offset
            self.bridge.joint_state(joints(self.pose, stamp, velocities))
            self.clock.now_ns = stamp
            self.bridge.tick()
            if not self.bridge.busy:
                return stamp
        return until_ns


def make_bridge(config: BridgeConfig = CONFIG, checker_type: type[PlanChecker] = PlanChecker):
    embodiment, controllers = load_bridge_setup(config)
    output, clock = Recorder(), ManualClock()
    bridge = ControllerBridge(checker_type(config, embodiment, controllers), output, clock)
    bridge.open()
    return bridge, output, clock


def still_bridge(config: BridgeConfig = CONFIG):
    """A bridge whose robot has stood still at START for a second before T0."""
    bridge, output, clock = make_bridge(config)
    robot = Robot(bridge, clock)
    robot.still(T0 - NS_PER_S, T0)
    return bridge, output, robot, clock


def test_states_and_codes_are_the_execution_status_constants():
    text = MESSAGE.read_text()
    states = dict(re.findall(r"^uint8 (\w+) = (\d+)", text, flags=re.MULTILINE))
    codes = dict(re.findall(r"^uint16 (\w+) = (\d+)", text, flags=re.MULTILINE))
    assert {name: int(value) for name, value in states.items()} == {s.name: s.value for s in State}
    assert {name: int(value) for name, value in codes.items()} == {c.name: c.value for c in Code}


def test_the_shipped_yaml_sets_every_parameter_and_is_valid():
    document = yaml.safe_load((ROOT / "config" / "controller_bridge.yaml").read_text())
    values = document["controller_bridge"]["ros__parameters"]
    config = config_from_parameters(BridgeConfig, values, "config/controller_bridge.yaml")
    assert set(values) == {field.name for field in dataclasses.fields(BridgeConfig)}
    assert config == BridgeConfig()  # the YAML documents the defaults
    with pytest.raises(ValueError, match="unknown parameter.*'start_dealy' \\(did you mean 'start_delay'\\?\\)"):
        config_from_parameters(BridgeConfig, {**values, "start_dealy": 0.1}, "config/controller_bridge.yaml")


@pytest.mark.parametrize(("change", "message"), [
    ({"controller_layout": "triple"}, "controller_layout: expected one of \\['split', 'combined'\\], got 'triple'"),
    ({"start_tolerance": 0.0}, "start_tolerance: must be a finite number > 0, got 0.0"),
    ({"tracking_tolerance": float("nan")}, "tracking_tolerance: must be a finite number > 0, got nan"),
    ({"settle_time": -0.1}, "settle_time: must be a finite number >= 0, got -0.1"),
    ({"max_points": 1}, "max_points: a rest-to-rest motion needs at least 2 points, got 1"),
    ({"controllers_file": ""}, "controllers_file: must not be empty"),
    ({"monitor_rate": "fast"}, "monitor_rate: expected a number, got 'fast'"),
])
def test_bad_settings_are_refused_naming_the_parameter(change, message):
    with pytest.raises(ValueError, match=message):
        BridgeConfig(**change)


def write_controllers(tmp_path: Path, cmd_timeout: float = 1.0, goal_time: float = 0.5,
                      right_joints: list[str] | None = None) -> Path:
    document = yaml.safe_load((ROOT / "config" / "aloha_controllers.yaml").read_text())
    for name in ("left_arm_controller", "right_arm_controller", "bimanual_controller"):
        document[name]["ros__parameters"]["cmd_timeout"] = cmd_timeout
        document[name]["ros__parameters"]["constraints"]["goal_time"] = goal_time
    if right_joints is not None:
        document["right_arm_controller"]["ros__parameters"]["joints"] = right_joints
    path = tmp_path / "controllers.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_layouts_name_their_controllers_and_cover_every_joint_once(tmp_path):
    _, split = load_bridge_setup(BridgeConfig())
    assert [c.name for c in split] == ["left_arm_controller", "right_arm_controller"]
    assert split[0].joints == NAMES[:7] and split[1].joints == NAMES[7:]
    _, combined = load_bridge_setup(BridgeConfig(controller_layout="combined"))
    assert [c.name for c in combined] == ["bimanual_controller"] and combined[0].joints == NAMES
    _, from_path = load_bridge_setup(BridgeConfig(controllers_file=str(write_controllers(tmp_path))))
    assert from_path == split


def test_unsafe_or_inconsistent_controller_files_fail_configuration(tmp_path):
    with pytest.raises(ControllerConfigError, match="needs cmd_timeout > constraints.goal_time > 0, got "
                                                    "cmd_timeout=0.5 and goal_time=0.5"):
        load_bridge_setup(BridgeConfig(controllers_file=str(write_controllers(tmp_path, 0.5, 0.5))))
    no_gripper = list(NAMES[7:13])
    with pytest.raises(ValueError, match="uncommanded \\['right_gripper'\\]"):
        load_bridge_setup(BridgeConfig(controllers_file=str(write_controllers(tmp_path, right_joints=no_gripper))))
    with pytest.raises(FileNotFoundError, match="controllers_file: 'no_such_controllers.yaml' not found"):
        load_bridge_setup(BridgeConfig(controllers_file="no_such_controllers.yaml"))


def check(the_plan: PlanInput, measured: np.ndarray = START, config: BridgeConfig = CONFIG,
          now_ns: int = T0, velocities: np.ndarray | None = None) -> PlanVerdict:
    checker = PlanChecker(config, EMBODIMENT, CONTROLLERS)
    return checker.check(the_plan, checker.read_joint_state(joints(measured, now_ns - 10 * MS, velocities)), now_ns)


def test_a_good_plan_is_accepted_and_point_0_becomes_the_measured_pose():
    trajectory = motion()
    nudged = START + np.where(np.arange(14) == 3, 0.009, 0.0)  # within start_tolerance
    verdict = check(plan(trajectory, at_image=nudged), measured=nudged)
    assert verdict.accepted, verdict.reason
    sent = verdict.trajectory
    np.testing.assert_array_equal(sent.positions[0], nudged)
    np.testing.assert_array_equal(sent.velocities[[0, -1]], 0.0)
    np.testing.assert_array_equal(sent.times, trajectory.times)
    # The 9 mrad fade out over start_offset_fade_s (0.5 s); nothing else changes.
    fading = (sent.times > 0.0) & (sent.times < 0.5)
    offset = sent.positions[:, 3] - trajectory.positions[:, 3]
    assert (np.diff(offset[: np.flatnonzero(fading)[-1] + 2]) < 0.0).all()
    np.testing.assert_array_equal(sent.positions[sent.times >= 0.5], trajectory.positions[trajectory.times >= 0.5])
    np.testing.assert_array_equal(np.delete(sent.positions, 3, axis=1)[1:], np.delete(trajectory.positions, 3, 1)[1:])
    assert check(plan(trajectory), measured=START).trajectory.positions.tobytes() == trajectory.positions.tobytes()


def test_a_start_offset_a_short_trajectory_cannot_absorb_breaks_the_limits():
    nudged = START + np.where(np.arange(14) == 3, 0.009, 0.0)
    short = Trajectory(NAMES, [0.0, 0.05, 0.1], np.repeat(START[None], 3, axis=0), np.zeros((3, 14)))
    verdict = check(plan(short, at_image=nudged), measured=nudged)  # the whole fade within 0.1 s
    assert verdict.code is Code.LIMIT_VIOLATION
    assert re.search("bounded at every instant.*: fl_joint4 jerk -?[0-9.]+ \\(limit 100\\)", verdict.reason)


def point_change(index: int, **fields):
    def change(p: PlanInput) -> PlanInput:
        points = list(p.points)
        points[index] = dataclasses.replace(points[index], **fields)
        return dataclasses.replace(p, points=points)
    return change


BAD_PLANS = [
    ("empty plan_id", lambda p: dataclasses.replace(p, plan_id=""), Code.MALFORMED_TRAJECTORY,
     "plan_id: must not be empty"),
    ("gate refused", lambda p: dataclasses.replace(p, gate_accepted=False), Code.MALFORMED_TRAJECTORY,
     "report.executable: false"),
    ("renamed joint", lambda p: dataclasses.replace(p, joint_names=[*NAMES[:13], "right_claw"]),
     Code.MALFORMED_TRAJECTORY, "unknown \\['right_claw'\\]; missing \\['right_gripper'\\]"),
    ("duplicated joint", lambda p: dataclasses.replace(p, joint_names=[*NAMES[:13], "fl_joint1"]),
     Code.MALFORMED_TRAJECTORY, "duplicated \\['fl_joint1'\\]"),
    ("arms swapped", lambda p: dataclasses.replace(p, joint_names=[*NAMES[7:], *NAMES[:7]]),
     Code.MALFORMED_TRAJECTORY, "the wrong order"),
    ("stamped trajectory", lambda p: dataclasses.replace(p, trajectory_stamp_ns=T0), Code.MALFORMED_TRAJECTORY,
     "trajectory.header.stamp: must be zero"),
    ("one point", lambda p: dataclasses.replace(p, points=p.points[:1]), Code.MALFORMED_TRAJECTORY,
     "expected 2 to max_points 2000 points .*got 1"),
    ("late point 0", point_change(0, time_from_start_ns=5 * MS), Code.MALFORMED_TRAJECTORY,
     "points\\[0\\].time_from_start: must be 0"),
    ("repeated time", point_change(3, time_from_start_ns=125 * MS), Code.MALFORMED_TRAJECTORY,
     "points\\[3\\].time_from_start: 0.125 s is not after point 2's 0.125 s"),
    ("absurd length", point_change(-1, time_from_start_ns=10**6 * NS_PER_S), Code.MALFORMED_TRAJECTORY,
     "lasts 1e\\+06 s, longer than max_duration 120 s"),
    ("short positions", point_change(4, positions=[0.0] * 13), Code.MALFORMED_TRAJECTORY,
     "points\\[4\\].positions: expected 14 values \\(one per joint\\), got 13"),
    ("no velocities", point_change(2, velocities=[]), Code.MALFORMED_TRAJECTORY,
     "points\\[2\\].velocities: expected 14 values"),
    ("some accelerations", point_change(2, accelerations=[0.0] * 14), Code.MALFORMED_TRAJECTORY,
     "points\\[0\\].accelerations: expected 14 values .*got 0"),
    ("effort", point_change(1, effort=[1.0] * 14), Code.MALFORMED_TRAJECTORY, "points\\[1\\].effort: must be empty"),
    ("NaN", point_change(5, positions=[*([0.1] * 9), float("nan"), *([0.1] * 4)]), Code.MALFORMED_TRAJECTORY,
     "points\\[5\\].positions\\[9\\] \\(fr_joint3\\): non-finite value nan"),
    ("image state without a joint", lambda p: dataclasses.replace(
        p, state_at_image=JointStateInput(NAMES[1:], list(START[1:]), [], 0)), Code.MALFORMED_TRAJECTORY,
     "joint_state_at_image: joints missing: 'fl_joint1'"),
    ("old image", lambda p: dataclasses.replace(p, image_stamp_ns=T0 - 601 * NS_PER_S), Code.IMAGE_TOO_OLD,
     "image is 601 s old .*max_image_age 600 s"),
    ("unstamped image", lambda p: dataclasses.replace(p, image_stamp_ns=0), Code.IMAGE_TOO_OLD,
     "header.stamp: zero"),
    ("image from the future", lambda p: dataclasses.replace(p, image_stamp_ns=T0 + NS_PER_S), Code.IMAGE_TOO_OLD,
     "stamped 1 s ahead of the node clock"),
]


@pytest.mark.parametrize(("change", "code", "reason"), [case[1:] for case in BAD_PLANS],
                         ids=[case[0] for case in BAD_PLANS])
def test_each_bad_plan_is_refused_with_its_code_and_a_reason_naming_the_fault(change, code, reason):
    verdict = check(change(plan(motion())))
    assert (verdict.code, verdict.trajectory) == (code, None)
    assert re.search(reason, verdict.reason), verdict.reason


def test_a_moved_robot_a_teleporting_start_and_a_speeding_motion_are_refused():
    trajectory = motion()
    moved = START + np.where(np.arange(14) == 8, 0.05, 0.0)
    verdict = check(plan(trajectory, at_image=moved), measured=moved)  # at_image matches; point 0 does not
    assert verdict.code is Code.START_OFFSET and "fr_joint2 0.5 vs measured 0.55" in verdict.reason
    verdict = check(plan(trajectory), measured=moved)
    assert verdict.code is Code.ROBOT_MOVED
    assert "joint_state_at_image differs from the measured pose by more than moved_tolerance 0.01: fr_joint2 0.5 " \
           "vs measured 0.55 (difference -0.05)" in verdict.reason
    fast = Trajectory(NAMES, trajectory.times / 3.0, trajectory.positions, trajectory.velocities * 3.0)
    verdict = check(plan(fast))
    assert verdict.code is Code.LIMIT_VIOLATION
    assert re.search("bounded at every instant.*fl_joint1 acceleration -?[0-9.]+ \\(limit 5\\)", verdict.reason)


def test_joint_states_must_be_fresh_complete_finite_and_within_the_limits():
    checker = PlanChecker(CONFIG, EMBODIMENT, CONTROLLERS)
    good = plan(motion())

    def verdict(state: JointStateInput, now_ns: int = T0) -> PlanVerdict:
        return checker.check(good, checker.read_joint_state(state), now_ns)

    assert checker.check(good, None, T0).code is Code.JOINT_STATES_STALE
    stale = verdict(joints(START, T0 - 600 * MS))
    assert stale.code is Code.JOINT_STATES_STALE and "0.6 s old on the node clock" in stale.reason
    for state, reason in [
        (JointStateInput(NAMES[:13], list(START[:13]), [0.0] * 13, T0), "joints missing: 'right_gripper'"),
        (joints(np.where(np.arange(14) == 2, np.nan, START), T0), "non-finite position nan of fl_joint3"),
        (joints(START, T0, np.full(14, np.inf)), "non-finite velocity inf of fl_joint1"),
        (JointStateInput(NAMES, list(START), [], T0), "0 velocity values for 14 names"),
        (joints(np.where(np.arange(14) == 1, -0.2, START), T0), "fl_joint2 -0.2 not in \\[-0.12, 3.262\\]"),
        (joints(START, T0 + NS_PER_S), "stamped 1 s ahead of the node clock"),
    ]:
        refused = verdict(state)
        assert refused.code is Code.JOINT_STATES_IMPLAUSIBLE and re.search(reason, refused.reason), refused.reason
    extra = JointStateInput([*NAMES, "camera_tilt"], [*START, 9.0], [0.0] * 15, T0)
    assert verdict(extra).accepted  # other joints of the robot are not ours to judge


def test_a_robot_measured_just_beyond_a_stop_gets_plans_that_start_on_the_stop():
    """The tolerance band is for measurements: the gate's plan starts on the stop, and so does what is sent."""
    measured = START.copy()
    measured[1] = -0.015  # fl_joint2, lower stop 0.0, within the 0.02 band
    start = np.clip(measured, *EMBODIMENT.position_bounds(with_tolerance=False))
    trajectory = motion(start=start)
    made = plan(trajectory, at_image=measured)
    checker = PlanChecker(CONFIG, EMBODIMENT, CONTROLLERS)
    verdict = checker.check(made, checker.read_joint_state(joints(measured, T0)), T0)
    assert verdict.accepted, verdict.reason
    assert verdict.trajectory.positions[0, 1] == 0.0 and (verdict.trajectory.positions[:, 1] >= 0.0).all()


def test_a_gripper_resting_on_its_stop_is_not_pushed_past_it_by_a_rounding_level_offset():
    """The gate's plan holds the open gripper at 1 - 6e-12; the bridge measures 1 - 1e-15 (seen in bench-loop)."""
    planned_start = START.copy()
    planned_start[6] = 1.0 - 6e-12
    trajectory = motion(start=planned_start, move=np.where(np.arange(14) == 6, 0.0, MOVE))
    positions = trajectory.positions.copy()
    positions[:, 6] = np.where(positions[:, 6] > 1.0 - 1e-11, 1.0, positions[:, 6])  # on the stop after point 0
    positions[0, 6] = 1.0 - 6e-12
    trajectory = Trajectory(NAMES, trajectory.times, positions, trajectory.velocities)
    measured = planned_start.copy()
    measured[6] = 1.0 - 1e-15
    checker = PlanChecker(CONFIG, EMBODIMENT, CONTROLLERS)
    verdict = checker.check(plan(trajectory, at_image=measured), checker.read_joint_state(joints(measured, T0)), T0)
    assert verdict.accepted, verdict.reason
    assert verdict.trajectory.positions[:, 6].max() <= 1.0


def test_commands_split_the_motion_per_arm_with_one_stamp_and_grippers_optionally_in_metres():
    verdict = check(plan(motion()))
    split = PlanChecker(CONFIG, EMBODIMENT, CONTROLLERS).commands(verdict.trajectory)
    assert [(c.controller, c.joint_names, c.is_stop) for c in split] == [
        ("left_arm_controller", NAMES[:7], False), ("right_arm_controller", NAMES[7:], False)]
    np.testing.assert_array_equal(np.hstack([c.positions for c in split]), verdict.trajectory.positions)
    np.testing.assert_array_equal(np.hstack([c.velocities for c in split]), verdict.trajectory.velocities)
    metres = dataclasses.replace(CONFIG, gripper_in_metres=True, controller_layout="combined")
    embodiment, controllers = load_bridge_setup(metres)
    (combined,) = PlanChecker(metres, embodiment, controllers).commands(verdict.trajectory)
    gripper = NAMES.index("right_gripper")
    np.testing.assert_allclose(combined.positions[:, gripper], verdict.trajectory.positions[:, gripper] * 0.0475)
    np.testing.assert_allclose(combined.velocities[:, gripper], verdict.trajectory.velocities[:, gripper] * 0.0475)
    np.testing.assert_array_equal(combined.positions[:, :6], verdict.trajectory.positions[:, :6])


def test_a_good_plan_starts_at_once_on_a_still_robot_and_succeeds_when_it_has_settled():
    bridge, output, robot, clock = still_bridge()
    trajectory = motion()
    clock.now_ns = T0
    accepted = bridge.submit(plan(trajectory))
    assert accepted.state is State.ACCEPTED and "waiting for standstill" in accepted.reason
    (commands,) = output.sends()
    assert len(commands) == 2 and output.stamps == [T0 + 100 * MS]  # now + start_delay, one stamp for both arms
    end = robot.follow(T0 + 100 * MS, trajectory, T0 + 3 * NS_PER_S, T0)
    assert output.statuses()[:2] == [("plan", State.ACCEPTED, Code.NONE), ("plan", State.EXECUTING, Code.NONE)]
    assert output.statuses()[-1] == ("plan", State.SUCCEEDED, Code.NONE)
    # The end of the motion (1.1 s after T0) plus the settle time, within one monitoring step.
    assert T0 + 1200 * MS <= end <= T0 + 1220 * MS
    progress = [s.progress for kind, s in output.items if kind == "status" and s.state is State.EXECUTING]
    assert len(progress) >= 5 and progress == sorted(progress) and output.last().progress == 1.0
    assert len(output.sends()) == 1 and not bridge.busy


def test_a_plan_waits_for_standstill_and_is_refused_when_the_robot_keeps_moving():
    bridge, output, clock = make_bridge()
    robot = Robot(bridge, clock)
    moving = np.full(14, 0.05)
    for stamp in range(T0 - NS_PER_S, T0 + 1, 10 * MS):
        bridge.joint_state(joints(START, stamp, moving))
    clock.now_ns = T0
    bridge.submit(plan(motion()))
    for stamp in range(T0, T0 + 5 * NS_PER_S + 1, 20 * MS):
        bridge.joint_state(joints(START, stamp, moving))
        clock.now_ns = stamp
        bridge.tick()
    assert bridge.busy and output.sends() == []
    clock.now_ns = T0 + 5 * NS_PER_S + 30 * MS
    bridge.tick()
    assert output.statuses()[-1] == ("plan", State.REJECTED, Code.NOT_STANDSTILL)
    assert "fl_joint1 moving at 0.05" in output.last().reason and output.sends() == []
    # Still for standstill_window: the next plan starts (at the first tick after the window).
    robot.still(T0 + 6 * NS_PER_S, T0 + 6 * NS_PER_S)
    clock.now_ns = T0 + 6 * NS_PER_S
    bridge.submit(plan(motion(), "next"))
    robot.still(T0 + 6 * NS_PER_S, T0 + 6 * NS_PER_S + 90 * MS)
    clock.now_ns = T0 + 6 * NS_PER_S + 90 * MS
    bridge.tick()
    assert len(output.sends()) == 0
    robot.still(T0 + 6 * NS_PER_S + 100 * MS, T0 + 6 * NS_PER_S + 100 * MS)
    clock.now_ns = T0 + 6 * NS_PER_S + 100 * MS
    bridge.tick()
    assert len(output.sends()) == 1 and output.statuses()[-1] == ("next", State.EXECUTING, Code.NONE)


def test_the_plan_is_checked_again_at_the_start_with_the_pose_measured_then():
    bridge, output, clock = make_bridge()
    Robot(bridge, clock).still(T0 - NS_PER_S, T0, step_ns=10 * MS)
    bridge.joint_state(joints(START, T0, np.full(14, 0.2)))  # moving when the plan arrives
    clock.now_ns = T0
    bridge.submit(plan(motion()))
    Robot(bridge, clock, START + 0.1).still(T0 + 10 * MS, T0 + 300 * MS)  # comes to rest elsewhere
    clock.now_ns = T0 + 300 * MS
    bridge.tick()
    assert output.statuses()[-1] == ("plan", State.REJECTED, Code.ROBOT_MOVED)
    assert output.last().reason.startswith("at start: the robot moved since the plan's image")
    assert output.sends() == []


@pytest.mark.parametrize(("disturbance", "code", "reason"), [
    ("lag", Code.TRACKING_ERROR,
     "fl_joint1 measured .* \\|error\\| 0.2 > tolerance 0.15; every controller stops \\(braking"),
    ("silence", Code.JOINT_STATES_STALE, "while executing: newest joint_states is 0.5[0-9]* s old"),
    ("nan", Code.JOINT_STATES_IMPLAUSIBLE, "while executing: joint_states: non-finite position nan of fr_joint6"),
    ("stuck", Code.TRACKING_ERROR, "goal not reached within goal_time 0.5 s after the end: fl_joint[1-6] at "),
])
def test_execution_faults_abort_the_plan_and_hold_both_arms(disturbance, code, reason):
    bridge, output, robot, clock = still_bridge()
    trajectory = motion()
    clock.now_ns = T0
    bridge.submit(plan(trajectory))
    now = robot.follow(T0 + 100 * MS, trajectory, T0 + 500 * MS, T0)
    if disturbance == "lag":
        robot.follow(T0 + 100 * MS, trajectory, T0 + 600 * MS, now, offset=np.where(np.arange(14) == 0, 0.2, 0.0))
    elif disturbance == "silence":
        for stamp in range(now, now + NS_PER_S, 10 * MS):
            clock.now_ns = stamp
            bridge.tick()
    elif disturbance == "nan":
        bridge.joint_state(joints(np.where(np.arange(14) == 12, np.nan, robot.pose), now + 10 * MS))
        clock.now_ns = now + 10 * MS
        bridge.tick()
    else:  # stops 0.05 rad short of the goal: tracked, but not within goal_tolerance
        short = Trajectory(NAMES, trajectory.times, trajectory.positions - 0.05 * (trajectory.positions != START),
                           trajectory.velocities)
        robot.follow(T0 + 100 * MS, short, T0 + 3 * NS_PER_S, now)
    assert output.statuses()[-1] == ("plan", State.ABORTED, code)
    assert re.search(reason, output.last().reason), output.last().reason
    first, stops = output.sends()
    assert not any(c.is_stop for c in first) and [c.is_stop for c in stops] == [True, True]
    assert output.last().reason.endswith(")") and "every controller stops (braking" in output.last().reason
    assert not bridge.busy


class CountingChecker(PlanChecker):
    """Counts the (expensive) plan checks."""

    checks = 0

    def check(self, plan_input, reading, now_ns):
        CountingChecker.checks += 1
        return super().check(plan_input, reading, now_ns)


def test_one_plan_at_a_time_and_busy_is_decided_before_any_check():
    """A 10,000-point plan arriving while another runs must not hold up the running one's monitoring."""
    bridge, output, clock = make_bridge(checker_type=CountingChecker)
    Robot(bridge, clock).still(T0 - NS_PER_S, T0)
    clock.now_ns = T0
    bridge.submit(plan(motion(), "first"))
    checks = CountingChecker.checks
    clock.now_ns = T0 + 10 * MS
    busy = bridge.submit(plan(motion(), "second"))
    assert (busy.state, busy.code) == (State.REJECTED, Code.BUSY) and "plan 'first' is running" in busy.reason
    clock.now_ns = T0 + 20 * MS
    malformed = bridge.submit(dataclasses.replace(plan(motion(), "third"), joint_names=NAMES[::-1]))
    assert malformed.code is Code.BUSY and CountingChecker.checks == checks  # neither was checked
    assert len(output.sends()) == 1


def test_a_closed_bridge_refuses_plans_unchecked_and_close_stops_a_plan_between_check_and_send():
    bridge, output, clock = make_bridge(checker_type=CountingChecker)
    Robot(bridge, clock).still(T0 - NS_PER_S, T0)
    clock.now_ns = T0
    bridge.close("shutting down")
    checks = CountingChecker.checks
    refused = bridge.submit(plan(motion()))
    assert (refused.code, refused.reason) == (Code.CANCELLED, "controller_bridge is not active")
    assert CountingChecker.checks == checks and output.sends() == []
    bridge, output, worker = submit_held_in_its_check()
    assert not bridge.close("shutting down")  # mid-check: nothing was sent yet, so nothing to stop
    BlockingChecker.release.set()
    worker.join(10)
    assert output.statuses() == [("plan", State.REJECTED, Code.CANCELLED)] and output.sends() == []


class FailingOutput(Recorder):
    """Publishes the first controller's message, then fails: one arm has its command, the other not."""

    def publish(self, prepared, stamp_ns: int) -> None:
        if not any(command.is_stop for command in prepared):
            super().publish(prepared[:1], stamp_ns)
            raise RuntimeError("publisher gone")
        super().publish(prepared, stamp_ns)


def test_a_failure_while_sending_a_plan_stops_every_controller():
    embodiment, controllers = load_bridge_setup(CONFIG)
    output, clock = FailingOutput(), ManualClock()
    bridge = ControllerBridge(PlanChecker(CONFIG, embodiment, controllers), output, clock)
    bridge.open()
    Robot(bridge, clock).still(T0 - NS_PER_S, T0)
    clock.now_ns = T0
    bridge.submit(plan(motion()))
    assert output.statuses()[-1] == ("plan", State.ABORTED, Code.INTERNAL_ERROR)
    assert "sending the plan failed: RuntimeError('publisher gone')" in output.last().reason
    (half, stops) = output.sends()
    assert [c.controller for c in half] == ["left_arm_controller"]
    assert [(c.controller, c.is_stop) for c in stops] == [("left_arm_controller", True), ("right_arm_controller", True)]
    np.testing.assert_allclose(np.hstack([c.positions[-1] for c in stops]), START, atol=1e-12)  # held where it stood
    assert not bridge.busy


def test_the_estop_latches_holds_once_and_rearming_needs_it_released():
    bridge, output, robot, clock = still_bridge()
    trajectory = motion()
    clock.now_ns = T0
    bridge.submit(plan(trajectory, "moving"))
    robot.follow(T0 + 100 * MS, trajectory, T0 + 400 * MS, T0)
    clock.now_ns = T0 + 400 * MS
    bridge.estop(True)
    assert output.statuses()[-1] == ("moving", State.ABORTED, Code.ESTOP_LATCHED)
    assert [[c.is_stop for c in commands] for commands in output.sends()] == [[False, False], [True, True]]
    clock.now_ns = T0 + 410 * MS
    bridge.estop(True)  # still pressed: nothing more is sent
    robot.still(T0 + 400 * MS, T0 + 2 * NS_PER_S)
    resumed = Trajectory(NAMES, trajectory.times, trajectory.positions - START + robot.pose, trajectory.velocities)
    clock.now_ns = T0 + 2 * NS_PER_S
    refused = bridge.submit(plan(resumed, "while latched", at_image=robot.pose))
    assert refused.code is Code.ESTOP_LATCHED and len(output.sends()) == 2
    assert bridge.rearm() == (False, "eva/estop is still true: release the e-stop before re-arming")
    bridge.estop(False)
    assert bridge.latched and bridge.rearm() == (True, "re-armed: plans are accepted again")
    assert bridge.rearm() == (True, "the e-stop is not latched; nothing to re-arm")
    bridge.submit(plan(resumed, "after rearm", at_image=robot.pose))
    assert output.statuses()[-1] == ("after rearm", State.EXECUTING, Code.NONE) and len(output.sends()) == 3


def test_the_stop_brakes_from_the_state_commanded_at_its_stamp():
    """The stop continues what the controllers were commanded: no step in position, velocity or acceleration."""
    bridge, output, robot, clock = still_bridge()
    trajectory = motion()
    clock.now_ns = T0
    bridge.submit(plan(trajectory))
    sent = output.sends()[0]
    robot.follow(output.stamps[0], trajectory, T0 + 500 * MS, T0)
    clock.now_ns = T0 + 500 * MS
    bridge.estop(True)
    stops, stamp = output.sends()[-1], output.stamps[-1]
    assert stamp == clock.now_ns + round(CONFIG.stop_lead * NS_PER_S)
    executed = Trajectory(NAMES, sent[0].times, np.hstack([c.positions for c in sent]),
                          np.hstack([c.velocities for c in sent]))
    commanded = sample(executed, (stamp - output.stamps[0]) / NS_PER_S)
    assert np.abs(commanded[1]).max() > 0.1  # the arms were moving
    for got, want in zip((np.hstack([c.positions[0] for c in stops]), np.hstack([c.velocities[0] for c in stops]),
                          np.hstack([c.accelerations[0] for c in stops])), commanded, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-9)
    np.testing.assert_array_equal(np.hstack([c.velocities[-1] for c in stops]), 0.0)
    stop = Trajectory(NAMES, stops[0].times, np.hstack([c.positions for c in stops]),
                      np.hstack([c.velocities for c in stops]), np.hstack([c.accelerations for c in stops]))
    remaining = np.abs(trajectory.positions[-1] - stop.positions[-1])
    assert remaining.max() > 0.05  # stopped short of the plan's end


def test_a_controller_that_refuses_or_gives_up_the_plan_stops_every_controller():
    """controller_interface action: a rejected or aborted goal on either arm ends the plan and stops both."""
    bridge, output, robot, clock = still_bridge()
    trajectory = motion()
    clock.now_ns = T0
    bridge.submit(plan(trajectory))
    robot.follow(output.stamps[0], trajectory, T0 + 400 * MS, T0)
    bridge.controller_failed("right_arm_controller", Code.TRACKING_ERROR,
                             "the controller aborted the plan's goal (error_code -4: Aborted due to path tolerance "
                             "violation)")
    assert output.statuses()[-1] == ("plan", State.ABORTED, Code.TRACKING_ERROR)
    assert output.last().reason.startswith("right_arm_controller: the controller aborted the plan's goal")
    assert [[c.is_stop for c in commands] for commands in output.sends()] == [[False, False], [True, True]]
    bridge.controller_failed("left_arm_controller", Code.INTERNAL_ERROR, "late news of the old plan")
    assert len(output.sends()) == 2 and not bridge.busy  # nothing executing: nothing to stop


class SteadyClock:
    """A steady clock the tests set, in seconds."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_a_silent_estop_source_latches_when_a_heartbeat_is_required():
    config = dataclasses.replace(CONFIG, estop_heartbeat_timeout=0.5)
    embodiment, controllers = load_bridge_setup(config)
    output, clock, steady = Recorder(), ManualClock(), SteadyClock()
    bridge = ControllerBridge(PlanChecker(config, embodiment, controllers), output, clock, steady)
    bridge.open()
    Robot(bridge, clock).still(T0 - NS_PER_S, T0)
    clock.now_ns = T0
    for beat in range(5):  # false every 0.4 s: alive
        steady.now_s = 0.4 * beat
        bridge.estop(False)
        bridge.check_estop_heartbeat()
    assert not bridge.latched
    steady.now_s = 1.6 + 0.51
    bridge.check_estop_heartbeat()
    assert bridge.latched
    assert bridge.diagnostics().message.startswith("e-stop latched (no eva/estop message for 0.51 s "
                                                   "(estop_heartbeat_timeout 0.5 s))")
    assert [[c.is_stop for c in commands] for commands in output.sends()] == [[True, True]]  # a hold where it stands
    ok, message = bridge.rearm()
    assert not ok and "the e-stop source must be alive before re-arming" in message
    bridge.estop(False)
    assert bridge.rearm() == (True, "re-armed: plans are accepted again")
    silent = ControllerBridge(PlanChecker(CONFIG, embodiment, controllers), Recorder(), clock, steady)
    steady.now_s += 100.0
    silent.check_estop_heartbeat()
    assert not silent.latched  # no heartbeat configured: silence is not a fault


def test_an_estop_while_idle_or_waiting_holds_without_commanding_a_plan():
    bridge, output, clock = make_bridge()
    bridge.joint_state(joints(START, T0, np.full(14, 0.5)))  # moving: the plan waits
    clock.now_ns = T0
    bridge.submit(plan(motion()))
    clock.now_ns = T0 + 10 * MS
    bridge.estop(True)
    assert output.statuses()[-1] == ("plan", State.REJECTED, Code.ESTOP_LATCHED)
    assert [[c.is_stop for c in commands] for commands in output.sends()] == [[True, True]]


class BlockingChecker(PlanChecker):
    """Holds a plan check until released, so that an e-stop can arrive in the middle of it."""

    checking = threading.Event()
    release = threading.Event()

    def check(self, plan_input, reading, now_ns):
        BlockingChecker.checking.set()
        assert BlockingChecker.release.wait(10)
        return super().check(plan_input, reading, now_ns)


    @staticmethod
    def reset() -> None:
        BlockingChecker.checking.clear()
        BlockingChecker.release.clear()


def submit_held_in_its_check():
    """A still robot's bridge and a thread whose plan submission waits inside the plan check until released."""
    BlockingChecker.reset()
    bridge, output, clock = make_bridge(checker_type=BlockingChecker)
    Robot(bridge, clock).still(T0 - NS_PER_S, T0)
    clock.now_ns = T0
    worker = threading.Thread(target=bridge.submit, args=(plan(motion()),))
    worker.start()
    assert BlockingChecker.checking.wait(10)
    return bridge, output, worker


def test_an_estop_during_a_plan_check_is_not_overtaken_by_that_plan():
    bridge, output, worker = submit_held_in_its_check()
    bridge.estop(True)  # returns at once: the check holds no lock the e-stop needs
    BlockingChecker.release.set()
    worker.join(10)
    assert output.statuses() == [("plan", State.REJECTED, Code.ESTOP_LATCHED)]
    assert [[c.is_stop for c in commands] for commands in output.sends()] == [[True, True]]


def test_joint_states_that_arrive_during_a_long_check_are_judged_at_the_time_of_the_decision():
    """The monitor waits for a plan check while newer joint_states arrive: they are not from the future."""
    BlockingChecker.reset()
    bridge, output, clock = make_bridge(checker_type=BlockingChecker)
    robot = Robot(bridge, clock)
    robot.still(T0 - NS_PER_S, T0)
    clock.now_ns = T0
    checking = threading.Thread(target=bridge.submit, args=(plan(motion()),))
    checking.start()
    assert BlockingChecker.checking.wait(10)
    monitor = threading.Thread(target=bridge.tick)  # waits for the check to end
    monitor.start()
    robot.still(T0 + 10 * MS, T0 + 500 * MS)
    clock.now_ns = T0 + 500 * MS
    BlockingChecker.release.set()
    checking.join(10)
    monitor.join(10)
    assert output.statuses() == [("plan", State.ACCEPTED, Code.NONE), ("plan", State.EXECUTING, Code.NONE)]
    assert output.stamps == [T0 + 600 * MS]  # start_delay from the decision


class BrokenChecker(PlanChecker):
    def check(self, plan_input, reading, now_ns):
        raise RuntimeError("bug")


def test_a_failing_check_costs_one_plan_not_the_bridge():
    bridge, output, clock = make_bridge(checker_type=BrokenChecker)
    clock.now_ns = T0
    status = bridge.submit(plan(motion()))
    assert (status.state, status.code) == (State.REJECTED, Code.INTERNAL_ERROR)
    assert status.reason == "checking the plan failed: RuntimeError('bug')" and output.sends() == []


def test_stop_holds_an_executing_plan_and_diagnostics_tell_the_state():
    bridge, output, robot, clock = still_bridge()
    clock.now_ns = T0
    assert bridge.diagnostics().level is Level.OK and bridge.diagnostics().message == "idle"
    trajectory = motion()
    bridge.submit(plan(trajectory))
    robot.follow(T0 + 100 * MS, trajectory, T0 + 600 * MS, T0)
    clock.now_ns = T0 + 600 * MS
    health = bridge.diagnostics()
    assert health.message == "executing plan 'plan' (50%)" and health.values["count.accepted"] == "1"
    assert bridge.close("controller_bridge deactivated")
    assert output.statuses()[-1] == ("plan", State.ABORTED, Code.CANCELLED)
    assert [c.is_stop for c in output.sends()[-1]] == [True, True]
    clock.now_ns = T0 + 700 * MS
    assert not bridge.close("again")  # nothing running: nothing sent
    assert len(output.sends()) == 2
    clock.now_ns = T0 + 2 * NS_PER_S
    assert bridge.diagnostics().level is Level.WARN  # joint_states now stale
    bridge.estop(True)
    assert bridge.diagnostics().level is Level.ERROR
