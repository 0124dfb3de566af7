"""idm_node: the verdict messages on one plan in-process, then the node as a real process over real DDS.

The IDM is a real checkpoint whose decode is a still plan at POSE (tests/idm_checkpoints.py), so a
well-formed plan measured at POSE must be accepted; about 200 malformed plans must each get a
report with the right code and a reason naming the field, and nothing on eva/gated_plan.
"""

from __future__ import annotations

import collections
import hashlib
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LifecycleClient
from idm_checkpoints import still_idm_checkpoint

from eva_idm.embodiment import load_embodiment
from eva_idm.frames import encode_frames, frames_sha256
from eva_idm.idm import load_checkpoint
from eva_idm.motion import GateConfig, Verdict, validate_trajectory
from eva_idm.plan_gate import IDMNodeConfig, PlanGate
from eva_idm.trajectory import Trajectory
from eva_sim.test_patterns import moving_pattern

torch.set_num_threads(1)  # a 2-core machine shared with other test runs

TINY_CONFIG = Path(__file__).resolve().parents[1] / "config" / "idm_node_tiny.yaml"
EMBODIMENT = load_embodiment("aloha_agilex")
JOINTS = list(EMBODIMENT.joint_names)
POSE = [0.1, 0.5, 0.6, -0.2, 0.1, 0.0, 0.5, -0.1, 0.4, 0.7, 0.2, -0.1, 0.05, 0.8]
IMAGE_STAMP = (1_700_000_000, 250_000_000)
FRAMES = moving_pattern(9, 64, 64, seed=2)
BATCH = 4  # plans in flight at once: idm_node queues up to 4 (PLAN_QUEUE), so none is replaced unjudged


def visual_plan(frames: np.ndarray = FRAMES, fmt: str = "png", fps: float = 16.0, names=JOINTS, positions=POSE):
    """A well-formed plan with a fresh id, its hash over its frames."""
    from sensor_msgs.msg import CompressedImage, JointState

    from eva_msgs.msg import VisualPlan

    plan = VisualPlan(plan_id=str(uuid.uuid4()), instruction="hold still", height=frames.shape[1],
                      width=frames.shape[2], fps=fps, model_id="test", seed=3)
    plan.header.stamp.sec, plan.header.stamp.nanosec = IMAGE_STAMP
    plan.header.frame_id = "head_camera"
    plan.joint_state_at_image = JointState(name=list(names), position=[float(value) for value in positions])
    plan.frames = [CompressedImage(format=frame.format, data=frame.data) for frame in encode_frames(frames, fmt)]
    return rehash(plan)


def rehash(plan):
    from eva_idm.ros.conversions import encoded_frames

    plan.frames_sha256 = frames_sha256(encoded_frames(plan))
    return plan


