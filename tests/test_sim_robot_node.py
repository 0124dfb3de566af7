"""sim_robot as a real process over real DDS: /clock, joint states, the head camera, JTC topic interfaces.

The test process plays the controller bridge: it sends JointTrajectory messages and watches
``joint_states`` (stamped with sim time) and ``/clock``. Times in assertions are sim times read
from the robot's own messages, never wall-clock sleeps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from eva_idm.embodiment import load_embodiment
from eva_sim.processes import wait_until
from eva_sim.sim_config import HOME_POSE

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "sim_robot.yaml"
CONTROLLERS = ROOT / "config" / "aloha_controllers.yaml"
JOINTS = load_embodiment("aloha_agilex").joint_names
LEFT, RIGHT = slice(0, 7), slice(7, 14)
HOME = np.array(HOME_POSE)
TIMEOUT = 60.0


def start_sim(start_node, *overrides: str):
    """sim_robot from config/sim_robot.yaml with a small camera and the given ``name:=value`` overrides."""
    settings = [f"controllers_file:={CONTROLLERS}", "camera_height:=48", "camera_width:=64", *overrides]
    return start_node("eva_sim", "sim_robot", "--ros-args", "--params-file", str(CONFIG),
                      *[part for setting in settings for part in ("-p", setting)])


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def trajectory(names, points, stamp: float = 0.0):
    """A JointTrajectory of ``(time_from_start, positions[, velocities])`` points."""
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    message = JointTrajectory(joint_names=list(names))
    nanoseconds = round(stamp * 1e9)
    message.header.stamp.sec, message.header.stamp.nanosec = divmod(nanoseconds, 1_000_000_000)
    for time_from_start, *fields in points:
        point = JointTrajectoryPoint(positions=[float(value) for value in fields[0]])
        if len(fields) > 1:
            point.velocities = [float(value) for value in fields[1]]
        point.time_from_start.sec, point.time_from_start.nanosec = divmod(round(time_from_start * 1e9), 1_000_000_000)
        message.points.append(point)
    return message


class Robot:
    """The test peer's view of the sim: clock, joint states and images as they arrive; trajectory publishers."""

    def __init__(self, ros_peer, process):
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState

        self.peer, self.process = ros_peer, process
        self.clock: float | None = None
        self.states: list[tuple[float, np.ndarray, np.ndarray, list[str]]] = []
        self.images: list[Image] = []
        node = ros_peer.node
        node.create_subscription(Clock, "/clock", self._on_clock,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        node.create_subscription(JointState, "joint_states", self._on_state, qos_profile_sensor_data)
        node.create_subscription(Image, "head_camera/image_raw", self.images.append, qos_profile_sensor_data)
        self.spin_until(lambda: self.states, "the first joint_states")

    def _on_clock(self, message) -> None:
        self.clock = seconds(message.clock)

    def _on_state(self, message) -> None:
        self.states.append((seconds(message.header.stamp), np.array(message.position), np.array(message.velocity),
                            list(message.name)))

    def spin_until(self, predicate, what: str) -> None:
        def alive_and_done() -> bool:
            assert self.process.poll() is None, f"sim_robot exited:\n{self.process.log()}"
            return bool(predicate())

        self.peer.spin_until(alive_and_done, TIMEOUT, what)

    def publisher(self, controller: str):
        """A reliable publisher on ``controller``'s topic, once sim_robot's subscription is matched."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from trajectory_msgs.msg import JointTrajectory

        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        publisher = self.peer.node.create_publisher(JointTrajectory, f"{controller}/joint_trajectory", qos)
        self.spin_until(lambda: publisher.get_subscription_count() > 0, f"sim_robot to subscribe to {controller}")
        return publisher

    def latest(self) -> np.ndarray:
        return self.states[-1][1]

    def states_since(self, start: float) -> list[tuple[float, np.ndarray]]:
        return [(stamp, positions) for stamp, positions, _, _ in self.states if stamp >= start]

    def wait_for_sim_time(self, time: float) -> None:
        self.spin_until(lambda: self.states[-1][0] >= time, f"joint_states stamped at sim time {time:.2f} s")

    def wait_at(self, target: np.ndarray, what: str, tolerance: float = 1e-3) -> None:
        self.spin_until(lambda: np.abs(self.latest() - target).max() < tolerance, what)


def test_split_layout_clock_state_camera_and_the_trajectory_interface(start_node, ros_peer):
    robot = Robot(ros_peer, start_sim(start_node, "tracking_time_constant:=0.1"))
    first_stamp, positions, velocities, names = robot.states[0]
    assert names == list(JOINTS)
    assert first_stamp >= 1000.0
    np.testing.assert_array_equal(positions, HOME)
    np.testing.assert_array_equal(velocities, 0.0)
    robot.spin_until(lambda: robot.clock is not None and robot.clock > first_stamp + 0.5, "/clock to advance 0.5 s")
    robot.spin_until(lambda: robot.images, "a head camera image")
    image = robot.images[-1]
    assert (image.height, image.width, image.encoding, image.header.frame_id) == (48, 64, "rgb8", "head_camera")
    pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(48, 64, 3)
    assert pixels.std() > 5.0  # a scene, not a blank frame
    assert seconds(image.header.stamp) >= 1000.0

    # The bridge's form: a future stamp, point 0 = the measured pose, positions and velocities.
    left = robot.publisher("left_arm_controller")
    target = np.array([0.4, 0.6, 0.5, 0.2, -0.3, 0.4, 0.3])
    start = robot.states[-1][0] + 0.3
    rest = np.zeros(7)
    left.publish(trajectory(JOINTS[LEFT], [(0.0, HOME[LEFT], rest), (0.6, target, rest)], stamp=start))
    robot.wait_for_sim_time(start + 0.6)
    end_positions = robot.latest()[LEFT]
    assert np.abs(end_positions - target).max() > 0.02, "the measured arm should lag the command at its end"
    robot.wait_at(np.concatenate([target, HOME[RIGHT]]), "the left arm at its target")
    history = robot.states_since(first_stamp)
    assert all(np.array_equal(positions[RIGHT], HOME[RIGHT]) for _, positions in history), "the right arm moved"
    # At the tick on the stamp itself, float time can put the sample a femtosecond into the motion.
    early = [(stamp, np.abs(positions - HOME).max()) for stamp, positions in history if stamp <= start]
    assert all(moved < 1e-12 for _, moved in early), f"the arm moved before the trajectory's stamp: {early[-3:]}"
    assert "left_arm_controller/joint_trajectory: accepted 2 point(s) (cubic)" in robot.process.log()

    # An empty message is no stop: rejected with JTC's reason, and the motion goes on to its end.
    left.publish(trajectory(JOINTS[LEFT], [(1.5, HOME[LEFT])]))
    robot.spin_until(lambda: np.abs(robot.latest()[LEFT] - target).max() > 0.1, "the left arm to move back")
    left.publish(trajectory(JOINTS[LEFT], []))
    robot.spin_until(lambda: "rejected, the previous command goes on: Empty trajectory received." in
                     robot.process.log(), "the rejection")
    robot.spin_until(lambda: np.abs(robot.latest()[LEFT] - HOME[LEFT]).max() < 1e-3, "the left arm to arrive home")

    # Malformed messages are rejected with their reason; the node runs on and takes the next good one.
    bad = [
        (trajectory([*JOINTS[LEFT][:6], "nope"], [(0.5, target)]), "['nope'] are not joints of left_arm_controller"),
        (trajectory(JOINTS[LEFT], [(0.5, target[:5])]), "points[0].positions: 5 values for 7 joint names"),
        (trajectory(JOINTS[LEFT], [(0.5, [math.nan, *target[1:]])]), "non-finite value nan for fl_joint1"),
        (trajectory(JOINTS[LEFT], [(0.5, target), (0.5, target)]), "times must strictly increase"),
        (trajectory(JOINTS[LEFT], [(0.5, target)], stamp=1.0), "header.stamp: the trajectory ends at"),
        (trajectory(JOINTS[:14], [(0.5, HOME)]), "['fr_joint1', 'fr_joint2'"),
    ]
    for message, _ in bad:
        left.publish(message)
    left.publish(trajectory(JOINTS[LEFT], [(0.3, HOME[LEFT])]))
    # The arm is home already: wait for the log of the last message (the second 1-point one), not for the arm.
    robot.spin_until(lambda: robot.process.log().count("accepted 1 point(s)") == 2, "the message after the malformed")
    robot.wait_at(HOME, "the left arm back home after the malformed messages")
    log = robot.process.log()
    for _, reason in bad:
        assert "rejected, the previous command goes on: " in log and reason in log, reason


def test_combined_layout_drives_all_joints_through_one_controller(start_node, ros_peer):
    robot = Robot(ros_peer, start_sim(start_node, "controller_layout:=combined", "camera_rate:=0.0",
                                      "tracking_time_constant:=0.0"))
    both = robot.publisher("bimanual_controller")
    from rclpy.qos import QoSProfile
    from trajectory_msgs.msg import JointTrajectory

    split_topic = robot.peer.node.create_publisher(JointTrajectory, "left_arm_controller/joint_trajectory",
                                                   QoSProfile(depth=10))
    target = HOME.copy()
    target[[0, 1, 7, 8, 13]] = [0.3, 0.4, -0.3, 0.4, 0.0]
    both.publish(trajectory(JOINTS, [(0.4, target)]))
    robot.wait_at(target, "both arms at their targets", tolerance=1e-9)
    assert split_topic.get_subscription_count() == 0
    assert not robot.images  # camera_rate 0: no rendering


@pytest.mark.parametrize(("override", "reason"), [
    ("controller_layout:=both", "controller_layout: expected one of ['split', 'combined'], got 'both'"),
    ("use_sim_time:=true", "use_sim_time: must be false"),
])
def test_bad_parameters_stop_the_node_with_the_reason(start_node, override, reason):
    process = start_sim(start_node, override)
    assert wait_until(lambda: process.poll() is not None, TIMEOUT), f"sim_robot did not exit:\n{process.log()}"
    assert process.poll() == 1
    assert reason in process.log()


class Goals:
    """A FollowJointTrajectory client on ``controller``'s action, as the bridge's ``action`` interface uses it."""

    def __init__(self, robot: Robot, controller: str):
        from rclpy.action import ActionClient

        from control_msgs.action import FollowJointTrajectory

        self.robot, self.action = robot, FollowJointTrajectory
        self.feedback = []
        self.client = ActionClient(robot.peer.node, FollowJointTrajectory, f"{controller}/follow_joint_trajectory")
        robot.spin_until(self.client.server_is_ready, f"the {controller} action server")
        # A response sent right after discovery can be lost (see conftest.LifecycleClient): let it settle.
        settled = time.monotonic() + 1.0
        robot.spin_until(lambda: time.monotonic() > settled, "action discovery to settle")

    def send(self, message):
        """Send a goal with ``message`` as its trajectory; the client goal handle (``accepted`` says which)."""
        future = self.client.send_goal_async(self.action.Goal(trajectory=message),
                                             feedback_callback=lambda feedback: self.feedback.append(feedback.feedback))
        self.robot.spin_until(future.done, "the goal response")
        return future.result()

    def result(self, handle):
        """The goal's GetResult response (``status`` and ``result``) once it ends."""
        future = handle.get_result_async()
        self.robot.spin_until(future.done, "the goal's result")
        return future.result()


def test_follow_joint_trajectory_goals_move_the_arm_and_bad_goals_are_rejected(start_node, ros_peer):
    from action_msgs.msg import GoalStatus

    from control_msgs.action import FollowJointTrajectory

    robot = Robot(ros_peer, start_sim(start_node, "camera_rate:=0.0", "tracking_time_constant:=0.05"))
    goals = Goals(robot, "left_arm_controller")
    first_stamp = robot.states[-1][0]

    # Goals the controller would refuse are rejected (no result, as JTC), the reason logged, nothing moves.
    target = np.array([0.4, 0.6, 0.5, 0.2, -0.3, 0.4, 0.3])
    bad = [
        (trajectory([*JOINTS[LEFT][:6], "nope"], [(0.5, target)]), "['nope'] are not joints of left_arm_controller"),
        (trajectory(JOINTS[LEFT], []), "Empty trajectory received."),
        (trajectory(JOINTS[LEFT], [(0.5, target[:5])]), "points[0].positions: 5 values for 7 joint names"),
    ]
    for message, reason in bad:
        assert not goals.send(message).accepted, reason
    rejected = "left_arm_controller/follow_joint_trajectory: goal rejected: "
    robot.spin_until(lambda: robot.process.log().count(rejected) == len(bad), "the rejections in the log")
    for line, (_, reason) in zip(
            [line for line in robot.process.log().splitlines() if rejected in line], bad, strict=True):
        assert reason in line
    robot.wait_for_sim_time(robot.states[-1][0] + 0.2)
    moved = [stamp for stamp, positions in robot.states_since(first_stamp) if not np.array_equal(positions, HOME)]
    assert not moved, "a rejected goal moved the arm"

    # The bridge's form; the goal succeeds when the trajectory reaches its end, the executor serving on meanwhile.
    rest = np.zeros(7)
    start = robot.states[-1][0] + 0.3
    handle = goals.send(trajectory(JOINTS[LEFT], [(0.0, HOME[LEFT], rest), (0.6, target, rest)], stamp=start))
    assert handle.accepted
    response = goals.result(handle)
    assert response.status == GoalStatus.STATUS_SUCCEEDED
    assert (response.result.error_code, response.result.error_string) == (
        FollowJointTrajectory.Result.SUCCESSFUL, "Goal successfully reached!")
    assert robot.states[-1][0] >= start + 0.6 - 0.05, "the goal succeeded before the trajectory's end"
    robot.wait_at(np.concatenate([target, HOME[RIGHT]]), "the left arm at the goal's target")
    assert all(np.array_equal(positions[RIGHT], HOME[RIGHT]) for _, positions in robot.states_since(first_stamp))
    assert goals.feedback, "no feedback"
    feedback = goals.feedback[-1]
    assert feedback.joint_names == list(JOINTS[LEFT])
    desired, actual, error = (np.array(getattr(feedback, name).positions) for name in ("desired", "actual", "error"))
    np.testing.assert_allclose(desired, target, atol=1e-9)  # the last feedback is the success tick's
    np.testing.assert_allclose(error, desired - actual, atol=1e-12)
    assert seconds(feedback.header.stamp) >= start + 0.6 - 0.05

    # A topic message while a goal is active replaces its trajectory; the goal stays and ends with the new one.
    topic = robot.publisher("left_arm_controller")
    handle = goals.send(trajectory(JOINTS[LEFT], [(3.0, HOME[LEFT])]))
    assert handle.accepted
    robot.spin_until(lambda: np.abs(robot.latest()[LEFT] - target).max() > 0.05, "the arm to start home")
    other = np.array([-0.2, 0.3, 0.2, -0.1, 0.2, -0.2, 0.8])
    replaced = robot.states[-1][0]
    topic.publish(trajectory(JOINTS[LEFT], [(0.5, other)]))
    response = goals.result(handle)
    assert response.status == GoalStatus.STATUS_SUCCEEDED
    assert response.result.error_string == "Goal successfully reached!"
    assert robot.states[-1][0] < replaced + 2.0, "the goal waited for the replaced trajectory's end"
    robot.wait_at(np.concatenate([other, HOME[RIGHT]]), "the left arm at the topic message's target")


def test_follow_joint_trajectory_preemption_and_cancel(start_node, ros_peer):
    from action_msgs.msg import GoalStatus

    from control_msgs.action import FollowJointTrajectory

    robot = Robot(ros_peer, start_sim(start_node, "camera_rate:=0.0", "tracking_time_constant:=0.05"))
    goals = Goals(robot, "right_arm_controller")
    far = np.array([0.8, 1.0, 0.9, 0.5, -0.6, 0.7, 0.2])
    near = np.array([0.1, 0.2, 0.1, 0.0, 0.1, -0.1, 0.9])

    # A second goal preempts the first: the first is aborted with INVALID_GOAL and JTC's words.
    first = goals.send(trajectory(JOINTS[RIGHT], [(3.0, far)]))
    robot.spin_until(lambda: np.abs(robot.latest()[RIGHT] - HOME[RIGHT]).max() > 0.05, "the right arm to move")
    second = goals.send(trajectory(JOINTS[RIGHT], [(0.5, near)]))
    assert first.accepted and second.accepted
    response = goals.result(first)
    assert response.status == GoalStatus.STATUS_ABORTED
    assert (response.result.error_code, response.result.error_string) == (
        FollowJointTrajectory.Result.INVALID_GOAL, "Current goal preempted by new incoming action.")
    response = goals.result(second)
    assert response.status == GoalStatus.STATUS_SUCCEEDED
    robot.wait_at(np.concatenate([HOME[LEFT], near]), "the right arm at the second goal's target")

    # A cancel mid-motion: CANCELED with a default result, and the arm holds where it was, short of the goal.
    handle = goals.send(trajectory(JOINTS[RIGHT], [(3.0, far)]))
    assert handle.accepted
    robot.spin_until(lambda: np.abs(robot.latest()[RIGHT] - near).max() > 0.1, "the right arm to move")
    cancel = handle.cancel_goal_async()
    robot.spin_until(cancel.done, "the cancel response")
    assert len(cancel.result().goals_canceling) == 1
    response = goals.result(handle)
    assert response.status == GoalStatus.STATUS_CANCELED
    assert (response.result.error_code, response.result.error_string) == (FollowJointTrajectory.Result.SUCCESSFUL, "")
    assert "goal canceled, holding the measured position" in robot.process.log()
    after = robot.states[-1][0] + 0.05
    robot.wait_for_sim_time(after + 1.0)
    held = [(stamp, positions, velocities) for stamp, positions, velocities, _ in robot.states if stamp >= after]
    assert len(held) >= 40
    for stamp, positions, velocities in held:
        np.testing.assert_array_equal(positions, held[0][1], err_msg=f"the arm moved after the cancel at {stamp} s")
        np.testing.assert_array_equal(velocities, 0.0)
    assert np.abs(held[0][1][RIGHT] - far).max() > 0.2, "the arm reached the canceled goal's target"
    assert np.abs(held[0][1][RIGHT] - near).max() > 0.05, "the arm never left the previous target"
