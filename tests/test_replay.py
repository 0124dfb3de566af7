"""``eva replay``: ordering and answer matching without ROS, then lockstep against a real planner_node.

In the DDS test the test process plays the IDM node (an ExecutabilityReport per plan) and the
controller bridge (execution states), as tests/test_planner_node.py does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import RosPeer
from rosbags.highlevel import AnyReader
from test_planner_node import TINY_CONFIG, change_state, lifecycle_state, qos

from eva_sim.processes import NodeProcess, find_executable, ros_environment
from eva_sim.synth import SynthConfig, synthesize
from eva_training.bags import (
    CAMERA_TOPIC,
    EPISODE_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    BagMessage,
    BagReader,
    BagWriter,
    EpisodeBagConfig,
    episodes_to_bag,
    stamp_ns,
    string_message,
)
from eva_training.cli import main as eva
from eva_training.replay import InstructionRun, ReplayConfig, VerdictBook, lockstep_steps, ordered_inputs

ROOT = Path(__file__).resolve().parents[1]
FIRST, SECOND = "Move both arms to new poses above the table.", "Raise the left gripper."


def message(topic: str, time_s: float) -> BagMessage:
    return BagMessage(topic, "", round(time_s * 1e9), b"")


def test_instructions_come_after_every_message_of_their_time_and_take_the_newest_inputs():
    stream = [message(EPISODE_TOPIC, 1.0), message(INSTRUCTION_TOPIC, 1.0), message(CAMERA_TOPIC, 1.0),
              message(JOINT_STATES_TOPIC, 1.0), message(CAMERA_TOPIC, 1.5), message(INSTRUCTION_TOPIC, 2.0),
              message(CAMERA_TOPIC, 2.5)]
    ordered = list(ordered_inputs(stream))
    assert [(item.topic, item.timestamp_ns) for item in ordered] == [
        (EPISODE_TOPIC, 10**9), (CAMERA_TOPIC, 10**9), (JOINT_STATES_TOPIC, 10**9), (INSTRUCTION_TOPIC, 10**9),
        (CAMERA_TOPIC, 1.5e9), (INSTRUCTION_TOPIC, 2 * 10**9), (CAMERA_TOPIC, 2.5e9)]
    first, second = lockstep_steps(stream)
    assert (first.image, first.joint_state, first.episode) == (stream[2], stream[3], stream[0])
    assert (second.image, second.joint_state) == (stream[4], stream[3])
    (alone,) = lockstep_steps([message(INSTRUCTION_TOPIC, 0.5), message(CAMERA_TOPIC, 1.0)])
    assert alone.image is None and alone.joint_state is None


def sent(book: VerdictBook, text: str, at: float = 0.0) -> InstructionRun:
    return book.sent(InstructionRun(len(book.runs), text, "e", 0, 0, at))


def test_answers_are_matched_to_instructions_whatever_order_they_arrive_in():
    book = VerdictBook("status")
    accepted, rejected, lost, again = sent(book, "a"), sent(book, "b"), sent(book, "c"), sent(book, "a")
    book.on_status("p1", 3, 0, "", at=1.2)  # EXECUTING before anything else about p1
    book.on_report("p1", 0, True, 7.5, "accepted", at=1.1)
    book.on_plan("p1", "a", 0, at=1.0)
    book.on_status("p1", 4, 0, "trajectory finished", at=2.0)
    book.on_plan("p2", "b", 0, at=3.0)
    book.on_report("p2", 10, False, 0.4, "reward 0.4 is below 5.0", at=3.5)
    book.on_plan("p9", "unknown instruction", 0, at=4.0)
    book.on_plan("p4", "a", 0, at=5.0)  # the second "a" (the first has its plan)
    book.on_report("p4", 0, True, 6.0, "accepted", at=5.5)
    book.on_status("p4", 2, 3, "fl_joint1 moved", at=6.0)

    assert [run.plan_id for run in (accepted, rejected, lost, again)] == ["p1", "p2", "", "p4"]
    assert [run.outcome("status") for run in book.runs] == ["succeeded", "rejected_by_gate", "no_plan",
                                                            "rejected_by_bridge"]
    assert accepted.bridge_states == ["EXECUTING", "SUCCEEDED"] and accepted.done("status")
    assert rejected.done("status") and not lost.done("plan")
    summary = book.summary(ReplayConfig(bag=Path("x.mcap")))
    first = summary["instructions"][0]
    assert first["verdict"] == {"code": 0, "name": "ACCEPTED", "executable": True, "reward": 7.5, "reason": "accepted"}
    assert first["bridge"] == {"state": "SUCCEEDED", "code": 0, "code_name": "NONE", "reason": "trajectory finished"}
    assert first["latency_s"] == pytest.approx({"instruction_to_plan": 1.0, "plan_to_report": 0.1,
                                                "report_to_status": 0.9})
    assert summary["instructions"][3]["bridge"]["code_name"] == "ROBOT_MOVED"
    assert summary["totals"] == {"instructions": 4, "answered": 3, "unmatched_plans": 1,
                                 "outcomes": {"succeeded": 1, "rejected_by_gate": 1, "no_plan": 1,
                                              "rejected_by_bridge": 1},
                                 "verdicts": {"ACCEPTED": 2, "LOW_REWARD": 1},
                                 "bridge": {"SUCCEEDED": 1, "REJECTED": 1}}
    assert [run.outcome("report") for run in book.runs] == ["accepted_by_gate", "rejected_by_gate", "no_plan",
                                                            "accepted_by_gate"]


def test_settings_are_checked_naming_the_field():
    for fields, text in [({"mode": "fast"}, "mode: expected one of"), ({"until": "done"}, "until: expected one of"),
                         ({"rate": 0.0}, "rate: must be a finite number > 0"),
                         ({"record": Path("run.bag")}, "record: must name an .mcap file")]:
        with pytest.raises(ValueError, match=text):
            ReplayConfig(bag=Path("x.mcap"), **fields)


def test_a_bag_without_the_required_topics_is_refused_before_ros_starts(tmp_path, capsys):
    bag = tmp_path / "instructions_only.mcap"
    with BagWriter(bag) as writer:
        writer.write(INSTRUCTION_TOPIC, string_message("pick up the cup"), 10**9)
    assert eva(["replay", str(bag)]) == 2
    error = capsys.readouterr().err
    assert "lacks the required topic(s) /head_camera/image_raw (sensor_msgs/msg/Image), /joint_states" in error
    assert "it has: /eva/instruction (std_msgs/msg/String, 1)" in error


@pytest.fixture(scope="module")
def episode_bag(tmp_path_factory) -> Path:
    """Two synthetic episodes with different instructions, in one bag."""
    root = tmp_path_factory.mktemp("replay")
    episode_dir = synthesize(SynthConfig(out_dir=root / "data", episodes=2, frames=4, height=48, width=64, seed=9),
                             progress=False)
    (episode_dir / "instructions" / "episode1.json").write_text(json.dumps({"seen": [SECOND], "unseen": []}))
    return episodes_to_bag([root / "data"], EpisodeBagConfig(output=root / "episodes.mcap"), progress=False).output


def eva_replay(domain: int, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eva_training.cli", "replay", *argv], cwd=ROOT,
                            env=ros_environment(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@dataclass
class Stack:
    """planner_node (tiny model, sim time) and the test peer playing the IDM node and the bridge."""

    domain: int
    peer: RosPeer
    planner: NodeProcess

    def replay(self, *argv: str) -> str:
        """Run ``eva replay`` to the end while the peer answers; its output (exit status checked)."""
        process = eva_replay(self.domain, *argv, "--timeout", "60", "--wait-for-stack", "60")
        self.peer.spin_until(lambda: process.poll() is not None, 180, "eva replay to finish")
        output = process.stdout.read()
        assert process.returncode == 0, output + self.planner.log()
        return output


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """One planner for the module's replays: its start-up is most of their time."""
    from domain_coordinator import domain_id
    from lifecycle_msgs.msg import Transition

    from eva_msgs.msg import ExecutabilityReport, ExecutionStatus, VisualPlan

    with domain_id() as domain:
        peer = RosPeer(domain)
        planner = NodeProcess([find_executable("eva_planner", "planner_node"), "--ros-args", "--params-file",
                               TINY_CONFIG, "-p", "use_sim_time:=true"],
                              tmp_path_factory.mktemp("stack") / "planner_node.log", ros_environment(domain))
        try:
            assert lifecycle_state(peer) == "unconfigured"
            assert change_state(peer, Transition.TRANSITION_CONFIGURE), planner.log()
            assert change_state(peer, Transition.TRANSITION_ACTIVATE), planner.log()
            reports = peer.node.create_publisher(ExecutabilityReport, "eva/executability",
                                                 qos(transient_local=True, depth=10))
            statuses = peer.node.create_publisher(ExecutionStatus, "eva/execution_status",
                                                  qos(transient_local=True, depth=10))

            def judge(plan: VisualPlan) -> None:  # the IDM accepts the first instruction, the bridge executes it
                if plan.instruction == FIRST:
                    reports.publish(ExecutabilityReport(plan_id=plan.plan_id, executable=True, reward=7.5,
                                                        reason="accepted"))
                    statuses.publish(ExecutionStatus(plan_id=plan.plan_id, state=ExecutionStatus.EXECUTING))
                    statuses.publish(ExecutionStatus(plan_id=plan.plan_id, state=ExecutionStatus.SUCCEEDED,
                                                     reason="done"))
                else:
                    reports.publish(ExecutabilityReport(plan_id=plan.plan_id, executable=False, reward=0.4,
                                                        reason="too low", code=ExecutabilityReport.LOW_REWARD))

            peer.node.create_subscription(VisualPlan, "eva/plan", judge, qos())
            yield Stack(domain, peer, planner)
        finally:
            planner.stop()
            peer.close()


