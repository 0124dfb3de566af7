"""``eva replay``: play a bag into the running stack, wait for its verdicts, and record the run.

Example (the stack runs with ``use_sim_time``; the replayer owns ``/clock`` and ``joint_states``)::

    eva replay episodes.mcap --record run.mcap --summary run.json

Modes:

- **lockstep** (default): for each ``/eva/instruction`` in the bag, publish the newest camera frame
  and joint state at or before it (restamped, see below), let them settle, publish the
  instruction, then hold: the joint state is re-published at 10 Hz, the frame every
  ``hold_image_period_s`` (the still robot of stop-and-go), and ``/clock`` keeps advancing until the
  stack has answered (``--until``): the planner's ``eva/plan`` for the instruction, then the
  ``eva/executability`` report with that plan_id, then, when the gate accepted it, the bridge's
  terminal ``eva/execution_status`` (SUCCEEDED, ABORTED or REJECTED); or ``--timeout``. Bag time
  does not pass while the stack thinks, so sim time is bag time plus the time spent holding, and
  every published stamp is shifted by that offset to stay consistent with ``/clock``.
- **realtime**: publish the bag's inputs at recorded speed x ``--rate`` with their own stamps and
  ``/clock`` = bag time; answers are matched to instructions by their text, and the replayer
  waits up to ``--timeout`` after the last instruction for the rest.

The inputs are ``/head_camera/image_raw``, ``/joint_states``, ``/eva/instruction`` (all required) and
``/eva/episode`` when present; the bag's own ``/clock`` is not replayed, the replayer publishes its
own. With ``--record`` every output topic of the stack and every message the replayer published go
into one MCAP (Foxglove opens it; schemas embedded), stamped with sim time. ``--summary`` writes a
JSON report: per instruction the plan_id, the gate's verdict, the bridge's outcome and the
latencies measured on a steady clock; totals per verdict. The exit status is 1 when the stack is
not there or nothing answers at all, 130 when interrupted.

Only this command needs ROS 2: rclpy is imported when it runs, so the rest of ``eva`` works
without it. The bookkeeping below (ordering, matching answers to instructions, the summary) is
ROS-free and tested without DDS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eva_training.bags import (
    CAMERA_TOPIC,
    CLOCK_TOPIC,
    EPISODE_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    NS_PER_S,
    TOPICS,
    BagMessage,
    BagReader,
    BagWriter,
    constant_names,
    header_stamp_ns,
    restamp,
)

MODES = ("lockstep", "realtime")
UNTIL = ("plan", "report", "status")
REQUIRED_TOPICS = (CAMERA_TOPIC, JOINT_STATES_TOPIC, INSTRUCTION_TOPIC)
INPUT_TOPICS = (*REQUIRED_TOPICS, EPISODE_TOPIC)
PLAN_TOPIC = "/eva/plan"
REPORT_TOPIC = "/eva/executability"
STATUS_TOPIC = "/eva/execution_status"
OUTPUT_TOPICS = (
    PLAN_TOPIC, "/eva/plan/image/compressed", REPORT_TOPIC, "/eva/gated_plan", STATUS_TOPIC,
    "/left_arm_controller/joint_trajectory", "/right_arm_controller/joint_trajectory",
    "/bimanual_controller/joint_trajectory", "/diagnostics",
)
ABSOLUTE_TOPICS = ("/clock", "/diagnostics")  # global by contract; the rest resolve in the replayer's namespace
TERMINAL_STATES = ("SUCCEEDED", "ABORTED", "REJECTED")
JOINT_STATE_PERIOD_S = 0.1
DRAIN_S = 1.0  # after the last answer, what is still in flight (a plan's frames, statuses) is recorded too
EXIT_NO_ANSWER = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ReplayConfig:
    """What ``eva replay`` does; every field is checked, errors name the field and value.

    Attributes:
        bag: the bag to play (MCAP file or rosbag2 directory).
        mode: ``lockstep`` or ``realtime`` (see the module docstring).
        rate: speed of bag time and ``/clock`` relative to wall time.
        until: the last answer lockstep waits for: ``plan``, ``report`` or ``status``.
        timeout_s: how long one instruction waits for its answers [s, steady clock].
        wait_for_stack_s: how long to wait for the planner's ``eva/instruction`` and ``eva/plan`` endpoints [s].
        settle_s: lockstep: time between publishing frame and joint state and publishing the instruction [s].
        hold_image_period_s: lockstep: the held frame is re-published this often while waiting [s].
        clock_hz: ``/clock`` publication rate [Hz].
        record: MCAP file to record the run into (None: no recording).
        summary: JSON file for the summary (None: printed only).
    """

    bag: Path
    mode: str = "lockstep"
    rate: float = 1.0
    until: str = "status"
    timeout_s: float = 300.0
    wait_for_stack_s: float = 30.0
    settle_s: float = 0.5
    hold_image_period_s: float = 0.5
    clock_hz: float = 50.0
    record: Path | None = None
    summary: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {self.mode!r}")
        if self.until not in UNTIL:
            raise ValueError(f"until: expected one of {list(UNTIL)}, got {self.until!r}")
        for name in ("rate", "timeout_s", "wait_for_stack_s", "hold_image_period_s", "clock_hz"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        if not (isinstance(self.settle_s, int | float) and math.isfinite(self.settle_s) and self.settle_s >= 0):
            raise ValueError(f"settle_s: must be a finite number >= 0, got {self.settle_s!r}")
        if self.record is not None and Path(self.record).suffix != ".mcap":
            raise ValueError(f"record: must name an .mcap file, got {str(self.record)!r}")
        if self.summary is not None and not Path(self.summary).parent.is_dir():
            raise ValueError(f"summary: the directory {Path(self.summary).parent} does not exist")


# ----------------------------------------------------------------------------------------------
# ROS-free bookkeeping


def check_inputs(bag: BagReader) -> None:
    """Raise ValueError naming the bag and every required topic it lacks (or holds with another type)."""
    topics = bag.topics
    problems = [f"{topic} ({TOPICS[topic].msgtype})" for topic in REQUIRED_TOPICS
                if topics.get(topic, ("", 0))[0] != TOPICS[topic].msgtype or not topics[topic][1]]
    if problems:
        present = ", ".join(f"{topic} ({msgtype}, {count})" for topic, (msgtype, count) in sorted(topics.items()))
        raise ValueError(f"bag {bag.path}: lacks the required topic(s) {', '.join(problems)}; it has: "
                         f"{present or 'no topics'}")


def ordered_inputs(messages: Iterable[BagMessage]) -> Iterator[BagMessage]:
    """The messages in bag-time order, each instruction after every other message of its timestamp.

    Storage order among equal timestamps is unspecified; an instruction stamped with its episode's
    first frame must still come after that frame, or the planner would plan from the frame before.
    """
    held: list[BagMessage] = []
    for message in messages:
        if held and message.timestamp_ns > held[0].timestamp_ns:
            yield from held
            held.clear()
        if message.topic == INSTRUCTION_TOPIC:
            held.append(message)
        else:
            yield message
    yield from held


@dataclass(frozen=True)
class LockstepStep:
    """One instruction and what lockstep publishes with it (the newest inputs at or before it)."""

    instruction: BagMessage
    image: BagMessage | None
    joint_state: BagMessage | None
    episode: BagMessage | None


def lockstep_steps(messages: Iterable[BagMessage]) -> Iterator[LockstepStep]:
    """One step per instruction, with the newest camera frame, joint state and episode marker before it."""
    newest: dict[str, BagMessage] = {}
    for message in ordered_inputs(messages):
        if message.topic == INSTRUCTION_TOPIC:
            yield LockstepStep(message, newest.get(CAMERA_TOPIC), newest.get(JOINT_STATES_TOPIC),
                               newest.get(EPISODE_TOPIC))
        else:
            newest[message.topic] = message


@dataclass
class InstructionRun:
    """One instruction's way through the stack, as the replayer saw it (times on the steady clock)."""

    index: int
    instruction: str
    episode_id: str
    bag_time_ns: int
    image_stamp_ns: int | None
    sent_at: float
    plan_id: str = ""
    plan_at: float | None = None
    plan_image_stamp_ns: int | None = None
    report: dict[str, Any] | None = None
    report_at: float | None = None
    bridge: dict[str, Any] | None = None
    bridge_at: float | None = None
    bridge_states: list[str] = field(default_factory=list)
    skipped: str = ""

    def done(self, until: str) -> bool:
        """Whether every answer ``until`` asks for has come (a gate rejection ends the wait for the bridge)."""
        if self.skipped:
            return True
        if self.plan_at is None or until == "plan":
            return self.plan_at is not None
        if self.report is None or until == "report" or not self.report["executable"]:
            return self.report is not None
        return self.bridge is not None

    def outcome(self, until: str) -> str:
        """One word for what happened: ``succeeded``, ``rejected_by_gate``, ``no_plan`` (timed out) ..."""
        if self.skipped:
            return "skipped"
        if self.plan_at is None:
            return "no_plan"
        if until == "plan":
            return "planned"
        if self.report is None:
            return "no_report"
        if not self.report["executable"]:
            return "rejected_by_gate"
        if until == "report":
            return "accepted_by_gate"
        if self.bridge is None:
            return "no_status"
        return {"SUCCEEDED": "succeeded", "ABORTED": "aborted", "REJECTED": "rejected_by_bridge"}[self.bridge["state"]]

    def to_dict(self, until: str) -> dict[str, Any]:
        """JSON-ready, with the latencies between the answers [s]."""
        def between(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else max(0.0, end - start)

        return {
            "index": self.index, "instruction": self.instruction, "episode": self.episode_id,
            "bag_time_s": self.bag_time_ns / NS_PER_S, "outcome": self.outcome(until), "skipped": self.skipped,
            "plan_id": self.plan_id,
            "image_stamp_s": None if self.image_stamp_ns is None else self.image_stamp_ns / NS_PER_S,
            "plan_image_stamp_s": None if self.plan_image_stamp_ns is None else self.plan_image_stamp_ns / NS_PER_S,
            "plan_from_this_image": (None if self.plan_image_stamp_ns is None
                                     else self.plan_image_stamp_ns == self.image_stamp_ns),
            "verdict": self.report, "bridge": self.bridge, "bridge_states": self.bridge_states,
            "latency_s": {
                "instruction_to_plan": between(self.sent_at, self.plan_at),
                "plan_to_report": between(self.plan_at, self.report_at),
                "report_to_status": between(self.report_at, self.bridge_at),
            },
        }


class VerdictBook:
    """Matches the stack's answers to the instructions sent.

    A plan belongs to the oldest instruction with the same text that has no plan yet; reports and
    statuses belong to a plan by plan_id, whichever arrives first (they come on different topics).
    """

    def __init__(self, until: str):
        self.until = until
        self.runs: list[InstructionRun] = []
        self.unmatched_plans: list[str] = []
        self._by_plan: dict[str, InstructionRun] = {}
        self._early_reports: dict[str, tuple[dict[str, Any], float]] = {}
        self._early_statuses: dict[str, list[tuple[dict[str, Any], float]]] = {}
        self._verdict_names = constant_names("eva_msgs/msg/ExecutabilityReport", "uint16")
        self._state_names = constant_names("eva_msgs/msg/ExecutionStatus", "uint8")
        self._code_names = constant_names("eva_msgs/msg/ExecutionStatus", "uint16")

    def sent(self, run: InstructionRun) -> InstructionRun:
        """Remember an instruction that was published (or skipped)."""
        self.runs.append(run)
        return run

    def on_plan(self, plan_id: str, instruction: str, image_stamp_ns: int, at: float) -> None:
        """A VisualPlan arrived."""
        run = next((run for run in self.runs if run.plan_at is None and not run.skipped
                    and run.instruction == instruction), None)
        if run is None:
            self.unmatched_plans.append(plan_id)
            return
        run.plan_id, run.plan_at, run.plan_image_stamp_ns = plan_id, at, image_stamp_ns
        self._by_plan[plan_id] = run
        if plan_id in self._early_reports:
            self._attach_report(run, *self._early_reports.pop(plan_id))
        for status, status_at in self._early_statuses.pop(plan_id, []):
            self._attach_status(run, status, status_at)

    def on_report(self, plan_id: str, code: int, executable: bool, reward: float, reason: str, at: float) -> None:
        """An ExecutabilityReport arrived."""
        report = {"code": int(code), "name": self._verdict_names.get(int(code), f"UNKNOWN_{code}"),
                  "executable": bool(executable), "reward": float(reward), "reason": reason}
        run = self._by_plan.get(plan_id)
        if run is None:
            self._early_reports[plan_id] = (report, at)
        else:
            self._attach_report(run, report, at)

    def on_status(self, plan_id: str, state: int, code: int, reason: str, at: float) -> None:
        """An ExecutionStatus arrived."""
        status = {"state": self._state_names.get(int(state), f"UNKNOWN_{state}"), "code": int(code),
                  "code_name": self._code_names.get(int(code), f"UNKNOWN_{code}"), "reason": reason}
        run = self._by_plan.get(plan_id)
        if run is None:
            self._early_statuses.setdefault(plan_id, []).append((status, at))
        else:
            self._attach_status(run, status, at)

    def all_done(self) -> bool:
        """Whether every instruction sent so far has all its answers."""
        return all(run.done(self.until) for run in self.runs)

    @staticmethod
    def _attach_report(run: InstructionRun, report: dict[str, Any], at: float) -> None:
        if run.report is None:
            run.report, run.report_at = report, at

    @staticmethod
    def _attach_status(run: InstructionRun, status: dict[str, Any], at: float) -> None:
        run.bridge_states.append(status["state"])
        if run.bridge is None and status["state"] in TERMINAL_STATES:
            run.bridge, run.bridge_at = status, at

    def summary(self, config: ReplayConfig, interrupted: bool = False) -> dict[str, Any]:
        """The JSON summary: the run's settings, every instruction, and totals."""
        runs = [run.to_dict(self.until) for run in self.runs]
        return {
            "bag": str(config.bag), "mode": config.mode, "until": self.until, "rate": config.rate,
            "timeout_s": config.timeout_s, "record": None if config.record is None else str(config.record),
            "interrupted": interrupted,
            "instructions": runs,
            "totals": {
                "instructions": len(runs),
                "answered": sum(run.plan_at is not None for run in self.runs),
                "outcomes": dict(Counter(run["outcome"] for run in runs)),
                "verdicts": dict(Counter(run["verdict"]["name"] for run in runs if run["verdict"])),
                "bridge": dict(Counter(run["bridge"]["state"] for run in runs if run["bridge"])),
                "unmatched_plans": len(self.unmatched_plans),
            },
        }


def describe(summary: dict[str, Any]) -> str:
    """A few lines for people: one per instruction, then the totals."""
    lines = []
    for run in summary["instructions"]:
        verdict = run["verdict"]["name"] if run["verdict"] else "-"
        bridge = run["bridge"]["state"] if run["bridge"] else "-"
        latency = run["latency_s"]["instruction_to_plan"]
        planned = f"{latency:.2f} s" if latency is not None else "-"
        lines.append(f"  [{run['index']}] {run['instruction']!r}: {run['outcome']} (plan {run['plan_id'] or '-'} "
                     f"after {planned}, verdict {verdict}, bridge {bridge})")
    totals = summary["totals"]
    lines.append(f"{totals['answered']} of {totals['instructions']} instructions answered; "
                 f"outcomes {totals['outcomes']}; verdicts {totals['verdicts']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The ROS side (rclpy is imported here only)


def _node_topic(topic: str) -> str:
    return topic if topic in ABSOLUTE_TOPICS else topic.lstrip("/")


def _message_class(msgtype: str) -> type:
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class RosReplayer:
    """The replayer's node: input publishers, ``/clock``, recording subscriptions; spun by the caller."""

    def __init__(self, config: ReplayConfig, book: VerdictBook, recorder: BagWriter | None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.serialization import deserialize_message, serialize_message

        self.config, self.book, self.recorder = config, book, recorder
        self._serialize, self._deserialize = serialize_message, deserialize_message
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("eva_replay", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

        def qos(topic: str, depth: int | None = None) -> QoSProfile:
            spec = TOPICS[topic].qos
            reliability = ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT
            durability = DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local else DurabilityPolicy.VOLATILE
            return QoSProfile(depth=depth or spec.depth, reliability=reliability, durability=durability)

        self.classes = {topic: _message_class(TOPICS[topic].msgtype) for topic in (*INPUT_TOPICS, *OUTPUT_TOPICS,
                                                                                   CLOCK_TOPIC)}
        self.publishers = {topic: self.node.create_publisher(self.classes[topic], _node_topic(topic), qos(topic))
                           for topic in (*INPUT_TOPICS, CLOCK_TOPIC)}
        self.subscriptions = {
            topic: self.node.create_subscription(self.classes[topic], _node_topic(topic),
                                                 lambda data, topic=topic: self._on_output(topic, data),
                                                 qos(topic, depth=max(10, TOPICS[topic].qos.depth)), raw=True)
            for topic in OUTPUT_TOPICS
        }
        self.sim_ns = 0
        self._clock_published_at = -math.inf

    # Time and publishing.

    def set_clock(self, sim_ns: int, force: bool = False) -> None:
        """Move sim time to ``sim_ns`` and publish ``/clock`` when due (``clock_hz``) or forced."""
        self.sim_ns = max(self.sim_ns, int(sim_ns))
        now = time.monotonic()
        if force or now - self._clock_published_at >= 1.0 / self.config.clock_hz:
            message = self.classes[CLOCK_TOPIC]()
            message.clock.sec, message.clock.nanosec = divmod(self.sim_ns, NS_PER_S)
            self.publish(CLOCK_TOPIC, message)
            self._clock_published_at = now

    def publish(self, topic: str, message: Any) -> None:
        """Publish a message (an rclpy object, or CDR bytes) and record it at the current sim time."""
        data = message if isinstance(message, bytes) else self._serialize(message)
        publisher = self.publishers[topic]
        publisher.publish(data)
        if self.recorder is not None:
            self.recorder.write_raw(publisher.topic_name, data, self.sim_ns, TOPICS[topic].msgtype)

    def decode(self, message: BagMessage) -> Any:
        """The rclpy message of a bag message."""
        return self._deserialize(message.data, self.classes[message.topic])

    def spin(self, seconds: float) -> None:
        """Handle callbacks for up to ``seconds``."""
        self.executor.spin_once(timeout_sec=max(0.0, seconds))

    def _on_output(self, topic: str, data: bytes) -> None:
        subscription = self.subscriptions[topic]
        if self.recorder is not None:
            self.recorder.write_raw(subscription.topic_name, data, self.sim_ns, TOPICS[topic].msgtype)
        at = time.monotonic()
        if topic == PLAN_TOPIC:
            plan = self._deserialize(data, self.classes[topic])
            stamp = plan.header.stamp.sec * NS_PER_S + plan.header.stamp.nanosec
            self.book.on_plan(plan.plan_id, plan.instruction, stamp, at)
        elif topic == REPORT_TOPIC:
            report = self._deserialize(data, self.classes[topic])
            self.book.on_report(report.plan_id, report.code, report.executable, report.reward, report.reason, at)
        elif topic == STATUS_TOPIC:
            status = self._deserialize(data, self.classes[topic])
            self.book.on_status(status.plan_id, status.state, status.code, status.reason, at)

    def drain(self, seconds: float) -> None:
        """Keep the clock running and take in outputs for ``seconds`` more."""
        start, start_ns = time.monotonic(), self.sim_ns
        while (elapsed := time.monotonic() - start) < seconds:
            self.set_clock(start_ns + round(elapsed * self.config.rate * NS_PER_S))
            self.spin(1.0 / self.config.clock_hz)

    # Discovery.

    def wait_for_stack(self, start_ns: int) -> str:
        """Wait for the planner's endpoints while ``/clock`` runs; '' when found, else what is missing."""
        deadline = time.monotonic() + self.config.wait_for_stack_s
        instruction, plan = self.publishers[INSTRUCTION_TOPIC], self.subscriptions[PLAN_TOPIC]
        while instruction.get_subscription_count() == 0 or plan.get_publisher_count() == 0:
            if time.monotonic() > deadline:
                missing = [name for name, count in [(instruction.topic_name, instruction.get_subscription_count()),
                                                    (plan.topic_name, plan.get_publisher_count())] if count == 0]
                return (f"nothing on {' and '.join(missing)} after {self.config.wait_for_stack_s} s: is the stack "
                        "running, active, and on this ROS_DOMAIN_ID?")
            self.set_clock(start_ns)
            self.spin(0.05)
        settled = time.monotonic() + 1.0  # let discovery finish on both sides before the first message
        while time.monotonic() < settled:
            self.set_clock(start_ns)
            self.spin(0.05)
        return ""

    def close(self) -> None:
        """Destroy the node and shut its context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


class Lockstep:
    """Lockstep playback (see the module docstring): sim time = bag time + time spent holding."""

    def __init__(self, ros: RosReplayer, book: VerdictBook, config: ReplayConfig):
        self.ros, self.book, self.config = ros, book, config
        self.offset_ns = 0
        self._episode = ""

    def play(self, bag: BagReader) -> None:
        """Run every instruction of the bag through the stack, one at a time."""
        for index, step in enumerate(lockstep_steps(bag.messages(INPUT_TOPICS))):
            self.step(index, step)

    def step(self, index: int, step: LockstepStep) -> None:
        """Publish one instruction with its inputs and hold until its answers or the timeout."""
        ros, text = self.ros, self.ros.decode(step.instruction).data
        base_ns = step.instruction.timestamp_ns + self.offset_ns
        ros.set_clock(base_ns, force=True)
        if step.episode is not None and ros.decode(step.episode).data != self._episode:
            self._episode = ros.decode(step.episode).data
            ros.publish(EPISODE_TOPIC, step.episode.data)
        if step.image is None or step.joint_state is None:
            missing = "camera frame" if step.image is None else "joint state"
            self.book.sent(InstructionRun(index, text, self._episode, step.instruction.timestamp_ns, None,
                                          time.monotonic(), skipped=f"no {missing} at or before the instruction"))
            return
        # Restamped in the serialised bytes: pixels and joint values go out exactly as the bag holds them.
        image = restamp(step.image.data, header_stamp_ns(step.image.data) + self.offset_ns)
        joints = step.joint_state.data
        ros.publish(JOINT_STATES_TOPIC, restamp(joints, header_stamp_ns(joints) + self.offset_ns))
        ros.spin(0.05)  # the joint state first: the planner pairs each frame with the newest joint state
        ros.publish(CAMERA_TOPIC, image)
        hold_start = time.monotonic()
        next_joints, next_image = hold_start + JOINT_STATE_PERIOD_S, hold_start + self.config.hold_image_period_s
        run: InstructionRun | None = None
        while True:
            now = time.monotonic()
            ros.set_clock(base_ns + round((now - hold_start) * self.config.rate * NS_PER_S))
            if now >= next_joints:  # a still robot keeps reporting its joints
                ros.publish(JOINT_STATES_TOPIC, restamp(joints, ros.sim_ns))
                next_joints += JOINT_STATE_PERIOD_S
            if now >= next_image:  # and its camera keeps seeing the same scene
                ros.publish(CAMERA_TOPIC, image)
                next_image += self.config.hold_image_period_s
            if run is None and now - hold_start >= self.config.settle_s:
                ros.publish(INSTRUCTION_TOPIC, step.instruction.data)
                run = self.book.sent(InstructionRun(index, text, self._episode, step.instruction.timestamp_ns,
                                                    header_stamp_ns(image), time.monotonic()))
            if run is not None and (run.done(self.book.until) or now - run.sent_at > self.config.timeout_s):
                break
            ros.spin(min(JOINT_STATE_PERIOD_S, 1.0 / self.config.clock_hz))
        self.offset_ns = ros.sim_ns - step.instruction.timestamp_ns


class Realtime:
    """Realtime playback: the bag's inputs at recorded speed x rate, ``/clock`` = bag time."""

    def __init__(self, ros: RosReplayer, book: VerdictBook, config: ReplayConfig):
        self.ros, self.book, self.config = ros, book, config

    def play(self, bag: BagReader) -> None:
        """Publish every input on schedule, then wait for the outstanding answers."""
        ros, rate = self.ros, self.config.rate
        wall_start, bag_start, episode = time.monotonic(), None, ""
        for message in ordered_inputs(bag.messages(INPUT_TOPICS)):
            bag_start = message.timestamp_ns if bag_start is None else bag_start
            due = wall_start + (message.timestamp_ns - bag_start) / NS_PER_S / rate
            while (now := time.monotonic()) < due:
                ros.set_clock(bag_start + round((now - wall_start) * rate * NS_PER_S))
                ros.spin(min(due - now, 1.0 / self.config.clock_hz))
            ros.set_clock(message.timestamp_ns)
            ros.publish(message.topic, message.data)
            if message.topic == EPISODE_TOPIC:
                episode = ros.decode(message).data
            elif message.topic == INSTRUCTION_TOPIC:
                self.book.sent(InstructionRun(len(self.book.runs), ros.decode(message).data, episode,
                                              message.timestamp_ns, None, time.monotonic()))
        if bag_start is None:
            return
        while not self.book.all_done() and any(time.monotonic() - run.sent_at <= self.config.timeout_s
                                               for run in self.book.runs if not run.done(self.book.until)):
            now = time.monotonic()
            ros.set_clock(bag_start + round((now - wall_start) * rate * NS_PER_S))
            ros.spin(1.0 / self.config.clock_hz)


def replay(config: ReplayConfig) -> tuple[dict[str, Any], str]:
    """Play ``config.bag`` into the stack; returns the summary and an error ('' when something answered).

    Raises:
        ValueError, FileNotFoundError: the bag is missing, unreadable or lacks required topics.
    """
    book = VerdictBook(config.until)
    with BagReader(config.bag) as bag:
        check_inputs(bag)
        try:
            from rclpy.executors import ExternalShutdownException
        except ImportError as missing:
            raise ValueError(f"eva replay needs ROS 2 (rclpy): {missing}; source scripts/env.sh first") from None
        recorder = BagWriter(config.record, "mcap") if config.record is not None else None
        ros, interrupted, error = None, False, ""
        try:
            ros = RosReplayer(config, book, recorder)
            error = ros.wait_for_stack(bag.start_ns)
            if not error:
                (Lockstep if config.mode == "lockstep" else Realtime)(ros, book, config).play(bag)
                ros.drain(DRAIN_S)
        except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C: keep what was recorded
            interrupted, error = True, "interrupted"
        finally:
            if ros is not None:
                ros.close()
            if recorder is not None:
                recorder.close()
    summary = book.summary(config, interrupted)
    if not error and not summary["totals"]["answered"]:
        error = (f"none of the {summary['totals']['instructions']} instructions got a plan within "
                 f"{config.timeout_s} s")
    return summary, error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``eva replay``'s arguments."""
    defaults = ReplayConfig(bag=Path())
    parser.add_argument("bag", type=Path, help="bag to play: an MCAP file or a rosbag2 directory")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode, help="lockstep: one instruction at a time, "
                        "waiting for the stack's answers; realtime: at recorded speed (default: lockstep)")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="speed of bag time and /clock relative "
                        "to wall time (default: 1.0)")
    parser.add_argument("--until", choices=UNTIL, default=defaults.until, help="the last answer to wait for: the "
                        "plan, the IDM's report, or the bridge's terminal status (default: status)")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="how long one instruction waits "
                        f"for its answers, in s (default: {defaults.timeout_s:g})")
    parser.add_argument("--wait-for-stack", type=float, default=defaults.wait_for_stack_s, help="how long to wait "
                        f"for the planner to appear, in s (default: {defaults.wait_for_stack_s:g})")
    parser.add_argument("--settle", type=float, default=defaults.settle_s, help="lockstep: s between the frame and "
                        f"the instruction (default: {defaults.settle_s:g})")
    parser.add_argument("--record", type=Path, default=None, help="record inputs and outputs into this .mcap file")
    parser.add_argument("--summary", type=Path, default=None, help="write the JSON summary here")


def run(args: argparse.Namespace) -> int:
    """Replay, print and write the summary; exit 1 when nothing answered, 130 when interrupted."""
    config = ReplayConfig(bag=args.bag, mode=args.mode, rate=args.rate, until=args.until, timeout_s=args.timeout,
                          wait_for_stack_s=args.wait_for_stack, settle_s=args.settle, record=args.record,
                          summary=args.summary)
    summary, error = replay(config)
    if config.summary is not None:
        config.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(describe(summary))
    if config.record is not None:
        print(f"recorded the run to {config.record}")
    if error:
        print(f"eva replay: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED if summary["interrupted"] else EXIT_NO_ANSWER
    return 0

