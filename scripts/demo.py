"""`make demo`: the closed loop on the simulated aloha-agilex with tiny models, in a few minutes on a CPU.

1. A small IDM is trained once on synthetic episodes of the simulated arms and cached (the command
   lines that reproduce it are printed); the gate keeps the robot's thresholds.
2. The stack of launch/sim.launch.xml (sim robot, controller bridge, IDM node, planner, lifecycle
   manager) runs with the tiny random world model: an instruction through ``eva/execute`` is
   planned, decoded and rejected by the gate, with the reason.
3. The same stack runs with the oracle planner, which serves a synthetic episode's video as the
   plan (EVA's "IDM on ground-truth video"): decoded, accepted, executed on the simulated arms.

Writes demo_out/: the plan video (MP4 and GIF), decode vs executed spline vs measured joints per
arm (PNG), a JSON report with tracking errors, the run as MCAP, and every node's log.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from domain_coordinator import domain_id

from eva_idm.embodiment import load_embodiment
from eva_idm.idm import load_checkpoint
from eva_idm.ros.conversions import decode_visual_plan
from eva_idm.trajectory import Trajectory, sample_uniform
from eva_msgs.action import ExecuteInstruction
from eva_sim.ros.stack import GoalOutcome, StackClient, launched_stack
from eva_training.demo_assets import choose_oracle_episode, demo_idm_cached, ensure_demo_idm
from eva_training.plots import Series, plot_arm_trajectories

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "demo_out"
DEFAULT_CACHE = ROOT / ".cache" / "eva-demo"
LAUNCH = ROOT / "launch" / "sim.launch.xml"
MANAGED = ("controller_bridge", "idm_node", "planner_node")
ORACLE_FRAMES = 49
PHASES = {0: "waiting for an image", 1: "planning", 2: "gating", 3: "executing"}
RESULTS = {getattr(ExecuteInstruction.Result, name): name for name in dir(ExecuteInstruction.Result)
           if name.isupper() and isinstance(getattr(ExecuteInstruction.Result, name), int)}
RESULTS[ExecuteInstruction.Result.NONE] = "SUCCEEDED"


def say(text: str) -> None:
    """Print a demo step."""
    print(text, flush=True)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (what a newcomer typed)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_config(directory: Path, oracle_episode: Path, start_pose: np.ndarray, camera: tuple[int, int]) -> None:
    """``config/`` copied to ``directory`` with the demo's values: oracle episode, start pose, camera size."""
    shutil.copytree(ROOT / "config", directory, dirs_exist_ok=True)

    def update(name: str, node: str, values: dict) -> None:
        path = directory / name
        document = yaml.safe_load(path.read_text()) if path.exists() else {node: {"ros__parameters": {}}}
        document[node]["ros__parameters"].update(values)
        path.write_text(yaml.safe_dump(document, sort_keys=False))

    update("sim_robot.yaml", "sim_robot", {"initial_positions": [float(value) for value in start_pose],
                                           "camera_height": camera[0], "camera_width": camera[1]})
    tiny = yaml.safe_load((ROOT / "config" / "planner_tiny.yaml").read_text())["planner_node"]["ros__parameters"]
    (directory / "planner_oracle.yaml").write_text(yaml.safe_dump({"planner_node": {"ros__parameters": {
        **tiny, "model": f"oracle:{oracle_episode}", "num_frames": ORACLE_FRAMES, "height": camera[0],
        "width": camera[1]}}}, sort_keys=False))


def run_goal(client: StackClient, instruction: str, timeout: float) -> GoalOutcome:
    """Send one ``eva/execute`` goal, printing each phase as the planner reports it."""
    seen: list[int] = []

    def show(feedback: ExecuteInstruction.Feedback) -> None:
        if not seen or feedback.phase != seen[-1]:
            seen.append(feedback.phase)
            say(f"      ... {PHASES.get(feedback.phase, feedback.phase)}")

    say(f"    goal: {instruction!r}")
    outcome = client.execute(timeout, show, instruction=instruction)
    result = outcome.result
    say(f"    result: {RESULTS.get(result.error_code, result.error_code)} after "
        f"{outcome.ended_at - outcome.sent_at:.1f} s; EVA reward {result.report.reward:.2f}")
    say(f"    reason: {result.error_msg or result.report.reason}")
    return outcome


