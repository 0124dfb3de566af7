"""`make bench-planner`: what the planner node adds to the world model's own time, on this CPU.

One run measures, side by side and interleaved (core, node, core, node, ...) so that both see the
same background load on this shared machine:

* **core**: ``build_tiny_world_model()`` and ``WorldModel.generate`` in this process, with the
  SamplerConfig that config/planner_tiny.yaml gives the node (9 frames at 64x64, 4 steps, three
  guidance passes, 1 torch thread), then the PNG encoding of the frames that the node adds;
* **node**: the real ``planner_node`` process on its own ROS_DOMAIN_ID over real Fast DDS with the
  same config, configured and activated through its lifecycle services. This process plays the
  robot (head camera 480x640 rgb8 at 10 Hz and joint_states at 50 Hz, as sim_robot publishes them),
  sends ``eva/instruction`` and times instruction -> ``VisualPlan`` arrival on the steady clock,
  beside the stage timings the plan itself carries (``VisualPlan.timings``);
* **node, sensors paused**: the same, but the camera and joint states stop (after one fresh image)
  while the node plans, which separates the cost of serving those streams during a plan (DDS
  traffic and callbacks competing for the 2 cores and the node's GIL) from the rest of the node's
  overhead.

Beside the times: the CPU time the node process spends per plan (all its threads, and its main
thread alone, where rclpy's executor waits for work, from ``/proc``) against this process's CPU
time per core plan, and the CPU cores the idle node uses while the sensors stream.

The instruction is the same in both paths and planned once before timing, so the prompt cache
holds it in both, as it does for a robot repeating its instructions. Results:
benchmarks/results/planner.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from domain_coordinator import domain_id
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from eva_idm.embodiment import load_embodiment
from eva_idm.frames import encode_frames
from eva_planner.node_config import PlannerNodeConfig
from eva_planner.tiny import build_tiny_world_model
from eva_planner.world_model import SamplerConfig, WorldModel
from eva_sim.processes import NodeProcess, find_executable, ros_environment
from eva_sim.ros.stack import RELIABLE, StackClient, StackError
from eva_sim.test_patterns import moving_pattern

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "planner.json"
TINY_CONFIG = ROOT / "config" / "planner_tiny.yaml"
NODE = "planner_node"
INSTRUCTION = "pick up the cup and put it on the plate"
CAMERA_SHAPE = (480, 640)  # sim_robot's head camera [px]
CAMERA_RATE = 10.0  # [Hz]
JOINT_STATE_RATE = 50.0  # [Hz]
PLAN_TIMEOUT = 120.0  # [s] generous: the machine is shared
IDLE_S = 5.0  # how long the idle node's CPU use is measured [s]
SETTLE_S = 0.2  # after a plan's diagnostics, before the next instruction: the node releases its plan lock


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99, min and count of a list of seconds (or ratios)."""
    return {"median": statistics.median(values), "p99": float(np.percentile(values, 99)), "min": min(values),
            "n": len(values)}


