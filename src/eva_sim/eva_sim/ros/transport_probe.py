"""Transport probe: publish, receive, echo and serve the stack's interfaces over real DDS.

ros2cli is not available with pip-installed ROS 2, so this small tool does what
``ros2 topic pub/echo/hz`` and a scripted action peer would do for eva_msgs, and measures
latency. The demo, the interface tests and ``make bench-transport`` use it; on a robot it checks
that plans of the real size get through the DDS configuration.

  transport_probe send --kind plan --count 3 --rate 1 --frames 49 --height 480 --width 640
  transport_probe receive --kind plan --count 3 --json-out received.json
  transport_probe echo --kind gated_plan --input eva/gated_plan --output probe/gated_plan
  transport_probe serve-execute --steps 5 --step-seconds 0.1

Latency is measured on the wall clock (both ends on one machine): the sender writes the send
time into the header stamp, or into the first 8 bytes of a byte message.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import uuid
from array import array
from pathlib import Path

import numpy as np
import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image
from std_msgs.msg import UInt8MultiArray

from eva_idm.frames import encode_frames, frames_sha256
from eva_idm.ros.conversions import compressed_frames, decode_visual_plan, joint_state, stage_timings
from eva_msgs.action import ExecuteInstruction
from eva_msgs.msg import ExecutionStatus, GatedPlan, VisualPlan
from eva_sim.test_patterns import moving_pattern

KINDS = {
    "image": (Image, "probe/image"),
    "bytes": (UInt8MultiArray, "probe/bytes"),
    "plan": (VisualPlan, "eva/plan"),
    "gated_plan": (GatedPlan, "eva/gated_plan"),
    "status": (ExecutionStatus, "eva/execution_status"),
}
STAMP_BYTES = struct.Struct("<q")


def qos(args: argparse.Namespace) -> QoSProfile:
    """Reliable by default; ``--best-effort`` and ``--transient-local`` switch policies."""
    return QoSProfile(
        depth=args.depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if args.best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if args.transient_local else DurabilityPolicy.VOLATILE,
    )


def wall_stamp(node: Node):
    """Current wall-clock time as a ``builtin_interfaces/Time`` (for cross-process latency)."""
    return Time(nanoseconds=time.time_ns(), clock_type=node.get_clock().clock_type).to_msg()


def sent_ns(message) -> int:
    """The send time the probe stored in ``message``."""
    if isinstance(message, UInt8MultiArray):
        return STAMP_BYTES.unpack(bytes(message.data[: STAMP_BYTES.size]))[0]
    return message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec


class MessageFactory:
    """Builds the messages ``send`` publishes; plans are encoded once and restamped per send."""

    def __init__(self, node: Node, args: argparse.Namespace):
        self.node, self.args = node, args
        self.plan: VisualPlan | None = None
        self.plan_ids: list[str] = []
        if args.kind == "plan":
            self.plan = self._build_plan()
        elif args.kind == "image":
            self.pixels = moving_pattern(1, args.height, args.width, args.seed)[0].tobytes()
        elif args.kind == "bytes":
            self.payload = UInt8MultiArray(data=bytes(args.size))

    def _build_plan(self) -> VisualPlan:
        args = self.args
        video = moving_pattern(args.frames, args.height, args.width, args.seed)
        started = time.perf_counter()
        encoded = encode_frames(video, args.format)
        encode_seconds = time.perf_counter() - started
        plan = VisualPlan(
            instruction=args.instruction, height=args.height, width=args.width,
            fps=float(args.fps), frames_sha256=frames_sha256(encoded), seed=args.seed,
            model_id="transport_probe:moving_pattern", num_inference_steps=0,
            timings=stage_timings({f"{args.format}_encode": encode_seconds}),
        )
        plan.header.frame_id = "head_camera"
        plan.joint_state_at_image = joint_state([f"joint{i}" for i in range(14)], np.linspace(-1.0, 1.0, 14))
        plan.frames = compressed_frames(encoded, plan.header.stamp, plan.header.frame_id)
        return plan

    def make(self, index: int):
        """The ``index``-th message, stamped with the current wall time."""
        if self.args.kind == "bytes":
            # Built once like the other kinds, so only the stamp is written inside the timed span.
            self.payload.data[: STAMP_BYTES.size] = array("B", STAMP_BYTES.pack(time.time_ns()))
            return self.payload
        if self.args.kind == "image":
            message = Image(height=self.args.height, width=self.args.width, encoding="rgb8",
                            step=self.args.width * 3, data=self.pixels)
            message.header.frame_id = "head_camera"
        elif self.args.kind == "plan":
            message = self.plan
            message.plan_id = str(uuid.uuid4())
            self.plan_ids.append(message.plan_id)
        else:
            raise SystemExit(f"--kind: send supports image, bytes and plan, not {self.args.kind!r}")
        message.header.stamp = wall_stamp(self.node)
        return message


def send(node: Node, args: argparse.Namespace) -> dict:
    """Publish ``--count`` messages at ``--rate`` Hz once a subscriber has matched."""
    message_type, topic = KINDS[args.kind]
    publisher = node.create_publisher(message_type, args.topic or topic, qos(args))
    factory = MessageFactory(node, args)
    deadline = time.monotonic() + args.match_timeout
    while publisher.get_subscription_count() < args.subscribers:
        if time.monotonic() > deadline:
            raise SystemExit(f"send: no subscriber matched {publisher.topic_name} within {args.match_timeout} s")
        time.sleep(0.02)
    period, next_time = 1.0 / args.rate, time.monotonic()
    for index in range(args.count):
        publisher.publish(factory.make(index))
        next_time += period
        time.sleep(max(0.0, next_time - time.monotonic()))
    acked = publisher.wait_for_all_acked(Duration(seconds=args.ack_timeout))
    summary = {"kind": args.kind, "topic": publisher.topic_name, "sent": args.count, "acked": bool(acked)}
    if factory.plan is not None:
        plan = factory.plan
        summary.update(plan_ids=factory.plan_ids, frames_sha256=plan.frames_sha256, seed=plan.seed,
                       encoded_bytes=sum(len(frame.data) for frame in plan.frames),
                       encode_seconds=plan.timings[0].seconds)
    return summary


def receive(node: Node, args: argparse.Namespace) -> dict:
    """Receive ``--count`` messages (or until ``--idle-timeout``) and report latency and integrity."""
    message_type, topic = KINDS[args.kind]
    records: list[dict] = []

    def on_message(message) -> None:
        received = time.time_ns()
        record = {"latency_ms": (received - sent_ns(message)) / 1e6, "received_ns": received}
        if isinstance(message, VisualPlan):
            started = time.perf_counter()
            try:
                decode_visual_plan(message)
                record.update(intact=True)
            except ValueError as error:
                record.update(intact=False, error=str(error))
            record.update(plan_id=message.plan_id, decode_seconds=time.perf_counter() - started)
        records.append(record)

    node.create_subscription(message_type, args.topic or topic, on_message, qos(args))
    print(json.dumps({"ready": True}), flush=True)
    last_activity = time.monotonic()
    while len(records) < args.count and time.monotonic() - last_activity < args.idle_timeout:
        before = len(records)
        rclpy.spin_once(node, timeout_sec=0.05)
        if len(records) != before:
            last_activity = time.monotonic()
    return {"kind": args.kind, "received": len(records), "records": records}


def echo(node: Node, args: argparse.Namespace) -> None:
    """Republish every message from ``--input`` on ``--output`` after a full deserialisation."""
    message_type, _ = KINDS[args.kind]
    publisher = node.create_publisher(message_type, args.output, qos(args))
    node.create_subscription(message_type, args.input, publisher.publish, qos(args))
    rclpy.spin(node)


def serve_execute(node: Node, args: argparse.Namespace) -> None:
    """Serve ``eva/execute`` as a scripted peer: planning, gating and executing phases with feedback.

    It exercises the action contract (goal checks, feedback, cancellation between steps, result
    codes) for clients and tests; the planner node serves the real action.
    """
    def accept(goal: ExecuteInstruction.Goal) -> GoalResponse:
        return GoalResponse.ACCEPT

    def execute(goal_handle) -> ExecuteInstruction.Result:
        goal, plan_id = goal_handle.request, str(uuid.uuid4())
        if not goal.instruction.strip():
            goal_handle.abort()
            return ExecuteInstruction.Result(error_code=ExecuteInstruction.Result.INVALID_GOAL,
                                              error_msg="instruction: must not be empty")
        phases = [ExecuteInstruction.Feedback.PLANNING, ExecuteInstruction.Feedback.GATING]
        if not goal.plan_only:
            phases.append(ExecuteInstruction.Feedback.EXECUTING)
        for phase in phases:
            for step in range(args.steps):
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                    return ExecuteInstruction.Result(error_code=ExecuteInstruction.Result.CANCELED,
                                                     error_msg=f"cancelled in phase {phase}", plan_id=plan_id)
                reward = float("nan") if phase == ExecuteInstruction.Feedback.PLANNING else 10.0
                goal_handle.publish_feedback(ExecuteInstruction.Feedback(
                    phase=phase, plan_id=plan_id, progress=(step + 1) / args.steps, reward=reward))
                time.sleep(args.step_seconds)
        goal_handle.succeed()
        result = ExecuteInstruction.Result(error_code=ExecuteInstruction.Result.NONE, plan_id=plan_id)
        result.report.plan_id, result.report.executable, result.report.reward = plan_id, True, 10.0
        return result

    group = ReentrantCallbackGroup()
    ActionServer(node, ExecuteInstruction, "eva/execute", execute_callback=execute, goal_callback=accept,
                 cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=group)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    executor.spin()


def parser() -> argparse.ArgumentParser:
    """Command-line interface (ROS arguments after ``--ros-args`` are passed to rclpy)."""
    root = argparse.ArgumentParser(prog="transport_probe", description=__doc__.split("\n\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    for name in ("send", "receive", "echo", "serve-execute"):
        sub = commands.add_parser(name)
        sub.add_argument("--kind", choices=sorted(KINDS), default="plan")
        sub.add_argument("--topic", default="", help="topic name (default: the kind's standard topic)")
        sub.add_argument("--depth", type=int, default=1)
        sub.add_argument("--best-effort", action="store_true")
        sub.add_argument("--transient-local", action="store_true")
        sub.add_argument("--json-out", type=Path, help="write the summary here instead of stdout")
    send_args = commands.choices["send"]
    send_args.add_argument("--count", type=int, default=1)
    send_args.add_argument("--rate", type=float, default=1.0, help="messages per second [Hz]")
    send_args.add_argument("--frames", type=int, default=49)
    send_args.add_argument("--height", type=int, default=480)
    send_args.add_argument("--width", type=int, default=640)
    send_args.add_argument("--fps", type=float, default=16.0)
    send_args.add_argument("--format", choices=("png", "rgb8"), default="png")
    send_args.add_argument("--size", type=int, default=921_600, help="payload of --kind bytes [B]")
    send_args.add_argument("--seed", type=int, default=0)
    send_args.add_argument("--instruction", default="transport probe")
    send_args.add_argument("--subscribers", type=int, default=1, help="wait for this many subscribers")
    send_args.add_argument("--match-timeout", type=float, default=30.0)
    send_args.add_argument("--ack-timeout", type=float, default=30.0)
    receive_args = commands.choices["receive"]
    receive_args.add_argument("--count", type=int, default=1)
    receive_args.add_argument("--idle-timeout", type=float, default=60.0)
    commands.choices["echo"].add_argument("--input", required=True)
    commands.choices["echo"].add_argument("--output", required=True)
    commands.choices["serve-execute"].add_argument("--steps", type=int, default=5)
    commands.choices["serve-execute"].add_argument("--step-seconds", type=float, default=0.1)
    return root


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transport_probe`` executable."""
    argv = sys.argv if argv is None else argv
    args = parser().parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = Node("transport_probe")
    try:
        summary = {
            "send": send, "receive": receive, "echo": echo, "serve-execute": serve_execute,
        }[args.command](node, args)
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except ValueError as error:  # bad sizes or formats: a message, not a traceback
        print(f"transport_probe {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if summary is not None:
        text = json.dumps(summary, indent=1)
        if args.json_out:
            args.json_out.write_text(text)
        else:
            print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