@pytest.mark.ros
def test_lockstep_replay_waits_for_each_verdict_and_records_the_run(episode_bag, stack, tmp_path):
    record, summary_path = tmp_path / "run.mcap", tmp_path / "run.json"
    output = stack.replay(str(episode_bag), "--record", str(record), "--summary", str(summary_path))

    summary = json.loads(summary_path.read_text())
    first, second = summary["instructions"]
    assert (first["instruction"], first["episode"]) == (FIRST, "synth_reach/demo_clean/episode0")
    assert (second["instruction"], second["episode"]) == (SECOND, "synth_reach/demo_clean/episode1")
    assert first["outcome"] == "succeeded" and first["bridge_states"] == ["EXECUTING", "SUCCEEDED"]
    assert first["verdict"]["name"] == "ACCEPTED" and first["verdict"]["reward"] == 7.5
    assert second["outcome"] == "rejected_by_gate" and second["bridge"] is None
    assert second["verdict"] == {"code": 10, "name": "LOW_REWARD", "executable": False, "reward": 0.4,
                                 "reason": "too low"}
    for run in (first, second):
        assert run["plan_from_this_image"] is True, run  # each plan came from the frame sent with its instruction
        assert run["latency_s"]["instruction_to_plan"] > 0 and run["latency_s"]["plan_to_report"] is not None
    assert first["latency_s"]["report_to_status"] is not None and second["latency_s"]["report_to_status"] is None
    assert summary["totals"]["verdicts"] == {"ACCEPTED": 1, "LOW_REWARD": 1}
    assert summary["totals"]["bridge"] == {"SUCCEEDED": 1}
    assert "2 of 2 instructions answered" in output

    with AnyReader([record]) as reader:  # opens from the schemas embedded in the MCAP alone
        recorded: dict[str, list] = {}
        for connection, time_ns, data in reader.messages():
            recorded.setdefault(connection.topic, []).append((time_ns, reader.deserialize(data, connection.msgtype)))
    assert [plan.plan_id for _, plan in recorded["/eva/plan"]] == [run["plan_id"] for run in (first, second)]
    assert [report.reason for _, report in recorded["/eva/executability"]] == ["accepted", "too low"]
    assert [status.state for _, status in recorded["/eva/execution_status"]] == [3, 4]
    assert [text.data for _, text in recorded["/eva/instruction"]] == [FIRST, SECOND]
    first_frames = [frame for _, frame in recorded["/eva/plan/image/compressed"]
                    if frame.header.stamp == recorded["/eva/plan"][0][1].header.stamp]
    assert len(first_frames) == 9 and "/diagnostics" in recorded
    clock = [stamp_ns(message.clock) for _, message in recorded["/clock"]]
    assert clock == sorted(clock) and clock[0] == 10**9  # sim time starts at the bag's and never runs back
    plan_stamps = [stamp_ns(plan.header.stamp) for _, plan in recorded["/eva/plan"]]
    assert plan_stamps == [round(run["image_stamp_s"] * 1e9) for run in (first, second)]
    with BagReader(episode_bag) as bag:
        frame_bytes = [bytes(bag.deserialize(item).data) for item in bag.messages([CAMERA_TOPIC])]
    assert {bytes(image.data) for _, image in recorded["/head_camera/image_raw"]} == {frame_bytes[0], frame_bytes[4]}