def cpu_seconds(pid: int, main_thread_only: bool = False) -> float:
    """User + system CPU time of process ``pid`` so far [s]: all its threads, or its main thread (Linux ``/proc``).

    An rclpy executor's wait loop runs in the main thread; callbacks and plans run in its workers.
    """
    stat = Path(f"/proc/{pid}/task/{pid}/stat" if main_thread_only else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_config() -> PlannerNodeConfig:
    """The planner node's settings from config/planner_tiny.yaml, read the way the node reads them."""
    parameters = yaml.safe_load(TINY_CONFIG.read_text())[NODE]["ros__parameters"]
    return PlannerNodeConfig.from_parameters(parameters)


def core_plan(model: WorldModel, image: np.ndarray, sampler: SamplerConfig, frame_format: str) -> dict[str, float]:
    """One ``generate`` and the frame encoding the node adds, with the plan's own stage timings [s]."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = model.generate(image, INSTRUCTION, sampler)
    generated = time.perf_counter()
    encode_frames(result.frames, frame_format)
    encoded = time.perf_counter()
    return {"generate": generated - started, f"{frame_format}_encode": encoded - generated,
            "cpu": time.process_time() - cpu_started,
            **{f"stage.{stage}": seconds for stage, seconds in result.timings.items()}}


class Robot:
    """The benchmark's side of the graph: camera and joint states streamed while it spins, instructions sent."""

    def __init__(self, client: StackClient, image: np.ndarray, joint_names: list[str], node_pid: int):
        node = client.node
        self.client, self.node_pid = client, node_pid
        self.camera = node.create_publisher(Image, "head_camera/image_raw", qos_profile_sensor_data)
        self.joints = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.instructions = node.create_publisher(String, "eva/instruction", RELIABLE)
        self.image = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", step=image.shape[1] * 3,
                           data=image.tobytes())
        self.image.header.frame_id = "head_camera"
        zeros = [0.0] * len(joint_names)
        self.joint_state = JointState(name=joint_names, position=zeros, velocity=zeros)
        self.diagnosed: set[str] = set()  # plan ids the node's /diagnostics has reported
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.streams = (node.create_timer(1.0 / CAMERA_RATE, self._publish_image),
                        node.create_timer(1.0 / JOINT_STATE_RATE, self._publish_joint_state))

    def _publish_image(self) -> None:
        self.image.header.stamp = self.client.node.get_clock().now().to_msg()
        self.camera.publish(self.image)

    def _publish_joint_state(self) -> None:
        self.joint_state.header.stamp = self.client.node.get_clock().now().to_msg()
        self.joints.publish(self.joint_state)

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            self.diagnosed.update(value.value for value in status.values if value.key == "last_plan_id")

    def idle_cores(self, seconds: float) -> dict[str, float]:
        """CPU cores the idle, active node uses while the camera and joint states stream: all, and its main thread."""
        before = cpu_seconds(self.node_pid), cpu_seconds(self.node_pid, main_thread_only=True)
        started = time.monotonic()
        self.client.spin_for(seconds)
        elapsed = time.monotonic() - started
        after = cpu_seconds(self.node_pid), cpu_seconds(self.node_pid, main_thread_only=True)
        return {"process": (after[0] - before[0]) / elapsed, "executor_thread": (after[1] - before[1]) / elapsed}

    def plan(self, pause_sensors: bool = False) -> dict[str, float]:
        """Send the instruction; seconds until its VisualPlan arrived, and the plan's own stage timings.

        With ``pause_sensors`` the camera and joint states stop from just before the instruction
        until the plan has arrived (one fresh image and joint state are sent first).
        """
        plans = self.client.recorded.plans
        before = len(plans)
        if pause_sensors:
            self._publish_joint_state()
            self._publish_image()
            for timer in self.streams:
                timer.cancel()
        node_cpu, main_thread_cpu = cpu_seconds(self.node_pid), cpu_seconds(self.node_pid, main_thread_only=True)
        sent_at = time.monotonic()
        self.instructions.publish(String(data=INSTRUCTION))
        try:
            self.client.spin_until(lambda: len(plans) > before, PLAN_TIMEOUT, "the VisualPlan of the instruction")
        finally:
            for timer in self.streams:
                timer.reset()
        arrived_at, plan = plans[before]
        node_cpu = cpu_seconds(self.node_pid) - node_cpu
        main_thread_cpu = cpu_seconds(self.node_pid, main_thread_only=True) - main_thread_cpu
        # The node reports the plan on /diagnostics after publishing its frames; a moment later it
        # takes instructions again (an instruction during a plan is ignored, not queued).
        self.client.spin_until(lambda: plan.plan_id in self.diagnosed, PLAN_TIMEOUT, "the plan on /diagnostics")
        self.client.spin_for(SETTLE_S)
        return {"instruction_to_plan": arrived_at - sent_at, "node_cpu": node_cpu,
                "node_main_thread_cpu": main_thread_cpu,
                **{f"stage.{timing.stage}": timing.seconds for timing in plan.timings}}


def change_state(client: StackClient, transition_id: int) -> bool:
    """Request a lifecycle transition of the planner node; whether it succeeded."""
    service = client.node.create_client(ChangeState, f"{NODE}/change_state")
    try:
        client.spin_until(service.service_is_ready, 60, f"{NODE}/change_state")
        client.spin_for(1.0)  # a response sent right after discovery can be lost
        future = service.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        client.spin_until(future.done, 120, f"lifecycle transition {transition_id}")
        return future.result().success
    finally:
        client.node.destroy_client(service)


