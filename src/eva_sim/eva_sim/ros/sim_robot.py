"""``sim_robot``: the simulated aloha-agilex arms behind JointTrajectoryController topic interfaces.

A plain node that owns simulated time: every controller tick (the ``update_rate`` of the
controllers YAML) advances sim time by one period, publishes it on ``/clock``, and moves the arms
(:class:`~eva_sim.follower.SimulatedRobot`). Ticks are paced by a wall timer scaled by
``real_time_factor``; when the machine is too slow the sim runs slower, never coarser, and every
node on ``use_sim_time`` sees the same slower time. The node itself must not run on sim time
(it would wait for the clock it publishes).

Out: ``/clock``, ``joint_states`` (embodiment order, positions and velocities, stamped with sim
time), ``head_camera/image_raw`` (rgb8 of the measured pose, rendered with
:class:`~eva_sim.scene.AgilexScene` from RoboTwin's head camera), ``/diagnostics`` (each
controller's status and rejections). In: ``<controller>/joint_trajectory`` per controller of the
layout. A rejected message is logged with its reason and changes nothing. Served: the action
``<controller>/follow_joint_trajectory`` (control_msgs/action/FollowJointTrajectory) per
controller, as JTC serves it (:mod:`eva_sim.ros.trajectory_action`); a rejected goal is counted
with the controller's rejections.

Rendering (~15 ms a frame) runs in its own thread, which owns the OpenGL context, so the control
ticks never wait for it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from eva_idm.embodiment import Embodiment
from eva_idm.ros.executable import run_node
from eva_idm.ros.parameters import declare_parameters, read_config
from eva_sim.follower import CommandError, TrajectoryCommand, TrajectoryPoint
from eva_sim.ros.trajectory_action import TrajectoryActions
from eva_sim.sim_config import SimRobotConfig, build_sim_robot

COMMANDS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# Reliable matches both rclpy's best-effort /clock subscription and reliable ones.
CLOCK = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
CAMERA_START_TIMEOUT_S = 30.0
Snapshot = tuple[int, np.ndarray]  # (sim time in ns, measured positions)


def stamp(nanoseconds: int) -> Time:
    """A builtin_interfaces Time from integer nanoseconds."""
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def command_from_message(message: JointTrajectory) -> TrajectoryCommand:
    """The ROS-free form of a JointTrajectory (times in seconds)."""
    def seconds(value: object) -> float:
        return value.sec + value.nanosec * 1e-9

    points = tuple(
        TrajectoryPoint(seconds(point.time_from_start), tuple(point.positions), tuple(point.velocities),
                        tuple(point.accelerations), tuple(point.effort))
        for point in message.points)
    return TrajectoryCommand(tuple(message.joint_names), seconds(message.header.stamp), points)


class HeadCamera(threading.Thread):
    """Renders and publishes the measured pose at ``camera_rate``; the scene lives and dies in this thread."""

    def __init__(self, node: Node, config: SimRobotConfig, embodiment: Embodiment, snapshot: Callable[[], Snapshot]):
        super().__init__(name="head_camera", daemon=True)
        self._node, self._config, self._embodiment, self._snapshot = node, config, embodiment, snapshot
        self._publisher = node.create_publisher(Image, "head_camera/image_raw", qos_profile_sensor_data)
        self._period = 1.0 / (config.camera_rate * config.real_time_factor)
        self._ready, self._stopping = threading.Event(), threading.Event()
        self.error: str | None = None

    def start_rendering(self) -> None:
        """Start the thread; raises RuntimeError when the scene cannot be made (no OpenGL, bad model)."""
        self.start()
        if not self._ready.wait(CAMERA_START_TIMEOUT_S):
            self.error = f"the head camera scene was not ready after {CAMERA_START_TIMEOUT_S} s"
        if self.error:
            raise RuntimeError(f"head camera: {self.error}")

    def stop(self) -> None:
        """Stop rendering and release the OpenGL context."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=5.0)

    def run(self) -> None:
        """Make the scene, then render the newest snapshot every period until stopped."""
        from eva_sim.scene import AgilexScene  # imports MuJoCo, which reads MUJOCO_GL (see configure_gl_backend)

        try:
            scene = AgilexScene(self._embodiment, height=self._config.camera_height, width=self._config.camera_width)
        except Exception as error:  # noqa: BLE001 (reported to start_rendering, which fails the start)
            self.error = str(error)
            self._ready.set()
            return
        self._ready.set()
        with scene:
            deadline = time.monotonic()
            while not self._stopping.wait(max(0.0, deadline - time.monotonic())):
                deadline = max(deadline + self._period, time.monotonic())
                nanoseconds, positions = self._snapshot()
                try:
                    rgb = scene.render_joints(positions)
                except Exception as error:  # noqa: BLE001 (a failed frame is logged; the robot runs on)
                    self._node.get_logger().error(f"head camera render failed: {error}", throttle_duration_sec=5.0)
                    continue
                message = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3,
                                data=rgb.tobytes())
                message.header.stamp, message.header.frame_id = stamp(nanoseconds), "head_camera"
                try:
                    self._publisher.publish(message)
                except Exception as error:  # noqa: BLE001 (on shutdown the context goes first; else log it)
                    if not self._node.context.ok():
                        return
                    self._node.get_logger().error(f"head camera publish failed: {error}", throttle_duration_sec=5.0)


