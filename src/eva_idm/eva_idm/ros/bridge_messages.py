"""Messages of the controller bridge: ROS messages to the core's plain inputs, commands to serialised trajectories.

Kept out of the node so that it stays a thin wiring of topics. A command is serialised before its
start stamp is chosen and the stamp is written into the serialised bytes afterwards
(:func:`stamp_serialised`): converting and serialising a 10,000-point ``JointTrajectory`` takes
rclpy ~0.3 s per arm, which must not eat into the time between the stamp and the start.
"""

from __future__ import annotations

import struct

from builtin_interfaces.msg import Duration, Time
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from eva_idm.bridge_checks import NS_PER_S, ControllerCommand, JointStateInput, PlanInput, PointInput
from eva_msgs.msg import GatedPlan

CDR_LITTLE_ENDIAN = (b"\x00\x01", b"\x00\x03")  # plain CDR and parameter-list CDR, little-endian
STAMP = struct.Struct("<iI")  # builtin_interfaces/Time: sec (int32), nanosec (uint32)


def nanoseconds(stamp: Time | Duration) -> int:
    """A ``Time`` or ``Duration`` message as integer nanoseconds."""
    return stamp.sec * NS_PER_S + stamp.nanosec


def joint_state_input(message: JointState) -> JointStateInput:
    """A ``JointState`` as the bridge's plain input."""
    return JointStateInput(list(message.name), message.position, message.velocity, nanoseconds(message.header.stamp))


def plan_input(message: GatedPlan) -> PlanInput:
    """A ``GatedPlan`` as the bridge's plain input (checked by the bridge, not here)."""
    trajectory = message.trajectory
    points = [PointInput(point.positions, point.velocities, point.accelerations, point.effort,
                         nanoseconds(point.time_from_start)) for point in trajectory.points]
    return PlanInput(message.plan_id, nanoseconds(message.header.stamp),
                     joint_state_input(message.joint_state_at_image), bool(message.report.executable),
                     list(trajectory.joint_names), nanoseconds(trajectory.header.stamp), points)


def trajectory_message(command: ControllerCommand) -> JointTrajectory:
    """A ``ControllerCommand`` as the ``JointTrajectory`` its controller takes, stamp still zero."""
    message = JointTrajectory(joint_names=list(command.joint_names))
    for index, time_s in enumerate(command.times):
        point = JointTrajectoryPoint(positions=command.positions[index].tolist(),
                                     velocities=command.velocities[index].tolist())
        if command.accelerations is not None:
            point.accelerations = command.accelerations[index].tolist()
        point.time_from_start.sec, point.time_from_start.nanosec = divmod(round(time_s * NS_PER_S), NS_PER_S)
        message.points.append(point)
    return message


def serialised_trajectory(command: ControllerCommand) -> bytearray:
    """``command`` as a serialised ``JointTrajectory`` (stamp zero), ready for :func:`stamp_serialised`."""
    serialised = bytearray(serialize_message(trajectory_message(command)))
    if serialised[:2] not in CDR_LITTLE_ENDIAN:
        raise ValueError(f"serialised JointTrajectory: unexpected CDR encapsulation {bytes(serialised[:4])!r}")
    return serialised


def stamp_serialised(serialised: bytearray, stamp_ns: int) -> None:
    """Write ``header.stamp`` into a serialised ``JointTrajectory``.

    In CDR a message's first field follows the 4-byte encapsulation header: for JointTrajectory
    that is ``header.stamp``, ``sec`` (int32) then ``nanosec`` (uint32), little-endian here.
    """
    STAMP.pack_into(serialised, 4, *divmod(stamp_ns, NS_PER_S))
