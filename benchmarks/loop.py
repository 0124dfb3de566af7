"""`make bench-loop`: latency of the closed loop per stage, the ROS layer's share, and e-stop reaction.

Runs launch/sim.launch.xml (sim robot, bridge, IDM node, planner, lifecycle manager) on this CPU
with the demo's small trained IDM (cached by `make demo`, trained here otherwise) and measures, on
the operator's steady clock:

* per goal: instruction -> plan -> executability report -> gated plan -> first controller command,
  beside the compute the nodes report themselves (planner stage timings, IDM decode and gate), so
  the rest is the ROS layer (DDS transport, serialisation, executors, waiting for the newest image);
* tiny planner (rejected by the gate) and oracle planner (accepted and executed);
* e-stop: pressed during execution once the arms move at half the plan's peak joint speed; from
  publishing ``eva/estop`` to the last message on the controller topics, and to the arms at rest
  (the first ``joint_states`` from which on every joint's |velocity| stays below the bridge's
  ``standstill_velocity``), median and p99; after the e-stop exactly the bridge's stop may come
  (one stop per arm controller, braking to rest), anything else fails the benchmark; and how often
  the arms stopped short of the plan's end.

Between oracle goals the benchmark moves the simulated arms back to the episode's first pose
itself (homing, which the stack leaves to the operator). Writes benchmarks/results/loop.json.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from domain_coordinator import domain_id
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from eva_msgs.action import ExecuteInstruction
from eva_msgs.msg import ExecutionStatus
from eva_sim.ros.stack import RELIABLE, StackClient, StackError, launched_stack

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
ESTOP_SPEED = 0.5  # the e-stop is pressed once the measured joint speed reaches this share of the plan's peak
MAX_REFUSALS = 3  # plans of the e-stop trials the bridge may refuse (each tried again) before the benchmark fails
ESTOP_WINDOW = 2.5  # seconds after the e-stop that each trial records at least (the braking and the arms' lag)
ESTOP_WINDOW_MAX = 15.0  # ... and at most, waiting for standstill_window of still joint_states at its end


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
    # Then until the sim holds its pose exactly (cmd_timeout after the end): under load sim time runs behind
    # the wall clock, and a pose still creeping towards a gripper's stop between the plan's image and the
    # bridge's check can put the bridge's start-offset fade a hair beyond the stop (LIMIT_VIOLATION).
    client.spin_until(lambda: not any(client.recorded.joint_states[-1][1].velocity), 60,
                      "the simulated arms to hold the home pose exactly")
    client.spin_for(1.0)  # and the camera's images (rendered behind) show that pose too
    for publisher in publishers.values():
        client.node.destroy_publisher(publisher)


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99, maximum and count of a list of seconds (with few samples the p99 is near the maximum)."""
    if not values:
        return {"n": 0}
    return {"median": statistics.median(values), "p99": float(np.percentile(values, 99)), "max": max(values),
            "n": len(values)}


def run_goals(client: StackClient, count: int, pose: np.ndarray | None) -> list[dict[str, float]]:
    """``count`` goals in a row, homing before each when ``pose`` is given."""
    rows = []
    for index in range(count):
        if pose is not None:
            home(client, pose)
        outcome = client.execute(300, instruction=f"benchmark goal {index}")
        plan_id = outcome.result.plan_id  # the result can overtake the plan and report on their own topics
        client.spin_until(lambda plan_id=plan_id: client.recorded.report_for(plan_id) is not None and any(
            plan.plan_id == plan_id for _, plan in client.recorded.plans), 30, f"plan {plan_id}'s plan and report")
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


def refused(client: StackClient, pending) -> bool:
    """Whether the bridge rejected or aborted the pending goal's plan."""
    plan_ids = {feedback.plan_id for feedback in pending.feedback if feedback.plan_id}
    return any(status.state in (ExecutionStatus.REJECTED, ExecutionStatus.ABORTED) and status.plan_id in plan_ids
               for _, status in client.recorded.statuses)