def malformed_plans() -> list[tuple[str, object, int, str]]:
    """``(label, plan, expected code, text the reason starts with or contains)``: about 200 bad plans."""
    from sensor_msgs.msg import JointState

    from eva_msgs.msg import ExecutabilityReport as Report

    cases = []
    indices = (0, 3, 5, 8)
    formats = ("jpeg", "PNG", "", "rgba8", "bgr8", "mono8", " png", "png\n", "h264", "compressed", "rgb16", "image/png")
    for fmt in formats:
        for index in indices:
            plan = visual_plan()
            plan.frames[index].format = fmt
            cases.append((f"format {fmt!r} at frame {index}", rehash(plan), Report.MALFORMED_PLAN,
                          f"frames[{index}].format: unsupported frame format"))
    rng = np.random.default_rng(5)
    corruptions = {
        "only the 8-byte signature": lambda data: data[:8],
        "its first half": lambda data: data[: len(data) // 2],
        "no IEND chunk": lambda data: data[:-12],
        "64 random bytes": lambda data: rng.bytes(64),
        "1000 zero bytes": lambda data: bytes(1000),
        "a JPEG header and noise": lambda data: b"\xff\xd8\xff\xe0" + rng.bytes(200),
        "a broken signature": lambda data: b"\0" + data[1:],
    }
    for what, corrupt in corruptions.items():
        for index in indices:
            plan = visual_plan()
            plan.frames[index].data = corrupt(bytes(plan.frames[index].data))
            cases.append((f"PNG frame {index} with {what}", rehash(plan), Report.MALFORMED_PLAN,
                          f"frames[{index}].data:"))
    for what, change in {"one byte short": -1, "one pixel short": -3, "one row short": -192, "one byte long": 1,
                         "no bytes": None}.items():
        for index in indices:
            plan = visual_plan(fmt="rgb8")
            data = bytes(plan.frames[index].data)
            plan.frames[index].data = b"" if change is None else data[:change] if change < 0 else data + b"\0" * change
            cases.append((f"rgb8 frame {index} {what}", rehash(plan), Report.MALFORMED_PLAN,
                          f"frames[{index}].data: rgb8 frame has"))
    for height, width in ((0, 64), (64, 0), (0, 0)):
        plan = visual_plan()
        plan.height, plan.width = height, width
        cases.append((f"size {height}x{width}", plan, Report.MALFORMED_PLAN, "height/width: plan size must be"))
    for height, width in ((32, 64), (64, 32), (65, 64), (64, 63), (128, 128), (1, 1), (64, 65)):
        plan = visual_plan()
        plan.height, plan.width = height, width
        cases.append((f"64x64 PNGs declared {height}x{width}", plan, Report.MALFORMED_PLAN,
                      f"frames[0].data: PNG is 64x64, expected {height}x{width}"))
    plan = visual_plan(fmt="rgb8")
    plan.height = 63
    cases.append(("64x64 rgb8 frames declared 63x64", plan, Report.MALFORMED_PLAN, "frames[0].data: rgb8 frame has"))

    correct = visual_plan().frames_sha256
    raw = hashlib.sha256(b"".join(bytes(frame.data) for frame in visual_plan().frames)).hexdigest()
    for what, declared in {"empty": "", "zeros": "0" * 64, "upper-case": correct.upper(), "truncated": correct[:-1],
                           "one digit long": correct + "0", "space-prefixed": " " + correct,
                           "another plan's": visual_plan(moving_pattern(9, 64, 64, seed=9)).frames_sha256,
                           "over the bytes only": raw}.items():
        plan = visual_plan()
        plan.frames_sha256 = declared
        cases.append((f"{what} hash", plan, Report.HASH_MISMATCH, "frames_sha256: declared"))
    tampered = {
        "frames reversed": lambda plan: plan.frames.reverse(),
        "frame 4 dropped": lambda plan: plan.frames.pop(4),
        "frame 1 replaced by frame 0": lambda plan: setattr(plan.frames[1], "data", plan.frames[0].data),
        "frame 4 re-labelled rgb8": lambda plan: setattr(plan.frames[4], "format", "rgb8"),
    }
    for what, tamper in tampered.items():
        plan = visual_plan()
        tamper(plan)
        cases.append((f"{what}, hash kept", plan, Report.HASH_MISMATCH, "frames_sha256: declared"))

    for count in range(4):
        plan = visual_plan()
        del plan.frames[count:]
        cases.append((f"{count} frames", rehash(plan), Report.TOO_FEW_FRAMES, f"frames: the plan has {count};"))
    for fps, needed in ((160.0, 21), (1000.0, 127)):
        cases.append((f"9 frames at {fps} fps", visual_plan(fps=fps), Report.TOO_FEW_FRAMES,
                      f"frames: the plan has 9; EVA's reward and the IDM's window (3 frames 0.0625 s apart) need at "
                      f"least {needed}"))

    field = "joint_state_at_image"
    plan = visual_plan()
    plan.joint_state_at_image = JointState()
    cases.append(("no joint state", plan, Report.NO_JOINT_STATE, f"{field}.name: empty"))
    for index, name in enumerate(JOINTS):
        others = [i for i in range(14) if i != index]
        cases.append((f"{name} missing", visual_plan(names=[JOINTS[i] for i in others],
                                                     positions=[POSE[i] for i in others]),
                      Report.NO_JOINT_STATE, f"{field}.name: lacks ['{name}']"))
        for value in (math.nan, math.inf, -math.inf):
            positions = list(POSE)
            positions[index] = value
            cases.append((f"{name} at {value}", visual_plan(positions=positions), Report.NO_JOINT_STATE,
                          f"{field}.position: {value} at {name} is not finite"))
    for what, names in {"upper-case names": [name.upper() for name in JOINTS],
                        "ROS-style names": [f"joint{i}" for i in range(14)],
                        "fl_joint7 for fl_joint6": [*JOINTS[:5], "fl_joint7", *JOINTS[6:]]}.items():
        cases.append((what, visual_plan(names=names), Report.NO_JOINT_STATE, f"{field}.name: lacks ["))
    for what, positions, reason in (("13 positions", POSE[:13], "13 values for 14 names"),
                                    ("15 positions", [*POSE, 0.0], "15 values for 14 names"),
                                    ("no positions", [], "0 values for 14 names")):
        cases.append((what, visual_plan(positions=positions), Report.NO_JOINT_STATE, f"{field}.position: {reason}"))
    cases.append(("fl_joint1 twice", visual_plan(names=[*JOINTS[:13], "fl_joint1"]), Report.NO_JOINT_STATE,
                  f"{field}.name: repeated ['fl_joint1']"))

    for fps in (0.0, -16.0, math.nan, math.inf, -math.inf, 1e30, 1e6, 1001.0, 0.5, 1e-30, -0.0, 3e38):
        cases.append((f"fps {fps}", visual_plan(fps=fps), Report.MALFORMED_PLAN, "fps: must lie in [1, 1000] Hz"))
    return cases


def verdict_problem(label: str, report, code: int, text: str) -> str:
    """'' when ``report`` has ``code``, a reason with ``text``, and no trajectory-worthy verdict; else what is wrong."""
    if report.code != code or report.executable or text not in report.reason:
        return f"{label}: got code {report.code} reason {report.reason!r}, expected code {code} with {text!r}"
    return ""


def trajectory_from_message(message) -> Trajectory:
    times = [point.time_from_start.sec + point.time_from_start.nanosec * 1e-9 for point in message.points]
    return Trajectory(tuple(message.joint_names), np.array(times), np.array([p.positions for p in message.points]),
                      np.array([p.velocities for p in message.points]))


def check_accepted(plan, report, gated) -> None:
    """The report and GatedPlan of a still plan measured at POSE, as the contract describes them."""
    from eva_msgs.msg import ExecutabilityReport

    assert report.code == ExecutabilityReport.ACCEPTED and report.executable, report.reason
    assert (report.header.stamp.sec, report.header.stamp.nanosec) == IMAGE_STAMP
    assert (report.plan_id, report.frames_sha256) == (plan.plan_id, plan.frames_sha256)
    assert report.idm_model_id.startswith("still@")
    assert report.reason.startswith("accepted: EVA reward 10 >= 6")
    assert report.reward == pytest.approx(10.0) and report.penalty == pytest.approx(0.0)
    terms = (report.penalty_acceleration, report.penalty_jerk, report.penalty_velocity_limit,
             report.penalty_acceleration_limit)
    assert terms == pytest.approx((0.0, 0.0, 0.0, 0.0))
    counts = (report.position_violations, report.velocity_violations, report.acceleration_violations,
              report.jerk_violations)
    assert counts == (0, 0, 0, 0) and list(report.offending_joints) == []
    assert list(report.joint_names) == JOINTS and np.allclose(report.start_offset, 0.0, atol=1e-6)
    assert 0.0 <= report.max_smoothing_deviation < 1e-6
    assert (report.time_scale, report.num_frames, report.fps) == (0.5, 9, 16.0)
    assert [timing.stage for timing in report.timings] == ["frame_decode", "idm_decode", "gate"]
    assert gated is not None and gated.plan_id == plan.plan_id and gated.report == report
    assert (gated.header.stamp.sec, gated.header.stamp.nanosec) == IMAGE_STAMP
    assert gated.joint_state_at_image == plan.joint_state_at_image
    trajectory = gated.trajectory
    assert (trajectory.header.stamp.sec, trajectory.header.stamp.nanosec) == (0, 0)
    assert list(trajectory.joint_names) == JOINTS and len(trajectory.points) == 9
    assert all(len(point.accelerations) == 0 for point in trajectory.points)
    assert list(trajectory.points[0].positions) == POSE
    motion = trajectory_from_message(trajectory)
    assert motion.duration == pytest.approx(8 / 16.0 / 0.5)
    assert validate_trajectory(motion, EMBODIMENT, 100.0, start_positions=POSE) == []


@pytest.fixture(scope="module")
def still_checkpoint(tmp_path_factory) -> Path:
    return still_idm_checkpoint(tmp_path_factory.mktemp("idm") / "still", POSE)


@pytest.fixture(scope="module")
def gate(still_checkpoint) -> PlanGate:
    return PlanGate.load(IDMNodeConfig(checkpoint=str(still_checkpoint), device="cpu", num_threads=1))


# --- one plan's messages, in-process ----------------------------------------------------------------


def test_an_accepted_plan_becomes_a_report_and_a_gated_plan(gate):
    from eva_idm.ros.report import verdict_messages

    plan = visual_plan()
    judgement, report, gated = verdict_messages(gate, plan)
    assert judgement.verdict is Verdict.ACCEPTED
    check_accepted(plan, report, gated)


def test_a_preview_plan_is_judged_but_never_gated(gate):
    from eva_idm.ros.report import verdict_messages

    judgement, report, gated = verdict_messages(gate, visual_plan(), preview=True)
    assert judgement.executable and report.executable and gated is None


def test_every_malformed_plan_gets_its_verdict_naming_the_field(gate):
    from eva_idm.ros.report import verdict_messages

    cases = malformed_plans()
    assert len(cases) >= 200
    problems = []
    for label, plan, code, text in cases:
        _, report, gated = verdict_messages(gate, plan)
        problems.append(verdict_problem(label, report, code, text) or ("" if gated is None else f"{label}: gated"))
        assert report.plan_id == plan.plan_id and list(report.joint_names) == JOINTS and len(report.start_offset) == 14
    assert [problem for problem in problems if problem] == []


def test_a_failure_while_judging_is_an_internal_error_report(still_checkpoint):
    from eva_idm.ros.report import verdict_messages
    from eva_msgs.msg import ExecutabilityReport

    broken_idm = load_checkpoint(still_checkpoint, EMBODIMENT.name).to("meta")  # weights without data
    broken = PlanGate(broken_idm, EMBODIMENT, GateConfig.from_embodiment(EMBODIMENT), model_id="broken")
    plan = visual_plan()
    judgement, report, gated = verdict_messages(broken, plan)
    assert judgement.verdict is Verdict.INTERNAL_ERROR and gated is None
    assert report.code == ExecutabilityReport.INTERNAL_ERROR and not report.executable
    assert report.reason.startswith("idm_node failed while judging the plan: NotImplementedError:")
    assert (report.plan_id, report.frames_sha256, report.idm_model_id) == (plan.plan_id, plan.frames_sha256, "broken")
    assert math.isnan(report.reward) and report.num_frames == 9 and report.fps == 16.0


# --- the node over DDS ------------------------------------------------------------------------------


def qos(transient_local: bool = False, depth: int = 1):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    durability = DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=durability)