def run(repetitions: int, workdir: Path) -> tuple[dict[str, list[dict[str, float]]], dict[str, float]]:
    """Warm both paths up, then time ``repetitions`` plans of each path (core, node, node with sensors paused).

    Also returns the CPU cores the idle node uses while the sensors stream.
    """
    config = node_config()
    sampler = config.sampler_config(seed=0)
    torch.set_num_threads(config.num_threads or torch.get_num_threads())  # as the node does on configure
    image = moving_pattern(1, *CAMERA_SHAPE, seed=3)[0]
    model = build_tiny_world_model()
    core_plan(model, image, sampler, config.frame_format)  # warm-up: caches the prompt, as the node's warm-up does
    command = [find_executable("eva_planner", NODE), "--ros-args", "--params-file", TINY_CONFIG]
    with domain_id() as domain, NodeProcess(command, workdir / f"{NODE}.log", ros_environment(domain)) as process:
        client = StackClient(domain, "planner_bench")
        try:
            robot = Robot(client, image, load_embodiment(config.embodiment).joint_names, process.pid)
            for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
                if not change_state(client, transition):
                    raise SystemExit(f"bench-planner: {NODE} refused transition {transition}:\n{process.log()}")
            client.spin_until(lambda: robot.instructions.get_subscription_count() > 0, 60, "eva/instruction to match")
            client.spin_for(1.0)  # let the camera and joint states reach the node
            robot.plan()  # warm-up
            idle_cores = robot.idle_cores(IDLE_S)
            rows: dict[str, list[dict[str, float]]] = {"core": [], "node": [], "node_sensors_paused": []}
            for index in range(repetitions):
                rows["core"].append(core_plan(model, image, sampler, config.frame_format))
                rows["node"].append(robot.plan())
                rows["node_sensors_paused"].append(robot.plan(pause_sensors=True))
                print(f"  {index + 1:2d}/{repetitions}: core generate {rows['core'][-1]['generate']:.3f} s, "
                      f"node instruction -> plan {rows['node'][-1]['instruction_to_plan']:.3f} s "
                      f"(sensors paused {rows['node_sensors_paused'][-1]['instruction_to_plan']:.3f} s)", flush=True)
        except StackError as error:
            raise SystemExit(f"bench-planner: {error}\n--- {NODE} log ---\n{process.log()}") from error
        finally:
            client.close()
    return rows, idle_cores


