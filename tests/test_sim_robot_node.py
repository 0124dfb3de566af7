"""sim_robot as a real process over real DDS: /clock, joint states, the head camera, JTC topic interfaces.

The test process plays the controller bridge: it sends JointTrajectory messages and watches
``joint_states`` (stamped with sim time) and ``/clock``. Times in assertions are sim times read
from the robot's own messages, never wall-clock sleeps.
"""

from __future__ import annotations

import math
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
