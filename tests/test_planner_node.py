"""planner_node as a real process over real DDS: lifecycle, plans, bad images and the eva/execute action.

The node runs the tiny world model from config/planner_tiny.yaml; the test process plays the head
camera, the joint states, the IDM node (executability reports) and the controller bridge
(execution states).
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from eva_idm.frames import frames_sha256
from eva_idm.ros.conversions import decode_visual_plan, encoded_frames
from eva_sim.test_patterns import moving_pattern

TINY_CONFIG = Path(__file__).resolve().parents[1] / "config" / "planner_tiny.yaml"
JOINTS = [f"fl_joint{i}" for i in range(1, 7)] + ["left_gripper"] + [f"fr_joint{i}" for i in range(1, 7)]
JOINTS += ["right_gripper"]
IMAGE_STAMP = (1_700_000_000, 250_000_000)


def qos(transient_local: bool = False, depth: int = 1):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    durability = DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=durability)


def rgb_image(height: int = 48, width: int = 80, stamp: tuple[int, int] = IMAGE_STAMP, encoding: str = "rgb8"):
    from sensor_msgs.msg import Image

    pixels = moving_pattern(1, height, width, seed=3)[0]
    message = Image(height=height, width=width, encoding=encoding, step=width * 3, data=pixels.tobytes())
    message.header.stamp.sec, message.header.stamp.nanosec = stamp
    message.header.frame_id = "head_camera"
    return message


def test_raw_images_are_checked_and_converted_to_rgb():
    from eva_planner.ros.support import image_to_rgb

    image = rgb_image(height=8, width=10)
    expected = np.frombuffer(bytes(image.data), np.uint8).reshape(8, 10, 3)
    padded = rgb_image(height=8, width=10, encoding="bgr8")  # rows of 30 bytes padded to 32
    padded.step, padded.data = 32, b"".join(row[..., ::-1].tobytes() + b"\0\0" for row in expected)
    np.testing.assert_array_equal(image_to_rgb(image), expected)
    np.testing.assert_array_equal(image_to_rgb(padded), expected)
    for field, value, message in [
        ("encoding", "rgba8", "encoding: expected one of \\['rgb8', 'bgr8'\\], got 'rgba8'"),
        ("step", 29, "step: 29 bytes per row is less than width \\* 3 = 30"),
        ("width", 0, "height/width: image size must be positive, got 8x0"),
        ("data", b"\0" * 239, "data: 239 bytes, expected step \\* height = 30 \\* 8 = 240"),
    ]:
        broken = rgb_image(height=8, width=10)
        setattr(broken, field, value)
        with pytest.raises(ValueError, match=message):
            image_to_rgb(broken)


def test_compressed_images_decode_to_rgb_or_name_the_fault():
    from sensor_msgs.msg import CompressedImage

    from eva_idm.frames import encode_frame
    from eva_planner.ros.support import compressed_to_rgb

    pixels = moving_pattern(1, 8, 10, seed=4)[0]
    message = CompressedImage(format="png", data=encode_frame(pixels).data)
    np.testing.assert_array_equal(compressed_to_rgb(message), pixels)
    with pytest.raises(ValueError, match="data: 3 bytes of format 'jpeg' are not a decodable image"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"abc"))


def test_the_bridge_decides_success_and_the_gate_decides_rejection():
    from eva_msgs.action import ExecuteInstruction
    from eva_msgs.msg import ExecutabilityReport, ExecutionStatus
    from eva_planner.ros.support import goal_outcome

    codes, accepted = ExecuteInstruction.Result, ExecutabilityReport(executable=True)
    executing = ExecutionStatus(state=ExecutionStatus.EXECUTING)
    assert goal_outcome(None, None, plan_only=False) is None
    assert goal_outcome(accepted, executing, plan_only=False) is None
    assert goal_outcome(accepted, None, plan_only=True) == (codes.NONE, "planned and gated (plan_only)")
    assert goal_outcome(ExecutabilityReport(reason="jerk"), None, plan_only=True) == (codes.REJECTED_BY_GATE, "jerk")
    aborted = ExecutionStatus(state=ExecutionStatus.ABORTED, reason="e-stop")
    assert goal_outcome(accepted, aborted, plan_only=False) == (codes.EXECUTION_ABORTED, "e-stop")
    assert goal_outcome(accepted, ExecutionStatus(state=ExecutionStatus.SUCCEEDED), False) == (codes.NONE, "")


class Robot:
    """The test peer's side of the graph: camera and joint states streamed at 10 Hz, plans recorded."""

    def __init__(self, ros_peer, image=None):
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import String

        from eva_msgs.msg import ExecutabilityReport, ExecutionStatus, VisualPlan

        node = ros_peer.node
        self.peer, self.image = ros_peer, image
        self.plans: list[VisualPlan] = []
        self.previews: list[VisualPlan] = []  # plan_only goals' plans: gated, never executed
        self.frames: list[CompressedImage] = []
        node.create_subscription(VisualPlan, "eva/plan", self.plans.append, qos())
        node.create_subscription(VisualPlan, "eva/plan/preview", self.previews.append, qos())
        node.create_subscription(CompressedImage, "eva/plan/image/compressed", self.frames.append, qos(depth=20))
        self.camera = node.create_publisher(Image, "head_camera/image_raw", qos())
        self.joints = node.create_publisher(JointState, "joint_states", qos())
        self.instructions = node.create_publisher(String, "eva/instruction", qos())
        self.reports = node.create_publisher(ExecutabilityReport, "eva/executability", qos(transient_local=True))
        self.statuses = node.create_publisher(ExecutionStatus, "eva/execution_status", qos(transient_local=True))
        self.joint_state = JointState(name=JOINTS, position=[0.05 * i for i in range(14)])
        self.sent_joint_states = 0
        node.create_timer(0.1, self.stream)

    def stream(self) -> None:
        self.joint_state.header.stamp = self.peer.node.get_clock().now().to_msg()
        self.joints.publish(self.joint_state)
        self.sent_joint_states += self.joints.get_subscription_count() > 0
        if self.image is not None and self.sent_joint_states > 3:  # so that every image has a joint state
            self.camera.publish(self.image)

    def instruct(self, text: str) -> None:
        from std_msgs.msg import String

        self.peer.spin_until(lambda: self.instructions.get_subscription_count() > 0, 30, "eva/instruction to match")
        self.instructions.publish(String(data=text))