class Planner:
    """The test peer plays the planner (plans in) and listens as the bridge would (reports, gated plans)."""

    def __init__(self, ros_peer):
        from diagnostic_msgs.msg import DiagnosticArray

        from eva_msgs.msg import ExecutabilityReport, GatedPlan, VisualPlan

        node = ros_peer.node
        self.peer = ros_peer
        self.plans = node.create_publisher(VisualPlan, "eva/plan", qos(depth=BATCH))
        self.previews = node.create_publisher(VisualPlan, "eva/plan/preview", qos(depth=BATCH))
        self.reports: dict[str, list[ExecutabilityReport]] = collections.defaultdict(list)
        self.gated: list[GatedPlan] = []
        self.diagnostics: list[DiagnosticArray] = []
        node.create_subscription(ExecutabilityReport, "eva/executability",
                                 lambda report: self.reports[report.plan_id].append(report),
                                 qos(transient_local=True, depth=50))
        node.create_subscription(GatedPlan, "eva/gated_plan", self.gated.append, qos(depth=10))
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def send(self, plans, preview: bool = False) -> None:
        publisher = self.previews if preview else self.plans
        self.peer.spin_until(lambda: publisher.get_subscription_count() > 0, 30, "idm_node to subscribe")
        self.peer.spin_until(lambda: self.peer.node.count_publishers("eva/executability") > 0, 30, "the reports")
        for plan in plans:
            publisher.publish(plan)

    def await_reports(self, plans, timeout: float = 60.0) -> None:
        self.peer.spin_until(lambda: all(plan.plan_id in self.reports for plan in plans), timeout,
                             f"reports on {len(plans)} plan(s)")