@pytest.mark.ros
def test_realtime_replay_plays_every_input_with_its_own_stamps(episode_bag, stack, tmp_path):
    one = episodes_to_bag([episode_bag.parent / "data"], EpisodeBagConfig(output=tmp_path / "one.mcap", limit=1,
                                                                          start_time_s=5.0), progress=False).output
    record, summary_path = tmp_path / "realtime.mcap", tmp_path / "realtime.json"
    stack.replay(str(one), "--mode", "realtime", "--until", "report", "--record", str(record),
                 "--summary", str(summary_path))

    (run,) = json.loads(summary_path.read_text())["instructions"]
    assert (run["instruction"], run["outcome"], run["verdict"]["reward"]) == (FIRST, "accepted_by_gate", 7.5)
    with BagReader(one) as bag:
        played = [(item.timestamp_ns, item.data) for item in bag.messages([CAMERA_TOPIC, JOINT_STATES_TOPIC])]
        frame_stamps = {stamp_ns(bag.deserialize(item).header.stamp) for item in bag.messages([CAMERA_TOPIC])}
    with BagReader(record) as bag:
        recorded = [(item.timestamp_ns, item.data) for item in bag.messages([CAMERA_TOPIC, JOINT_STATES_TOPIC])]
        clock = [stamp_ns(bag.deserialize(item).clock) for item in bag.messages(["/clock"])]
        (plan,) = [bag.deserialize(item) for item in bag.messages(["/eva/plan"])]
    assert recorded == played  # every frame and joint state, byte for byte, at its own bag time
    assert clock[0] == 5 * 10**9 and clock == sorted(clock)
    # At recorded speed the planner takes the newest frame when the instruction (bag time 5.0 s)
    # reaches it: the first frame, or a later one if delivery lagged on a loaded machine.
    assert stamp_ns(plan.header.stamp) in frame_stamps
    assert round(run["plan_image_stamp_s"] * 1e9) == stamp_ns(plan.header.stamp)


@pytest.mark.ros
def test_a_sqlite3_bag_replays_like_an_mcap_one(episode_bag, stack, tmp_path):
    bag = episodes_to_bag([episode_bag.parent / "data"], EpisodeBagConfig(output=tmp_path / "sqlite_bag",
                                                                          storage="sqlite3", limit=1),
                          progress=False).output
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.db3"))
    summary_path = tmp_path / "sqlite.json"
    stack.replay(str(bag), "--until", "report", "--summary", str(summary_path))
    (run,) = json.loads(summary_path.read_text())["instructions"]
    assert (run["instruction"], run["outcome"], run["plan_from_this_image"]) == (FIRST, "accepted_by_gate", True)


@pytest.mark.ros
def test_replay_without_a_stack_exits_non_zero_saying_what_is_missing(episode_bag, ros_domain, tmp_path):
    replay = eva_replay(ros_domain, str(episode_bag), "--wait-for-stack", "2", "--summary", str(tmp_path / "s.json"))
    output, _ = replay.communicate(timeout=60)
    assert replay.returncode == 1, output
    assert "eva replay: nothing on /eva/instruction and /eva/plan after 2.0 s: is the stack running" in output
    assert json.loads((tmp_path / "s.json").read_text())["totals"]["instructions"] == 0