def run_stack(config_dir: Path, planner_config: Path, checkpoint: Path, logs: Path,
              instruction: str) -> tuple[GoalOutcome, StackClient]:
    """Start the sim stack, send one goal, and return its outcome with the client's recordings."""
    arguments = {"config_dir": str(config_dir), "planner_config": str(planner_config),
                 "idm_checkpoint": str(checkpoint)}
    with domain_id() as domain, launched_stack(LAUNCH, arguments, logs, domain):
        client = StackClient(domain)
        try:
            say("    starting sim_robot, controller_bridge, idm_node, planner_node, lifecycle_manager ...")
            client.wait_active(MANAGED, timeout=300)
            client.wait_for_joint_states()
            outcome = run_goal(client, instruction, timeout=300)
            client.spin_for(1.0)  # the last statuses and joint states
        finally:
            client.close()
    return outcome, client


def seconds(stamp: object) -> float:
    """A ``builtin_interfaces`` Time or Duration in seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def executed_series(client: StackClient, plan_id: str) -> tuple[Series, Series, np.ndarray] | None:
    """Commanded spline and measured joints of the executed plan, on the command's sim-time axis."""
    commands = [message for _, _, message in client.recorded.commands if message.points]
    gated = next((message for _, message in client.recorded.gated_plans if message.plan_id == plan_id), None)
    if not commands or gated is None:
        return None
    start = seconds(commands[0].header.stamp)
    trajectory = gated.trajectory
    planned = Trajectory(tuple(trajectory.joint_names),
                         np.array([seconds(point.time_from_start) for point in trajectory.points]),
                         np.array([p.positions for p in trajectory.points]),
                         np.array([p.velocities for p in trajectory.points]))
    times, positions, _, _ = sample_uniform(planned, 100.0)
    measured_times, measured = [], []
    for _, state in client.recorded.joint_states:
        stamp = seconds(state.header.stamp) - start
        if -0.5 <= stamp <= times[-1] + 1.0:
            order = [list(state.name).index(name) for name in trajectory.joint_names]
            measured_times.append(stamp)
            measured.append(np.asarray(state.position)[order])
    measured = np.array(measured)
    commanded_at_measured = np.array([np.interp(measured_times, times, positions[:, joint])
                                      for joint in range(positions.shape[1])]).T
    tracking = np.abs(measured - commanded_at_measured)
    return (Series("executed spline (commanded)", times, positions),
            Series("measured (sim joint_states)", np.array(measured_times), measured), tracking)


def write_mcap(client: StackClient, path: Path) -> dict[str, int]:
    """Everything the client received, as an MCAP Foxglove opens (log time = arrival, wall clock)."""
    from rclpy.serialization import serialize_message

    from eva_training.bags import BagWriter

    wall_offset = time.time() - time.monotonic()
    recorded = client.recorded
    streams = [("/joint_states", "sensor_msgs/msg/JointState", recorded.joint_states),
               ("/eva/plan", "eva_msgs/msg/VisualPlan", recorded.plans),
               ("/eva/executability", "eva_msgs/msg/ExecutabilityReport", recorded.reports),
               ("/eva/gated_plan", "eva_msgs/msg/GatedPlan", recorded.gated_plans),
               ("/eva/execution_status", "eva_msgs/msg/ExecutionStatus", recorded.statuses)]
    messages = [(at, topic, msgtype, message) for topic, msgtype, items in streams for at, message in items]
    messages += [(at, f"/{topic}", "trajectory_msgs/msg/JointTrajectory", message)
                 for at, topic, message in recorded.commands]
    with BagWriter(path) as writer:
        for at, topic, msgtype, message in sorted(messages, key=lambda item: item[0]):
            writer.write_raw(topic, serialize_message(message), int((at + wall_offset) * 1e9), msgtype)
        return dict(writer.counts)