@pytest.fixture
def idm_node(start_node, ros_peer, still_checkpoint):
    """Start idm_node on the still IDM with the tiny (CPU) config, configure and activate it."""
    from lifecycle_msgs.msg import Transition

    def start():
        process = start_node("eva_idm", "idm_node", "--ros-args", "--params-file", str(TINY_CONFIG),
                             "-p", f"checkpoint:={still_checkpoint}")
        lifecycle = LifecycleClient(ros_peer, "idm_node")
        assert lifecycle.transition(Transition.TRANSITION_CONFIGURE), process.log()
        assert lifecycle.transition(Transition.TRANSITION_ACTIVATE), process.log()
        assert lifecycle.state() == "active"
        return process

    return start


@pytest.mark.ros
def test_an_unknown_parameter_fails_configure_naming_it(start_node, ros_peer, still_checkpoint):
    from lifecycle_msgs.msg import Transition

    process = start_node("eva_idm", "idm_node", "--ros-args", "--params-file", str(TINY_CONFIG),
                         "-p", f"checkpoint:={still_checkpoint}", "-p", "min_rewrad:=7.0")
    lifecycle = LifecycleClient(ros_peer, "idm_node")
    assert not lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == "unconfigured"
    assert "unknown parameter(s) 'min_rewrad' (did you mean 'min_reward'?)" in process.log()
    assert process.poll() is None