def ready_client(ros_peer, service_type, name: str):
    """A service client whose request AND response paths are matched.

    ``service_is_ready`` only sees the server's request reader; a call made at once can lose its
    response while the server's response writer is still discovering the client (a known DDS
    race), so give discovery a moment after the server appears.
    """
    client = ros_peer.node.create_client(service_type, name)
    ros_peer.spin_until(client.service_is_ready, 60, f"the {name} service")
    settled = time.monotonic() + 1.0
    ros_peer.spin_until(lambda: time.monotonic() > settled, 5, "service discovery to settle")
    return client


def change_state(ros_peer, transition_id: int) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    client = ready_client(ros_peer, ChangeState, "planner_node/change_state")
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
    ros_peer.spin_until(future.done, 60, f"lifecycle transition {transition_id}")
    ros_peer.node.destroy_client(client)
    return future.result().success


def lifecycle_state(ros_peer) -> str:
    from lifecycle_msgs.srv import GetState

    client = ready_client(ros_peer, GetState, "planner_node/get_state")
    future = client.call_async(GetState.Request())
    ros_peer.spin_until(future.done, 30, "the lifecycle state")
    ros_peer.node.destroy_client(client)
    return future.result().current_state.label


@pytest.fixture
def planner(start_node, ros_peer):
    """Start planner_node with the tiny config (plus extra ROS arguments), configure and activate it."""
    from lifecycle_msgs.msg import Transition

    def start(*extra_arguments: str):
        process = start_node("eva_planner", "planner_node", "--ros-args", "--params-file", str(TINY_CONFIG),
                             *extra_arguments)
        assert lifecycle_state(ros_peer) == "unconfigured"
        assert change_state(ros_peer, Transition.TRANSITION_CONFIGURE), process.log()
        assert change_state(ros_peer, Transition.TRANSITION_ACTIVATE), process.log()
        assert lifecycle_state(ros_peer) == "active"
        return process

    return start


