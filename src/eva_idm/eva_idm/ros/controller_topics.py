"""The bridge's commands on the controllers' ``<controller>/joint_trajectory`` topics (``controller_interface: topic``).

The topic twin of :class:`eva_idm.ros.controller_actions.ControllerActions`: the same ``prepare``
/ ``send`` / ``flush`` / ``destroy``, so the node holds one controller interface. Each command is
serialised in ``prepare``, before its start stamp is chosen, and ``send`` writes the stamp into
the serialised bytes (:func:`eva_idm.ros.bridge_messages.stamp_serialised`) and publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from trajectory_msgs.msg import JointTrajectory

from eva_idm.bridge_checks import ControllerCommand
from eva_idm.controllers import TrajectoryController
from eva_idm.ros.bridge_messages import serialised_trajectory, stamp_serialised

COMMANDS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


@dataclass(frozen=True, eq=False)
class _Serialised:
    controller: str
    data: bytearray
    is_stop: bool


class ControllerTopics:
    """One lifecycle publisher per controller's ``joint_trajectory`` topic."""

    def __init__(self, node: LifecycleNode, controllers: Sequence[TrajectoryController]):
        self._node = node
        self._publishers = {controller.name: node.create_lifecycle_publisher(JointTrajectory, controller.topic,
                                                                             COMMANDS)
                            for controller in controllers}

    def prepare(self, commands: Sequence[ControllerCommand]) -> list[_Serialised]:
        """One serialised, unstamped trajectory per command."""
        return [_Serialised(command.controller, serialised_trajectory(command), command.is_stop)
                for command in commands]

    def send(self, prepared: Sequence[_Serialised], stamp_ns: int) -> None:
        """Stamp the serialised trajectories alike, then publish them in order."""
        for message in prepared:
            stamp_serialised(message.data, stamp_ns)
        for message in prepared:
            self._publishers[message.controller].publish(bytes(message.data))
        if prepared and prepared[0].is_stop:
            self._node.get_logger().warning(f"sent a stop to {', '.join(self._publishers)}")

    def flush(self, timeout_s: float) -> None:
        """Wait until every subscriber acknowledged what was published (before the process goes)."""
        for publisher in self._publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=timeout_s))

    def destroy(self) -> None:
        """Destroy the publishers."""
        for publisher in self._publishers.values():
            self._node.destroy_lifecycle_publisher(publisher)