def refusal_details(client: StackClient, pending) -> str:
    """The bridge's reason, with the measured pose then and the gated plan's first points (to debug it)."""
    plan_ids = {feedback.plan_id for feedback in pending.feedback if feedback.plan_id}
    reasons = [f"{status.plan_id} code {status.code}: {status.reason}" for _, status in client.recorded.statuses
               if status.plan_id in plan_ids and status.state in (ExecutionStatus.REJECTED, ExecutionStatus.ABORTED)]
    gated = [plan for _, plan in client.recorded.gated_plans if plan.plan_id in plan_ids]
    measured = client.recorded.joint_states[-1][1]
    text = f"{'; '.join(reasons)}; measured now {[repr(value) for value in measured.position]}"
    if gated:
        at_image = gated[-1].joint_state_at_image.position
        points = [[repr(value) for value in point.positions] for point in gated[-1].trajectory.points[:3]]
        text += f"; joint_state_at_image {[repr(value) for value in at_image]}; plan points 0-2 {points}"
    return text


@dataclass(frozen=True)
class StopSettings:
    """What the bridge in the benchmarked stack was configured with, from its controller_bridge.yaml."""

    standstill_velocity: float  # |joint velocity| below this counts as still [rad/s]
    standstill_window: float  # still this long counts as at rest for the window's end [s]
    stop_hold: float  # a stop holds its final pose this long after braking [s]
    stop_lead: float  # a stop's start stamp = send time + this [s]
    goal_tolerance: float  # arms this far from the plan's last point stopped short of it [rad]

    @classmethod
    def read(cls, config_dir: Path) -> StopSettings:
        """The settings in ``config_dir/controller_bridge.yaml``."""
        document = yaml.safe_load((config_dir / "controller_bridge.yaml").read_text())
        parameters = document["controller_bridge"]["ros__parameters"]
        return cls(*(float(parameters[name]) for name in (
            "standstill_velocity", "standstill_window", "stop_hold", "stop_lead", "goal_tolerance")))


def seconds(stamp: object) -> float:
    """A ``builtin_interfaces`` Time or Duration in seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def not_a_stop(message: JointTrajectory, hold: float) -> str:
    """Why ``message`` is not a stop of the bridge (:mod:`eva_idm.stopping`), or '' if it is one.

    A stop: points with positions, velocities and accelerations for every joint; braking ends at
    rest (velocities and accelerations zero) and that pose is held by one more point ``hold`` later.
    The hold is what tells a stop from a plan, which ends at rest too and may carry accelerations.
    """
    points, joints = message.points, len(message.joint_names)
    if not points:
        return "an empty trajectory (JTC rejects it)"
    for index, point in enumerate(points):
        for name in ("positions", "velocities", "accelerations"):
            if len(getattr(point, name)) != joints:
                return (f"{len(points)} points, point {index} with {len(getattr(point, name))} {name} for "
                        f"{joints} joints")
    last = points[-1]
    if any(value != 0.0 for value in (*last.velocities, *last.accelerations)):
        return f"{len(points)} points, the last not at rest"
    if len(points) < 2:
        return "1 point, no held final pose"
    before = points[-2]
    gap = seconds(last.time_from_start) - seconds(before.time_from_start)
    if (not np.allclose(before.positions, last.positions, rtol=0.0, atol=1e-12)
            or any(value != 0.0 for value in (*before.velocities, *before.accelerations))
            or abs(gap - hold) > 1e-6):
        return (f"{len(points)} points over {seconds(last.time_from_start):.3g} s ending at rest without holding "
                f"the final pose stop_hold {hold:g} s (a plan)")
    return ""


def check_stops(after: list[tuple[float, str, JointTrajectory]], hold: float, trial: int) -> None:
    """SystemExit naming what came unless ``after`` (arrival, topic, message) is one stop per arm, stamped alike."""
    seen: dict[str, JointTrajectory] = {}
    for _, topic, message in after:
        if topic not in {arm for arm, _ in ARMS}:
            raise SystemExit(f"bench-loop: trial {trial}: after the e-stop, a message on {topic}, which the split "
                             "layout does not use")
        if topic in seen:
            raise SystemExit(f"bench-loop: trial {trial}: after the e-stop, a second message on {topic} "
                             f"({len(message.points)} points) after its stop")
        problem = not_a_stop(message, hold)
        if problem:
            raise SystemExit(f"bench-loop: trial {trial}: after the e-stop, {topic} got {problem}, not a stop")
        seen[topic] = message
    missing = [arm for arm, _ in ARMS if arm not in seen]
    if missing:
        raise SystemExit(f"bench-loop: trial {trial}: no stop on {', '.join(missing)} after the e-stop")
    if len({(m.header.stamp.sec, m.header.stamp.nanosec) for m in seen.values()}) != 1:
        raise SystemExit(f"bench-loop: trial {trial}: the arms' stops carry different start stamps")


def still(message: JointState, threshold: float) -> bool:
    """Whether every joint's |velocity| in ``message`` is below ``threshold`` (no velocities: not known still)."""
    return len(message.velocity) > 0 and speed(message) < threshold


