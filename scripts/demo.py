"""`make demo`: the stack's message flow between real ROS 2 processes, with a readable summary.

At this stage of the project the demo exercises the transport the closed loop will run on:
a separate process publishes 49-frame 480x640 video plans (PNG, SHA-256) that this process
receives, verifies and writes out as a GIF; then an `eva/execute` goal runs against a scripted
action peer with feedback per phase. Results go to demo_out/.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import imageio.v3 as iio
import rclpy
from domain_coordinator import domain_id
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from eva_idm.ros.conversions import decode_visual_plan
from eva_msgs.action import ExecuteInstruction
from eva_msgs.msg import VisualPlan
from eva_sim.processes import NodeProcess, find_executable, ros_environment

OUT = Path(__file__).resolve().parents[1] / "demo_out"
PLANS = 3
PHASES = {0: "waiting for image", 1: "planning", 2: "gating", 3: "executing"}


def say(text: str) -> None:
    """Print a demo step."""
    print(text, flush=True)


def spin_until(executor: SingleThreadedExecutor, predicate, timeout: float, what: str) -> None:
    """Spin until ``predicate()`` holds, or stop the demo with a message naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


def receive_plans(node: Node, executor: SingleThreadedExecutor, env: dict[str, str]) -> list[dict]:
    """Step 1: plans from another process, checked frame by frame."""
    say(f"\n[1/2] Video plans: a separate process publishes {PLANS} plans of 49 PNG frames (480x640) on eva/plan")
    received: list[tuple[VisualPlan, int]] = []
    node.create_subscription(VisualPlan, "eva/plan", lambda plan: received.append((plan, time.time_ns())),
                             QoSProfile(depth=PLANS, reliability=ReliabilityPolicy.RELIABLE))
    command = [find_executable("eva_sim", "transport_probe"), "send", "--kind", "plan", "--count", str(PLANS),
               "--instruction", "stack the bowls", "--seed", "3"]
    with NodeProcess(command, OUT / "logs" / "plan_sender.log", env):
        spin_until(executor, lambda: len(received) == PLANS, 120, f"{PLANS} plans")
    rows = []
    for plan, arrived_ns in received:
        stamp_ns = plan.header.stamp.sec * 1_000_000_000 + plan.header.stamp.nanosec
        started = time.perf_counter()
        frames = decode_visual_plan(plan)  # raises if the hash or any frame is wrong
        png_bytes = sum(len(frame.data) for frame in plan.frames)
        rows.append({"plan_id": plan.plan_id, "frames": len(plan.frames), "png_bytes": png_bytes,
                     "latency_ms": (arrived_ns - stamp_ns) / 1e6, "decode_s": time.perf_counter() - started,
                     "sha256_ok": True})
        say(f"      plan {plan.plan_id[:8]}: {len(plan.frames)} frames, {rows[-1]['png_bytes'] / 1e6:.1f} MB PNG, "
            f"delivered in {rows[-1]['latency_ms']:.0f} ms, hash verified, decoded in {rows[-1]['decode_s']:.2f} s")
    iio.imwrite(OUT / "plan.gif", frames[::2, ::2, ::2], duration=1000 / 16, loop=0)
    say(f"      wrote {OUT.name}/plan.gif (the last plan's frames)")
    return rows


def execute_instruction(node: Node, executor: SingleThreadedExecutor, env: dict[str, str]) -> dict:
    """Step 2: one eva/execute goal with feedback through a scripted action peer."""
    say("\n[2/2] Action: eva/execute goal 'put the cup on the plate' (served by a scripted peer process)")
    command = [find_executable("eva_sim", "transport_probe"), "serve-execute", "--steps", "3"]
    with NodeProcess(command, OUT / "logs" / "execute_server.log", env):
        client = ActionClient(node, ExecuteInstruction, "eva/execute")
        spin_until(executor, client.server_is_ready, 60, "the eva/execute server")
        phases: list[str] = []

        def on_feedback(message) -> None:
            phase = PHASES.get(message.feedback.phase, str(message.feedback.phase))
            if not phases or phases[-1] != phase:
                phases.append(phase)
                reward = message.feedback.reward
                say(f"      feedback: {phase}" + ("" if math.isnan(reward) else f" (reward {reward:.2f})"))

        goal = ExecuteInstruction.Goal(instruction="put the cup on the plate", seed=-1)
        sent = client.send_goal_async(goal, feedback_callback=on_feedback)
        spin_until(executor, sent.done, 30, "goal acceptance")
        result_future = sent.result().get_result_async()
        spin_until(executor, result_future.done, 60, "the result")
        result = result_future.result().result
    say(f"      result: error_code {result.error_code} ({'success' if result.error_code == 0 else result.error_msg})")
    return {"phases": phases, "error_code": result.error_code, "plan_id": result.plan_id}


def main() -> None:
    """Run both steps on a free ROS domain and write demo_out/transport_summary.json."""
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    say("EVA for ROS 2 demo: message flow between real ROS 2 processes over Fast DDS (this machine only)")
    with domain_id() as domain:
        env = ros_environment(domain)
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        node = Node("eva_demo", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            summary = {"ros_domain_id": domain, "plans": receive_plans(node, executor, env),
                       "execute": execute_instruction(node, executor, env)}
        finally:
            executor.shutdown()
            node.destroy_node()
            context.try_shutdown()
    (OUT / "transport_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    latencies = sorted(row["latency_ms"] for row in summary["plans"])
    say("\nSummary")
    median = latencies[len(latencies) // 2]
    say(f"  plans delivered intact: {len(summary['plans'])}/{PLANS}, median latency {median:.0f} ms")
    say(f"  eva/execute phases: {' -> '.join(summary['execute']['phases'])}; "
        f"result {'succeeded' if summary['execute']['error_code'] == 0 else 'failed'}")
    say(f"  report: {OUT.name}/transport_summary.json, plan video: {OUT.name}/plan.gif, logs: {OUT.name}/logs/")


if __name__ == "__main__":
    main()