class ActionPeer:
    """An eva/execute client that records feedback."""

    def __init__(self, ros_peer):
        from rclpy.action import ActionClient

        from eva_msgs.action import ExecuteInstruction

        self.peer, self.feedback = ros_peer, []
        self.client = ActionClient(ros_peer.node, ExecuteInstruction, "eva/execute")
        ros_peer.spin_until(self.client.server_is_ready, 30, "the eva/execute action server")

    def send(self, **goal_fields):
        from eva_msgs.action import ExecuteInstruction

        future = self.client.send_goal_async(ExecuteInstruction.Goal(**goal_fields),
                                             feedback_callback=lambda message: self.feedback.append(message.feedback))
        self.peer.spin_until(future.done, 30, "the goal response")
        assert future.result().accepted
        return future.result()

    def result(self, goal_handle):
        future = goal_handle.get_result_async()
        self.peer.spin_until(future.done, 60, "the action result")
        return future.result()


@pytest.mark.ros
def test_an_unknown_parameter_fails_configure_naming_it(start_node, ros_peer):
    from lifecycle_msgs.msg import Transition

    process = start_node("eva_planner", "planner_node", "--ros-args", "--params-file", str(TINY_CONFIG),
                         "-p", "stpes:=2")
    assert not change_state(ros_peer, Transition.TRANSITION_CONFIGURE)
    assert lifecycle_state(ros_peer) == "unconfigured"
    assert "unknown parameter(s) 'stpes' (did you mean 'steps'?)" in process.log()
    assert process.poll() is None


@pytest.mark.ros
def test_configured_planner_turns_an_image_and_an_instruction_into_a_visual_plan(planner, ros_peer):
    from diagnostic_msgs.msg import DiagnosticArray

    diagnostics: list[DiagnosticArray] = []
    ros_peer.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    robot = Robot(ros_peer, image=rgb_image())
    planner()
    robot.instruct("pick up the cup")
    ros_peer.spin_until(lambda: robot.plans and len(robot.frames) >= 9, 60, "the plan and its 9 frames")

    plan = robot.plans[0]
    assert uuid.UUID(plan.plan_id).version == 4
    assert plan.instruction == "pick up the cup"
    assert (plan.header.stamp.sec, plan.header.stamp.nanosec) == IMAGE_STAMP
    assert plan.header.frame_id == "head_camera"
    assert (plan.height, plan.width, plan.fps, plan.num_inference_steps) == (64, 64, 16.0, 4)
    assert plan.model_id.startswith("eva-tiny-random")
    assert list(plan.joint_state_at_image.name) == JOINTS
    np.testing.assert_allclose(plan.joint_state_at_image.position, [0.05 * i for i in range(14)])
    assert {"encode_prompt", "denoise", "decode", "png_encode"} <= {timing.stage for timing in plan.timings}
    assert len(plan.frames) == 9 and {frame.format for frame in plan.frames} == {"png"}
    assert plan.frames_sha256 == frames_sha256(encoded_frames(plan))
    assert decode_visual_plan(plan).shape == (9, 64, 64, 3)  # checks the hash and every frame's size
    assert [bytes(frame.data) for frame in robot.frames[:9]] == [bytes(frame.data) for frame in plan.frames]

    def reports_the_plan() -> bool:
        values = [{kv.key: kv.value for kv in status.values} for array in diagnostics for status in array.status]
        return any(value.get("last_plan_id") == plan.plan_id and "seconds.denoise" in value for value in values)

    ros_peer.spin_until(reports_the_plan, 10, "/diagnostics to report the plan and its stage timings")


@pytest.mark.ros
def test_malformed_images_are_dropped_with_a_reason_and_planning_goes_on(planner, ros_peer):
    robot = Robot(ros_peer)
    process = planner()
    mono = rgb_image(encoding="mono8")
    truncated = rgb_image(stamp=(1, 0))
    truncated.data = truncated.data[:-5]
    ros_peer.spin_until(lambda: robot.camera.get_subscription_count() > 0, 30, "the camera topic to match")
    robot.camera.publish(mono)
    ros_peer.spin_until(lambda: "encoding: expected one of ['rgb8', 'bgr8'], got 'mono8'" in process.log(), 30,
                        "the node to log the wrong encoding")
    robot.camera.publish(truncated)
    robot.image = rgb_image(stamp=(7, 0))
    robot.instruct("push the red block")
    ros_peer.spin_until(lambda: bool(robot.plans), 60, "a plan from the first good image")

    assert process.poll() is None, process.log()
    assert (robot.plans[0].header.stamp.sec, robot.plans[0].header.stamp.nanosec) == (7, 0)
    assert decode_visual_plan(robot.plans[0]).shape == (9, 64, 64, 3)