@pytest.mark.ros
def test_a_still_plan_at_the_measured_pose_is_accepted_and_gated_and_a_preview_only_reported(idm_node, ros_peer):
    planner = Planner(ros_peer)
    process = idm_node()
    plan, preview = visual_plan(), visual_plan()
    planner.send([plan])
    planner.send([preview], preview=True)
    planner.await_reports([plan, preview])
    ros_peer.spin_until(lambda: planner.gated, 30, "the gated plan")

    check_accepted(plan, planner.reports[plan.plan_id][0], planner.gated[0])
    assert planner.reports[preview.plan_id][0].executable
    assert [gated.plan_id for gated in planner.gated] == [plan.plan_id]  # a preview is never forwarded

    def diagnosed() -> bool:
        statuses = [status for array in planner.diagnostics for status in array.status]
        values = [{kv.key: kv.value for kv in status.values} for status in statuses]
        return any(value.get("verdicts.ACCEPTED") == "2" and "seconds.idm_decode" in value for value in values)

    ros_peer.spin_until(diagnosed, 10, "/diagnostics to count both verdicts and show the stage timings")
    assert process.poll() is None, process.log()


@pytest.mark.ros
def test_malformed_plans_each_get_a_report_and_the_node_still_accepts_a_good_plan(idm_node, ros_peer):
    planner = Planner(ros_peer)
    process = idm_node()
    cases = malformed_plans()
    for start in range(0, len(cases), BATCH):
        batch = [plan for _, plan, _, _ in cases[start:start + BATCH]]
        planner.send(batch)
        planner.await_reports(batch)

    problems = [verdict_problem(label, planner.reports[plan.plan_id][0], code, text)
                for label, plan, code, text in cases]
    assert [problem for problem in problems if problem] == []
    assert all(len(planner.reports[plan.plan_id]) == 1 for _, plan, _, _ in cases)
    good = visual_plan()
    planner.send([good])
    planner.await_reports([good])
    ros_peer.spin_until(lambda: planner.gated, 30, "the good plan's gated plan")
    assert planner.reports[good.plan_id][0].executable, planner.reports[good.plan_id][0].reason
    assert [gated.plan_id for gated in planner.gated] == [good.plan_id]  # none for a malformed plan
    assert process.poll() is None, process.log()