def at_rest_from(states: list[tuple[float, JointState]], threshold: float) -> tuple[float, JointState] | None:
    """The first of ``states`` (arrival, message) from which on every joint's |velocity| < ``threshold``."""
    rest = None
    for arrival, message in states:
        rest = (rest or (arrival, message)) if still(message, threshold) else None
    return rest


def speed(message: JointState) -> float:
    """The largest |joint velocity| in ``message`` [rad/s]."""
    return max((abs(value) for value in message.velocity), default=0.0)


def plan_commands(client: StackClient, since: float, plan: dict[str, JointTrajectory]) -> bool:
    """Fill ``plan`` with the arm controllers' commands received since ``since``; whether both arms have one."""
    plan.update((topic, message) for at, topic, message in client.recorded.commands if at >= since and message.points)
    return all(arm in plan for arm, _ in ARMS)


def distance_to_plan_end(final: JointState, plan: dict[str, JointTrajectory]) -> float:
    """Largest |final position - the plan's last point| over the joints the plan commanded."""
    measured = dict(zip(final.name, final.position, strict=True))
    return max(abs(measured[name] - target) for message in plan.values()
               for name, target in zip(message.joint_names, message.points[-1].positions, strict=True))


def rearm(client: StackClient, trial: int, attempts: int = 3) -> bool:
    """Call ``eva/rearm`` with a fresh service client per attempt (a request can be lost right after discovery)."""
    for attempt in range(1, attempts + 1):
        try:
            return client.rearm().success
        except StackError as error:
            print(f"    e-stop trial {trial}: eva/rearm attempt {attempt} of {attempts}: {error}", flush=True)
    raise SystemExit(f"bench-loop: e-stop trial {trial}: eva/rearm never answered ({attempts} attempts)")