@pytest.mark.ros
def test_a_compressed_camera_is_planned_from_and_a_corrupt_frame_is_dropped(planner, ros_peer):
    from sensor_msgs.msg import CompressedImage

    from eva_idm.frames import encode_frame

    raw = rgb_image(stamp=(9, 0))
    camera = ros_peer.node.create_publisher(CompressedImage, "head_camera/image_raw/compressed", qos())
    robot = Robot(ros_peer)  # joint states only: this camera is compressed
    process = planner("-p", "image_transport:=compressed")
    ros_peer.spin_until(lambda: camera.get_subscription_count() > 0, 30, "the compressed camera topic to match")
    camera.publish(CompressedImage(format="jpeg", data=b"not an image"))
    ros_peer.spin_until(lambda: "data: 12 bytes of format 'jpeg' are not a decodable image" in process.log(), 30,
                        "the node to log the corrupt frame")
    pixels = np.frombuffer(bytes(raw.data), np.uint8).reshape(raw.height, raw.width, 3)
    good = CompressedImage(header=raw.header, format="png", data=encode_frame(pixels).data)
    ros_peer.spin_until(lambda: robot.sent_joint_states > 3, 30, "joint states to reach the node")
    ros_peer.node.create_timer(0.1, lambda: camera.publish(good))  # a camera streams: no race with the instruction
    robot.instruct("push the red block")
    ros_peer.spin_until(lambda: bool(robot.plans), 60, "a plan from the compressed frame")
    assert (robot.plans[0].header.stamp.sec, robot.plans[0].header.stamp.nanosec) == (9, 0)
    assert decode_visual_plan(robot.plans[0]).shape == (9, 64, 64, 3) and process.poll() is None


@pytest.mark.ros
def test_execute_goal_succeeds_when_the_bridge_reports_the_plan_executed(planner, ros_peer):
    from action_msgs.msg import GoalStatus

    from eva_msgs.action import ExecuteInstruction
    from eva_msgs.msg import ExecutabilityReport, ExecutionStatus, VisualPlan

    robot = Robot(ros_peer, image=rgb_image())
    planner()
    actions = ActionPeer(ros_peer)

    def judge_and_execute(plan) -> None:  # the IDM node's verdict, then the bridge's states
        robot.reports.publish(ExecutabilityReport(plan_id=plan.plan_id, frames_sha256=plan.frames_sha256,
                                                  executable=True, reward=7.5, reason="accepted"))
        robot.statuses.publish(ExecutionStatus(plan_id=plan.plan_id, state=ExecutionStatus.EXECUTING, progress=0.5))
        robot.statuses.publish(ExecutionStatus(plan_id=plan.plan_id, state=ExecutionStatus.SUCCEEDED, progress=1.0,
                                               reason="trajectory finished"))

    ros_peer.node.create_subscription(VisualPlan, "eva/plan", judge_and_execute, qos())
    response = actions.result(actions.send(instruction="put the cup on the plate", seed=7))

    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.error_msg
    result = response.result
    assert result.error_code == ExecuteInstruction.Result.NONE
    plan = robot.plans[0]
    assert result.plan_id == plan.plan_id and plan.seed == 7
    assert result.report.plan_id == plan.plan_id and result.report.reward == 7.5
    feedback = ExecuteInstruction.Feedback
    phases = [message.phase for message in actions.feedback]
    assert feedback.PLANNING in phases and feedback.GATING in phases and phases[-1] == feedback.EXECUTING
    planning = [message.progress for message in actions.feedback if message.phase == feedback.PLANNING]
    assert planning == sorted(planning) and planning[-1] == pytest.approx(1.0)
    assert all(math.isnan(message.reward) for message in actions.feedback if message.phase == feedback.PLANNING)
    assert actions.feedback[-1].plan_id == plan.plan_id and actions.feedback[-1].reward == 7.5