def stages(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Summaries of the ``stage.*`` timings of ``rows``, by stage."""
    return {key.removeprefix("stage."): summary([row[key] for row in rows]) for key in rows[0]
            if key.startswith("stage.")}


def node_summary(rows: list[dict[str, float]], generate: list[float], encode: str) -> dict:
    """One node path: end-to-end time, its own compute, the rest, and its ratio to the core's ``generate``."""
    end_to_end = [row["instruction_to_plan"] for row in rows]
    compute = [row["stage.total"] + row[f"stage.{encode}"] for row in rows]
    median_e2e, median_generate = statistics.median(end_to_end), statistics.median(generate)
    return {
        "instruction_to_plan_s": summary(end_to_end),
        "compute_s": summary(compute),
        "node_process_cpu_s": summary([row["node_cpu"] for row in rows]),
        "node_executor_thread_cpu_s": summary([row["node_main_thread_cpu"] for row in rows]),
        "rest_s": summary([e2e - own for e2e, own in zip(end_to_end, compute, strict=True)]),
        "plan_stages_s": stages(rows),
        "ratio_over_core_generate": median_e2e / median_generate,
        "paired_ratio_over_core_generate": summary([e2e / gen for e2e, gen in zip(end_to_end, generate, strict=True)]),
        "overhead_over_core_generate_s": median_e2e - median_generate,
    }


def analyse(rows: dict[str, list[dict[str, float]]], frame_format: str) -> dict:
    """Summaries of every path, and each node path's overhead and ratio over the core's ``generate``."""
    encode = f"{frame_format}_encode"
    core = rows["core"]
    generate = [row["generate"] for row in core]
    return {
        "core": {"generate_s": summary(generate), f"{encode}_s": summary([row[encode] for row in core]),
                 "generate_plus_encode_s": summary([row["generate"] + row[encode] for row in core]),
                 "process_cpu_s": summary([row["cpu"] for row in core]),
                 "stages_s": stages(core)},
        **{path: node_summary(rows[path], generate, encode) for path in ("node", "node_sensors_paused")},
    }


def print_table(result: dict, frame_format: str) -> None:
    """The medians and p99s that matter, one line each."""
    core = result["core"]
    lines = [("core: WorldModel.generate", core["generate_s"]),
             ("core: denoise stage", core["stages_s"]["denoise"]),
             ("core: decode stage", core["stages_s"]["decode"]),
             (f"core: {frame_format} encode of the frames", core[f"{frame_format}_encode_s"]),
             ("core: process CPU time (generate + encode)", core["process_cpu_s"])]
    for path, label in (("node", "node"), ("node_sensors_paused", "node, sensors paused")):
        node = result[path]
        lines += [(f"{label}: instruction -> VisualPlan", node["instruction_to_plan_s"]),
                  ("  its compute (plan timings total + encode)", node["compute_s"]),
                  ("  denoise stage", node["plan_stages_s"]["denoise"]),
                  ("  decode stage", node["plan_stages_s"]["decode"]),
                  ("  the rest (DDS, executor, messages)", node["rest_s"]),
                  ("  node process CPU time meanwhile", node["node_process_cpu_s"]),
                  ("    of it the executor's wait loop (main thread)", node["node_executor_thread_cpu_s"])]
    print(f"{'':50s} {'median':>9s} {'p99':>9s}")
    for label, values in lines:
        print(f"{label:50s} {values['median']:8.3f}s {values['p99']:8.3f}s")
    for path, label in (("node", "node"), ("node_sensors_paused", "node, sensors paused")):
        node = result[path]
        print(f"{label}: end-to-end / core generate = {node['ratio_over_core_generate']:.2f} "
              f"(paired median {node['paired_ratio_over_core_generate']['median']:.2f}), "
              f"overhead {node['overhead_over_core_generate_s'] * 1000:.0f} ms")
    idle = result["node_idle_cpu_cores_with_sensor_streams"]
    print(f"idle node with the sensors streaming: {idle['process']:.3f} CPU cores "
          f"({idle['executor_thread']:.3f} in the executor's wait loop)")


def main() -> int:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=20, help="timed plans per path (default 20)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.repetitions < 1:
        parser.error(f"--repetitions must be at least 1, got {args.repetitions}")
    config = node_config()
    sampler = config.sampler_config(seed=0)
    started = time.monotonic()
    print(f"planner benchmark: tiny world model, {sampler.num_frames}x{sampler.height}x{sampler.width}, "
          f"{sampler.steps} steps, {config.num_threads} thread(s), {args.repetitions} plans per path", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        rows, idle_cores = run(args.repetitions, Path(scratch))
    passes = 1 + bool(sampler.guidance_language) + bool(sampler.guidance_history)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d"),
        "setup": {"config": str(TINY_CONFIG.relative_to(ROOT)), "model": config.model,
                  "plan": f"{sampler.num_frames}x{sampler.height}x{sampler.width}", "steps": sampler.steps,
                  "guidance_passes_per_step": passes, "torch_threads": config.num_threads,
                  "frame_format": config.frame_format, "instruction": INSTRUCTION,
                  "camera": f"{CAMERA_SHAPE[1]}x{CAMERA_SHAPE[0]} rgb8 at {CAMERA_RATE:g} Hz",
                  "joint_states_hz": JOINT_STATE_RATE, "repetitions": args.repetitions,
                  "order": "interleaved: core, node, node with sensors paused; one warm-up plan first",
                  "clock": "steady (time.monotonic / perf_counter)", "transport": "Fast DDS, default profile"},
        **analyse(rows, config.frame_format),
        "node_idle_cpu_cores_with_sensor_streams": idle_cores,
        "raw": rows,
        "wall_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result, config.frame_format)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} "
          f"({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