def write_outputs(out: Path, client: StackClient, outcome: GoalOutcome, checkpoint: Path,
                  rejected: GoalOutcome) -> dict:
    """The plan video, the decode/spline/measured PNG and the JSON report; returns the report."""
    import imageio.v3 as iio

    embodiment = load_embodiment("aloha_agilex")
    plan = next(message for _, message in client.recorded.plans if message.plan_id == outcome.result.plan_id)
    frames = decode_visual_plan(plan)
    iio.imwrite(out / "plan.mp4", frames, plugin="FFMPEG", fps=plan.fps, codec="libx264")
    iio.imwrite(out / "plan.gif", frames, extension=".gif", duration=1000.0 / plan.fps, loop=0)
    idm = load_checkpoint(checkpoint, embodiment.name, embodiment.joint_names)
    decoded = idm.decode_video(frames, fps=plan.fps).numpy()
    time_scale = outcome.result.report.time_scale or 1.0  # the gate plays the plan this much slower
    series = [Series(f"raw IDM decode (plan time / {time_scale:g})", np.arange(len(decoded)) / plan.fps / time_scale,
                     decoded)]
    executed = executed_series(client, plan.plan_id)
    report = {"rejected_plan": {"instruction": "tiny world model", "result": RESULTS[rejected.result.error_code],
                                "reason": rejected.result.report.reason or rejected.result.error_msg,
                                "reward": rejected.result.report.reward},
              "oracle_plan": {"plan_id": plan.plan_id, "model_id": plan.model_id,
                              "result": RESULTS[outcome.result.error_code], "reason": outcome.result.error_msg,
                              "gate": outcome.result.report.reason, "reward": outcome.result.report.reward,
                              "time_scale": outcome.result.report.time_scale,
                              "goal_seconds": outcome.ended_at - outcome.sent_at}}
    if executed is not None:
        commanded, measured, tracking = executed
        series += [commanded, measured]
        report["tracking_error"] = {
            "max_per_joint": dict(zip(embodiment.joint_names, tracking.max(axis=0).round(4).tolist(), strict=True)),
            "mean_per_joint": dict(zip(embodiment.joint_names, tracking.mean(axis=0).round(4).tolist(), strict=True)),
            "max": float(tracking.max()), "unit": "rad (grippers 0..1)"}
        statuses = client.recorded.statuses_for(plan.plan_id)
        report["bridge_max_tracking_error"] = max((status.max_tracking_error for status in statuses), default=None)
    plot_arm_trajectories(series, embodiment, f"oracle plan {plan.model_id}: decode, executed spline, measured",
                          out / "joints.png")
    report["mcap_messages"] = write_mcap(client, out / "run.mcap")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The demo's two places: where it writes its outputs and where it caches the trained IDM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory, replaced on every run "
                        "(default: demo_out/)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the demo's IDM is trained once "
                        "and kept (default: .cache/eva-demo/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when the tiny plan was rejected and the oracle plan executed."""
    arguments = parse_arguments(argv)
    out, cache = arguments.out.resolve(), arguments.cache.resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / "config").is_dir():
        raise SystemExit(f"demo: {out} is not empty and holds no earlier demo output; choose another --out")
    started = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    say("EVA demo: the closed loop on the simulated aloha-agilex, with tiny models on this CPU.")
    say(f"\n[1/3] The demo's IDM (trained once on synthetic episodes, then cached in {shown(cache)})")
    if not demo_idm_cached(cache):
        say("    first run: rendering 8 synthetic episodes and training the IDM on them (about 5 minutes on 2 cores)")
    assets = ensure_demo_idm(cache)
    say("    reproduce it with:\n" + "\n".join(f"      {command}" for command in assets.commands))
    choice = choose_oracle_episode(assets, ORACLE_FRAMES)
    accepted = sum(verdict.executable for verdict in choice.verdicts.values())
    say(f"    oracle episode {choice.record.episode_id} ({accepted} of {len(choice.verdicts)} episodes checked "
        "pass the gate offline)")
    config_dir = out / "config"
    write_config(config_dir, choice.record.files.hdf5_path, choice.record.actions[0], choice.record.image_size)

    say("\n[2/3] Tiny random world model -> IDM -> gate (its plans are noise: the gate must say no, and why)")
    rejected, _ = run_stack(config_dir, config_dir / "planner_tiny.yaml", assets.checkpoint, out / "logs" / "tiny",
                            "pick up the red block")
    say("\n[3/3] Oracle plan (a synthetic episode's video) -> IDM -> gate -> bridge -> simulated arms")
    instruction = choice.record.instructions.seen[0] if choice.record.instructions.seen else "Move both arms."
    executed, client = run_stack(config_dir, config_dir / "planner_oracle.yaml", assets.checkpoint,
                                 out / "logs" / "oracle", instruction)
    report = write_outputs(out, client, executed, assets.checkpoint, rejected)
    ok = rejected.result.error_code == ExecuteInstruction.Result.REJECTED_BY_GATE and executed.succeeded
    say(f"\nSummary ({time.monotonic() - started:.0f} s): tiny plan {report['rejected_plan']['result']}; "
        f"oracle plan {report['oracle_plan']['result']}"
        + (f", max tracking error {report['tracking_error']['max']:.3f}" if "tracking_error" in report else ""))
    say(f"Outputs in {shown(out)}/: plan.mp4, plan.gif, joints.png, report.json, run.mcap, logs/")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