@pytest.mark.ros
def test_execute_goal_ends_with_the_gate_or_bridge_verdict_or_the_goal_fault(planner, ros_peer):
    from action_msgs.msg import GoalStatus

    from eva_msgs.action import ExecuteInstruction
    from eva_msgs.msg import ExecutabilityReport, ExecutionStatus, VisualPlan

    robot = Robot(ros_peer, image=rgb_image())
    planner()
    actions = ActionPeer(ros_peer)
    accepted = ExecutabilityReport(executable=True, reward=8.0, reason="accepted")
    verdicts = {  # instruction -> what the IDM node and the bridge say; "stack the bowls" gets no verdict at all
        "lift the box": [ExecutabilityReport(executable=False, code=ExecutabilityReport.LOW_REWARD,
                                             reason="reward 0.4 is below the gate's minimum 5.0")],
        "open the drawer": [accepted, ExecutionStatus(state=ExecutionStatus.REJECTED, code=ExecutionStatus.ROBOT_MOVED,
                                                      reason="fl_joint1 moved 0.2 rad since the image")],
        "press the bell": [accepted, ExecutionStatus(state=ExecutionStatus.ABORTED, code=ExecutionStatus.ESTOP_LATCHED,
                                                     reason="e-stop engaged")],
        "pick up the cup": [accepted],
    }

    def judge(plan) -> None:
        for verdict in verdicts.get(plan.instruction, []):
            verdict.plan_id = plan.plan_id
            (robot.statuses if isinstance(verdict, ExecutionStatus) else robot.reports).publish(verdict)

    for topic in ("eva/plan", "eva/plan/preview"):
        ros_peer.node.create_subscription(VisualPlan, topic, judge, qos())
    codes = ExecuteInstruction.Result
    for goal, code, reason in [
        ({"instruction": "lift the box"}, codes.REJECTED_BY_GATE, "below the gate's minimum"),
        ({"instruction": "open the drawer"}, codes.REJECTED_BY_BRIDGE, "fl_joint1 moved"),
        ({"instruction": "press the bell"}, codes.EXECUTION_ABORTED, "e-stop engaged"),
        ({"instruction": "stack the bowls", "timeout": 1.5}, codes.TIMEOUT, "waiting for the executability report"),
        ({"instruction": "   "}, codes.INVALID_GOAL, "instruction"),
        ({"instruction": "lift the box", "best_of_n": 3}, codes.INVALID_GOAL, "idm_checkpoint"),
    ]:
        response = actions.result(actions.send(**goal))
        assert response.status == GoalStatus.STATUS_ABORTED
        assert response.result.error_code == code and reason in response.result.error_msg, response.result.error_msg

    response = actions.result(actions.send(instruction="pick up the cup", plan_only=True))
    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.error_msg
    assert response.result.report.reward == 8.0 and response.result.plan_id == robot.previews[-1].plan_id
    assert response.result.plan_id not in {plan.plan_id for plan in robot.plans}  # the bridge never sees it


@pytest.mark.ros
def test_execute_goal_is_cancelled_between_denoising_steps(planner, ros_peer):
    from action_msgs.msg import GoalStatus

    from eva_msgs.action import ExecuteInstruction

    robot = Robot(ros_peer, image=rgb_image())
    planner("-p", "steps:=1000")  # minutes of planning unless the cancellation is honoured
    actions = ActionPeer(ros_peer)
    goal_handle = actions.send(instruction="fold the towel")
    ros_peer.spin_until(lambda: any(message.progress > 0 for message in actions.feedback), 60, "denoising progress")
    cancel = goal_handle.cancel_goal_async()
    ros_peer.spin_until(cancel.done, 30, "the cancel response")
    response = actions.result(goal_handle)

    assert response.status == GoalStatus.STATUS_CANCELED
    assert response.result.error_code == ExecuteInstruction.Result.CANCELED
    assert "while planning" in response.result.error_msg and response.result.plan_id == ""
    assert max(message.progress for message in actions.feedback) < 0.5
    assert not robot.plans