class SimRobot(Node):
    """The simulated robot (see the module docstring); raises ValueError on bad parameters."""

    def __init__(self) -> None:
        super().__init__("sim_robot")
        errors = declare_parameters(self, SimRobotConfig)
        config = read_config(self, SimRobotConfig, errors, "config/sim_robot.yaml")
        if self.get_parameter("use_sim_time").value:
            raise ValueError("use_sim_time: must be false; sim_robot publishes /clock and runs on wall time")
        self.config = config
        self._now_ns = round(config.clock_start * 1e9)
        self.robot = build_sim_robot(config, self._now_ns * 1e-9)
        self._tick_ns = round(1e9 / self.robot.update_rate_hz)
        self._joint_state_ns = round(1e9 / config.joint_state_rate)
        self._next_joint_state_ns = self._now_ns
        self._rejected = dict.fromkeys(self.robot.followers, 0)
        self._last_rejection = dict.fromkeys(self.robot.followers, "")
        self._snapshot: Snapshot = (self._now_ns, self.robot.positions)
        self._clock_publisher = self.create_publisher(Clock, "/clock", CLOCK)
        self._joint_states = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        for controller in self.robot.followers:
            self.create_subscription(JointTrajectory, f"{controller}/joint_trajectory",
                                     functools.partial(self._on_trajectory, controller), COMMANDS)
        self.actions = TrajectoryActions(self, self.robot, lambda: self._now_ns, command_from_message,
                                         self._count_rejection)
        self.create_timer(1.0 / (self.robot.update_rate_hz * config.real_time_factor), self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.camera = None
        if config.camera_rate > 0.0:  # last: nothing after it can fail and leave the thread running
            self.camera = HeadCamera(self, config, self.robot.embodiment, lambda: self._snapshot)
            self.camera.start_rendering()
        self._publish_state()
        self.get_logger().info(
            f"simulating {self.robot.embodiment.name} with {', '.join(self.robot.followers)} at "
            f"{self.robot.update_rate_hz:g} Hz from sim time {config.clock_start} s (real_time_factor "
            f"{config.real_time_factor}); camera {config.camera_width}x{config.camera_height} at "
            f"{config.camera_rate:g} Hz")

    def _on_trajectory(self, controller: str, message: JointTrajectory) -> None:
        topic = f"{controller}/joint_trajectory"
        try:
            outcome = self.robot.receive(controller, command_from_message(message), self._now_ns * 1e-9)
        except CommandError as error:
            self._count_rejection(controller, str(error))
            self.get_logger().error(f"{topic}: rejected, the previous command goes on: {error}")
            return
        self.get_logger().info(f"{topic}: {outcome}")

    def _count_rejection(self, controller: str, reason: str) -> None:
        self._rejected[controller] += 1
        self._last_rejection[controller] = reason

    def _tick(self) -> None:
        self._now_ns += self._tick_ns
        for controller, notice in self.robot.update(self._now_ns * 1e-9).items():
            self.get_logger().warning(f"{controller}: {notice}")
        self.actions.update()
        self._publish_state()

    def _publish_state(self) -> None:
        now = stamp(self._now_ns)
        self._clock_publisher.publish(Clock(clock=now))
        positions = self.robot.positions
        self._snapshot = (self._now_ns, positions)
        if self._now_ns >= self._next_joint_state_ns:
            self._next_joint_state_ns += self._joint_state_ns
            message = JointState(name=list(self.robot.embodiment.joint_names), position=positions.tolist(),
                                 velocity=self.robot.velocities.tolist())
            message.header.stamp = now
            self._joint_states.publish(message)

    def _publish_diagnostics(self) -> None:
        statuses = []
        for controller, status in self.robot.statuses().items():
            level = DiagnosticStatus.WARN if status == "stale" or self._rejected[controller] else DiagnosticStatus.OK
            values = [KeyValue(key="rejected", value=str(self._rejected[controller])),
                      KeyValue(key="last_rejection", value=self._last_rejection[controller])]
            statuses.append(DiagnosticStatus(level=level, name=f"{self.get_name()}: {controller}", message=status,
                                             hardware_id="sim", values=values))
        message = DiagnosticArray(status=statuses)
        message.header.stamp = stamp(self._now_ns)
        self._diagnostics.publish(message)

    def destroy_node(self) -> None:
        """Stop the camera thread before the publishers go."""
        if self.camera is not None:
            self.camera.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``sim_robot`` executable; 1 when the parameters or the models are bad."""
    return run_node("sim_robot", SimRobot, num_threads=1, args=args)

if __name__ == "__main__":
    raise SystemExit(main())
