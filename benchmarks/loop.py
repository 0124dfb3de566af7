"""`make bench-loop`: latency of the closed loop per stage, the ROS layer's share, and e-stop reaction.

Runs launch/sim.launch.xml (sim robot, bridge, IDM node, planner, lifecycle manager) on this CPU
with the demo's small trained IDM (cached by `make demo`, trained here otherwise) and measures, on
the operator's steady clock:

* per goal: instruction -> plan -> executability report -> gated plan -> first controller command,
  beside the compute the nodes report themselves (planner stage timings, IDM decode and gate), so
  the rest is the ROS layer (DDS transport, serialisation, executors, waiting for the newest image);
* tiny planner (rejected by the gate) and oracle planner (accepted and executed);
* e-stop: from publishing ``eva/estop`` during execution to the last message on the controller
  topics (the bridge's hold), median and p99, and that nothing else follows.

Between oracle goals the benchmark moves the simulated arms back to the episode's first pose
itself (homing, which the stack leaves to the operator). Writes benchmarks/results/loop.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
from domain_coordinator import domain_id
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from eva_msgs.action import ExecuteInstruction
from eva_msgs.msg import ExecutionStatus
from eva_sim.ros.stack import RELIABLE, StackClient, launched_stack

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from demo import DEFAULT_CACHE, LAUNCH, MANAGED, ORACLE_FRAMES, write_config  # noqa: E402

from eva_training.demo_assets import choose_oracle_episode, ensure_demo_idm  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "loop.json"
SCRATCH = ROOT / "benchmarks" / "scratch" / "loop"
TINY_GOALS = 5
ORACLE_GOALS = 3
ESTOP_TRIALS = 30
ARMS = (("left_arm_controller/joint_trajectory", slice(0, 7)), ("right_arm_controller/joint_trajectory", slice(7, 14)))


def stage_latencies(client: StackClient, outcome) -> dict[str, float]:
    """Seconds between the stages of one goal's plan, on the operator's clock, and the nodes' own compute."""
    plan_id = outcome.result.plan_id
    plan_at, plan = next((at, p) for at, p in client.recorded.plans if p.plan_id == plan_id)
    report_at, report = next((at, r) for at, r in client.recorded.reports if r.plan_id == plan_id)
    stages = {"instruction_to_plan": plan_at - outcome.sent_at, "plan_to_report": report_at - plan_at}
    planner_compute = next((t.seconds for t in plan.timings if t.stage == "total"),
                           sum(t.seconds for t in plan.timings))
    idm_compute = sum(t.seconds for t in report.timings)
    end_at = report_at
    gated = [at for at, g in client.recorded.gated_plans if g.plan_id == plan_id]
    if gated:
        stages["report_to_gated_plan"] = gated[0] - report_at
        command = [at for at, _, message in client.recorded.commands if message.points and at >= gated[0]]
        if command:
            stages["gated_plan_to_controller_topic"] = command[0] - gated[0]
            end_at = command[0]
    total = end_at - outcome.sent_at
    compute = planner_compute + idm_compute
    return {**stages, "total": total, "planner_compute": planner_compute, "idm_compute": idm_compute,
            "ros_overhead": total - compute, "overhead_ratio": (total - compute) / compute}


def home(client: StackClient, pose: np.ndarray, seconds: float = 3.0) -> None:
    """Drive the simulated arms to ``pose`` directly on their controller topics and let them settle."""
    measured = client.wait_for_joint_states()
    names = list(measured.name)
    publishers = {topic: client.node.create_publisher(JointTrajectory, topic, RELIABLE) for topic, _ in ARMS}
    for topic, joints in ARMS:
        publisher = publishers[topic]
        client.spin_until(lambda p=publisher: p.get_subscription_count() >= 2, 30, f"subscribers of {topic}")
        point = JointTrajectoryPoint(positions=[float(value) for value in pose[joints]])
        point.time_from_start.sec = int(seconds)
        publisher.publish(JointTrajectory(joint_names=names[joints], points=[point]))
    client.spin_for(seconds + 2.0)
    for publisher in publishers.values():
        client.node.destroy_publisher(publisher)


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99, maximum and count of a list of seconds (with few samples the p99 is near the maximum)."""
    return {"median": statistics.median(values), "p99": float(np.percentile(values, 99)), "max": max(values),
            "n": len(values)}


def run_goals(client: StackClient, count: int, pose: np.ndarray | None) -> list[dict[str, float]]:
    """``count`` goals in a row, homing before each when ``pose`` is given."""
    rows = []
    for index in range(count):
        if pose is not None:
            home(client, pose)
        outcome = client.execute(300, instruction=f"benchmark goal {index}")
        row = stage_latencies(client, outcome)
        row["result"] = outcome.result.error_code
        rows.append(row)
        verdict = "executed" if outcome.result.error_code == ExecuteInstruction.Result.NONE else "not executed"
        print(f"    goal {index}: {verdict}, total {row['total']:.2f} s, overhead ratio {row['overhead_ratio']:.2f}",
              flush=True)
    return rows


def executing(client: StackClient, pending) -> bool:
    """Whether the bridge reports the pending goal's plan as executing."""
    plan_ids = {feedback.plan_id for feedback in pending.feedback if feedback.plan_id}
    return any(status.state == ExecutionStatus.EXECUTING and status.plan_id in plan_ids
               for _, status in client.recorded.statuses)


