"""The frozen eva_msgs interfaces travel intact between real processes over real DDS."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eva_idm.ros.conversions import decode_visual_plan
from eva_sim.test_patterns import moving_pattern

pytestmark = pytest.mark.ros


def reliable_qos(transient_local: bool = False):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )


def test_visual_plan_of_49_png_frames_arrives_intact(start_node, ros_peer, tmp_path):
    from eva_msgs.msg import VisualPlan

    received: list[VisualPlan] = []
    ros_peer.node.create_subscription(VisualPlan, "eva/plan", received.append, reliable_qos())
    summary_path = tmp_path / "sent.json"
    sender = start_node("eva_sim", "transport_probe", "send", "--kind", "plan", "--frames", "49", "--height", "480",
                        "--width", "640", "--seed", "7", "--instruction", "stack the bowls",
                        "--json-out", str(summary_path))
    ros_peer.spin_until(lambda: bool(received), 60, "the VisualPlan")
    assert sender.wait(30) == 0, sender.log()
    sent = json.loads(summary_path.read_text())

    plan = received[0]
    assert [plan.plan_id] == sent["plan_ids"]
    assert plan.instruction == "stack the bowls"
    assert (plan.height, plan.width, plan.fps, plan.seed) == (480, 640, 16.0, 7)
    assert plan.model_id == "transport_probe:moving_pattern" and plan.num_inference_steps == 0
    assert [timing.stage for timing in plan.timings] == ["png_encode"]
    assert plan.timings[0].seconds == pytest.approx(sent["encode_seconds"])
    assert plan.header.frame_id == "head_camera" and plan.header.stamp.sec > 0
    assert list(plan.joint_state_at_image.name) == [f"joint{i}" for i in range(14)]
    np.testing.assert_allclose(plan.joint_state_at_image.position, np.linspace(-1.0, 1.0, 14))
    assert len(plan.frames) == 49 and {frame.format for frame in plan.frames} == {"png"}
    assert plan.frames_sha256 == sent["frames_sha256"]
    assert sum(len(frame.data) for frame in plan.frames) == sent["encoded_bytes"]
    np.testing.assert_array_equal(decode_visual_plan(plan), moving_pattern(49, 480, 640, seed=7))


def test_visual_plan_with_a_tampered_frame_is_detected(start_node, ros_peer):
    from eva_idm.frames import FrameError
    from eva_msgs.msg import VisualPlan

    received: list[VisualPlan] = []
    ros_peer.node.create_subscription(VisualPlan, "eva/plan", received.append, reliable_qos())
    start_node("eva_sim", "transport_probe", "send", "--kind", "plan", "--frames", "5", "--height", "48",
               "--width", "64", "--format", "rgb8")
    ros_peer.spin_until(lambda: bool(received), 60, "the VisualPlan")
    plan = received[0]
    assert decode_visual_plan(plan).shape == (5, 48, 64, 3)
    plan.frames[3].data[0] ^= 0xFF
    with pytest.raises(FrameError, match="frames_sha256"):
        decode_visual_plan(plan)


def _make_gated_plan():
    from trajectory_msgs.msg import JointTrajectoryPoint

    from eva_msgs.msg import ExecutabilityReport, GatedPlan, StageTiming

    names = [f"fl_joint{i}" for i in range(1, 7)] + ["left_gripper"] + [f"fr_joint{i}" for i in range(1, 7)]
    names += ["right_gripper"]
    gated = GatedPlan(plan_id="plan-42")
    gated.header.stamp.sec, gated.header.stamp.nanosec = 1700000000, 123456789
    gated.joint_state_at_image.name = names
    gated.joint_state_at_image.position = [0.01 * i for i in range(14)]
    gated.report = ExecutabilityReport(
        plan_id="plan-42", frames_sha256="ab" * 32, idm_model_id="idm-tiny", executable=True,
        code=ExecutabilityReport.ACCEPTED, reason="accepted", reward=7.94, penalty=1172.0, penalty_jerk=2000.0,
        joint_names=names, start_offset=[0.001 * i for i in range(14)], max_smoothing_deviation=0.012,
        time_scale=0.5, num_frames=49, fps=16.0, timings=[StageTiming(stage="idm_decode", seconds=0.25)],
    )
    gated.trajectory.joint_names = names
    for index in range(3):
        point = JointTrajectoryPoint(positions=[0.1 * index] * 14, velocities=[0.0] * 14)
        point.time_from_start.sec, point.time_from_start.nanosec = index, 500_000_000
        gated.trajectory.points.append(point)
    return gated


def _round_trip(start_node, ros_peer, kind: str, message_type, message, transient_local: bool):
    received = []
    ros_peer.node.create_subscription(message_type, "probe/out", received.append, reliable_qos(transient_local))
    publisher = ros_peer.node.create_publisher(message_type, "probe/in", reliable_qos(transient_local))
    echo_args = ["echo", "--kind", kind, "--input", "probe/in", "--output", "probe/out"]
    start_node("eva_sim", "transport_probe", *echo_args, *(["--transient-local"] if transient_local else []))
    ros_peer.spin_until(lambda: publisher.get_subscription_count() > 0, 30, "the echo process to subscribe")
    publisher.publish(message)
    ros_peer.spin_until(lambda: bool(received), 30, f"the echoed {kind}")
    return received[0]


def test_gated_plan_round_trips_through_another_process(start_node, ros_peer):
    from eva_msgs.msg import GatedPlan

    sent = _make_gated_plan()
    echoed = _round_trip(start_node, ros_peer, "gated_plan", GatedPlan, sent, transient_local=False)
    assert echoed == sent
    assert echoed.report.reward == pytest.approx(7.94) and len(echoed.trajectory.points) == 3


def test_execution_status_round_trips_with_transient_local_durability(start_node, ros_peer):
    from eva_msgs.msg import ExecutionStatus

    sent = ExecutionStatus(plan_id="plan-42", state=ExecutionStatus.ABORTED, code=ExecutionStatus.ESTOP_LATCHED,
                           reason="e-stop engaged at t=1.25 s", progress=0.5, max_tracking_error=0.031)
    echoed = _round_trip(start_node, ros_peer, "status", ExecutionStatus, sent, transient_local=True)
    assert echoed == sent


class ActionPeer:
    """An ExecuteInstruction client that records feedback."""

    def __init__(self, ros_peer):
        from rclpy.action import ActionClient

        from eva_msgs.action import ExecuteInstruction

        self.peer, self.feedback = ros_peer, []
        self.client = ActionClient(ros_peer.node, ExecuteInstruction, "eva/execute")
        ros_peer.spin_until(lambda: self.client.server_is_ready(), 30, "the eva/execute action server")

    def send(self, **goal_fields):
        from eva_msgs.action import ExecuteInstruction

        future = self.client.send_goal_async(ExecuteInstruction.Goal(**goal_fields),
                                             feedback_callback=lambda message: self.feedback.append(message.feedback))
        self.peer.spin_until(future.done, 30, "the goal to be accepted")
        return future.result()

    def result(self, goal_handle):
        future = goal_handle.get_result_async()
        self.peer.spin_until(future.done, 60, "the action result")
        return future.result()


def test_execute_instruction_goal_gets_feedback_and_a_result(start_node, ros_peer):
    from action_msgs.msg import GoalStatus

    from eva_msgs.action import ExecuteInstruction

    start_node("eva_sim", "transport_probe", "serve-execute", "--steps", "2", "--step-seconds", "0.05")
    peer = ActionPeer(ros_peer)
    goal_handle = peer.send(instruction="put the cup on the plate", best_of_n=4, seed=3)
    assert goal_handle.accepted
    response = peer.result(goal_handle)

    assert response.status == GoalStatus.STATUS_SUCCEEDED
    assert response.result.error_code == ExecuteInstruction.Result.NONE
    phases = [feedback.phase for feedback in peer.feedback]
    feedback = ExecuteInstruction.Feedback
    assert phases == [feedback.PLANNING] * 2 + [feedback.GATING] * 2 + [feedback.EXECUTING] * 2
    assert math.isnan(peer.feedback[0].reward) and peer.feedback[-1].reward == 10.0
    assert {f.plan_id for f in peer.feedback} == {response.result.plan_id}
    assert response.result.report.plan_id == response.result.plan_id


def test_execute_instruction_goal_can_be_cancelled(start_node, ros_peer):
    from action_msgs.msg import GoalStatus

    from eva_msgs.action import ExecuteInstruction

    start_node("eva_sim", "transport_probe", "serve-execute", "--steps", "200", "--step-seconds", "0.05")
    peer = ActionPeer(ros_peer)
    goal_handle = peer.send(instruction="fold the towel")
    ros_peer.spin_until(lambda: bool(peer.feedback), 30, "the first feedback")
    cancel = goal_handle.cancel_goal_async()
    ros_peer.spin_until(cancel.done, 30, "the cancel response")
    assert len(cancel.result().goals_canceling) == 1
    response = peer.result(goal_handle)

    assert response.status == GoalStatus.STATUS_CANCELED
    assert response.result.error_code == ExecuteInstruction.Result.CANCELED
    assert len(peer.feedback) < 200


def test_execute_instruction_rejects_an_empty_instruction_with_a_reason(start_node, ros_peer):
    from action_msgs.msg import GoalStatus

    from eva_msgs.action import ExecuteInstruction

    start_node("eva_sim", "transport_probe", "serve-execute")
    peer = ActionPeer(ros_peer)
    response = peer.result(peer.send(instruction="   "))
    assert response.status == GoalStatus.STATUS_ABORTED
    assert response.result.error_code == ExecuteInstruction.Result.INVALID_GOAL
    assert "instruction" in response.result.error_msg