def estop_trials(client: StackClient, pose: np.ndarray, trials: int, settings: StopSettings,
                 refusals: list[str]) -> list[dict]:
    """Per trial: e-stop -> last controller message and -> arms at rest; fails unless only the stops follow it.

    A plan the bridge refuses is tried again (its reason appended to ``refusals``), at most MAX_REFUSALS times.
    """
    rows = []
    trial = 0
    while len(rows) < trials:
        home(client, pose)
        pending = client.send_goal(instruction=f"e-stop trial {trial}")
        client.spin_until(lambda pending=pending: executing(client, pending) or refused(client, pending), 120,
                          "execution to start")
        if refused(client, pending):
            refusals.append(refusal_details(client, pending))
            print(f"    e-stop trial {trial}: the bridge refused the plan, trying again: {refusals[-1]}", flush=True)
            if len(refusals) > MAX_REFUSALS:
                raise SystemExit(f"bench-loop: the bridge refused {len(refusals)} plans of the e-stop trials")
            continue
        # Press while the arms move fast (a press right after the start finds them nearly still, as the
        # oracle's reach starts slowly): at ESTOP_SPEED of the plan's peak commanded joint speed.
        plan = {}
        client.spin_until(lambda since=pending.sent_at, plan=plan: plan_commands(client, since, plan), 30,
                          "the plan's commands")
        peak = max(abs(value) for message in plan.values() for point in message.points for value in point.velocities)
        client.spin_until(lambda fast=ESTOP_SPEED * peak: speed(client.recorded.joint_states[-1][1]) >= fast, 120,
                          f"the arms to reach {ESTOP_SPEED:g} of the plan's peak joint speed {peak:.3g} rad/s")
        speed_at_press = speed(client.recorded.joint_states[-1][1])
        pressed = client.estop(True)
        client.wait_result(pending, 60)

        def settled(pressed=pressed) -> bool:
            """ESTOP_WINDOW has passed and the joint_states of the last standstill_window were all still."""
            now = time.monotonic()
            if now - pressed < ESTOP_WINDOW:
                return False
            recent = list(itertools.takewhile(lambda item: item[0] >= now - settings.standstill_window,
                                              reversed(client.recorded.joint_states)))
            return bool(recent) and all(still(message, settings.standstill_velocity) for _, message in recent)

        with contextlib.suppress(StackError):
            client.spin_until(settled, ESTOP_WINDOW_MAX, "the arms to come to rest")
        after = [(at, topic, message) for at, topic, message in client.recorded.commands if at >= pressed]
        check_stops(after, settings.stop_hold, trial)
        before = [(at, m) for at, m in client.recorded.joint_states if at < pressed]
        states = [(at, m) for at, m in client.recorded.joint_states if at >= pressed]
        rest = at_rest_from(states, settings.standstill_velocity)
        stop = after[0][2]
        row = {"estop_to_last_command_s": after[-1][0] - pressed,
               "estop_to_rest_s": rest[0] - pressed if rest else None,
               # Sim time at the press: the newest joint_states before it plus the wall time since (real time).
               "estop_to_rest_sim_s": (seconds(rest[1].header.stamp) - seconds(before[-1][1].header.stamp)
                                       - (pressed - before[-1][0])) if rest and before else None,
               # From the bridge's sim clock when it sent the stop (the stop's stamp - stop_lead) to rest.
               "stop_sent_to_rest_sim_s": (seconds(rest[1].header.stamp) - seconds(stop.header.stamp)
                                           + settings.stop_lead) if rest else None,
               "braking_s": seconds(stop.points[-2].time_from_start),  # the stop's planned braking time
               "speed_at_estop": speed_at_press, "plan_peak_speed": peak,  # largest |joint velocity| [rad/s]
               "stop_points": len(stop.points),
               "distance_to_plan_end": distance_to_plan_end(states[-1][1], plan) if plan and states else None}
        row["stopped_short"] = (row["distance_to_plan_end"] > settings.goal_tolerance
                                if row["distance_to_plan_end"] is not None else None)
        rows.append(row)
        client.estop(False)
        if not rearm(client, trial):
            raise SystemExit("bench-loop: eva/rearm refused after the e-stop was released")
        rest_text = f"{row['estop_to_rest_s'] * 1000:.0f} ms" if rest else "not within the window"
        print(f"    e-stop trial {trial} at {speed_at_press:.2f} rad/s: last command "
              f"{row['estop_to_last_command_s'] * 1000:.1f} ms, at rest {rest_text} after the e-stop (braking "
              f"{row['braking_s'] * 1000:.0f} ms planned); "
              f"{'stopped short of' if row['stopped_short'] else 'reached'} the plan's end", flush=True)
        trial += 1
    return rows


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
    settings = StopSettings.read(config_dir)
    refusals: list[str] = []
    print("tiny planner (plans rejected by the gate):", flush=True)
    tiny = run_stack(config_dir, config_dir / "planner_tiny.yaml", assets.checkpoint, SCRATCH / "logs_tiny",
                     lambda client: run_goals(client, TINY_GOALS, None))
    print("oracle planner (plans accepted and executed), then e-stops during execution:", flush=True)
    oracle, estops = run_stack(config_dir, config_dir / "planner_oracle.yaml", assets.checkpoint,
                               SCRATCH / "logs_oracle",
                               lambda client: (run_goals(client, ORACLE_GOALS, pose),
                                               estop_trials(client, pose, ESTOP_TRIALS, settings, refusals)))
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
        "estop_to_last_command_s": summary([row["estop_to_last_command_s"] for row in estops]),
        "estop_to_rest_s": summary([row["estop_to_rest_s"] for row in estops if row["estop_to_rest_s"] is not None]),
        "estop_to_rest_sim_s": summary([row["estop_to_rest_sim_s"] for row in estops
                                        if row["estop_to_rest_sim_s"] is not None]),
        "estop_not_at_rest": sum(row["estop_to_rest_s"] is None for row in estops),
        "estop_stopped_short_share": (sum(bool(row["stopped_short"]) for row in estops) / len(estops)),
        "estop_plans_refused": refusals,
        "estop_rest": {"standstill_velocity": settings.standstill_velocity,
                       "stopped_short": f"final pose farther than goal_tolerance {settings.goal_tolerance:g} rad "
                                        "from the plan's last point"},
        "raw": {"tiny": tiny, "oracle": oracle, "estop": estops},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: result[key] for key in ("tiny_planner", "oracle_planner", "estop_to_last_command_s",
                                                    "estop_to_rest_s", "estop_to_rest_sim_s",
                                                    "estop_stopped_short_share")},
                     indent=1))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