def estop_trials(client: StackClient, pose: np.ndarray, trials: int) -> list[float]:
    """Seconds from the e-stop to the last controller message, per trial; fails if a command follows the hold."""
    reactions = []
    for trial in range(trials):
        home(client, pose)
        pending = client.send_goal(instruction=f"e-stop trial {trial}")
        client.spin_until(lambda pending=pending: executing(client, pending), 120, "execution to start")
        client.spin_for(0.5)
        pressed = client.estop(True)
        client.wait_result(pending, 60)
        client.spin_for(2.0)
        after = [(at, message) for at, _, message in client.recorded.commands if at >= pressed]
        if any(message.points for _, message in after):
            raise SystemExit(f"bench-loop: a trajectory was sent after the e-stop in trial {trial}")
        reactions.append(after[-1][0] - pressed if after else float("nan"))
        client.estop(False)
        if not client.rearm().success:
            raise SystemExit("bench-loop: eva/rearm refused after the e-stop was released")
        print(f"    e-stop trial {trial}: last command {reactions[-1] * 1000:.1f} ms after the e-stop", flush=True)
    return reactions


def run_stack(config_dir: Path, planner_config: Path, checkpoint: Path, logs: Path, body):
    """Start the sim stack, run ``body(client)`` and return its value."""
    arguments = {"config_dir": str(config_dir), "planner_config": str(planner_config),
                 "idm_checkpoint": str(checkpoint)}
    with domain_id() as domain, launched_stack(LAUNCH, arguments, logs, domain):
        client = StackClient(domain, "eva_bench")
        try:
            client.wait_active(MANAGED, timeout=300)
            client.wait_for_joint_states()
            return body(client)
        finally:
            client.close()


def main() -> int:
    """Run the benchmark and write its JSON."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    assets = ensure_demo_idm(DEFAULT_CACHE)
    choice = choose_oracle_episode(assets, ORACLE_FRAMES)
    pose = choice.record.actions[0]
    config_dir = SCRATCH / "config"
    write_config(config_dir, choice.record.files.hdf5_path, pose, choice.record.image_size)
    print("tiny planner (plans rejected by the gate):", flush=True)
    tiny = run_stack(config_dir, config_dir / "planner_tiny.yaml", assets.checkpoint, SCRATCH / "logs_tiny",
                     lambda client: run_goals(client, TINY_GOALS, None))
    print("oracle planner (plans accepted and executed), then e-stops during execution:", flush=True)
    oracle, estops = run_stack(config_dir, config_dir / "planner_oracle.yaml", assets.checkpoint,
                               SCRATCH / "logs_oracle",
                               lambda client: (run_goals(client, ORACLE_GOALS, pose),
                                               estop_trials(client, pose, ESTOP_TRIALS)))
    keys = ("instruction_to_plan", "plan_to_report", "report_to_gated_plan", "gated_plan_to_controller_topic",
            "total", "planner_compute", "idm_compute", "ros_overhead", "overhead_ratio")
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {"launch": "launch/sim.launch.xml", "idm": str(assets.checkpoint.relative_to(ROOT)),
                  "oracle_episode": choice.record.episode_id, "clock": "operator's steady clock"},
        "tiny_planner": {key: summary([row[key] for row in tiny if key in row]) for key in keys
                         if any(key in row for row in tiny)},
        "oracle_planner": {key: summary([row[key] for row in oracle if key in row]) for key in keys
                           if any(key in row for row in oracle)},
        "oracle_executed": sum(row["result"] == ExecuteInstruction.Result.NONE for row in oracle),
        "estop_to_last_command_s": summary([value for value in estops if value == value]),
        "raw": {"tiny": tiny, "oracle": oracle, "estop": estops},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: result[key] for key in ("tiny_planner", "oracle_planner", "estop_to_last_command_s")},
                     indent=1))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
