"""The planner node's helpers, kept out of the node: parameters, message checks and conversions, goal outcomes."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.action.server import ServerGoalHandle
from sensor_msgs.msg import CompressedImage, Image, JointState

from eva_idm.frames import encode_frames, frames_sha256
from eva_idm.ros.conversions import compressed_frames, stage_timings
from eva_msgs.action import ExecuteInstruction
from eva_msgs.msg import ExecutabilityReport, ExecutionStatus, VisualPlan

RAW_ENCODINGS = ("rgb8", "bgr8")
Result, Feedback = ExecuteInstruction.Result, ExecuteInstruction.Feedback
# Error code -> constant name, for logs (the generated class also has upper-case SLOT_TYPES).
RESULT_NAMES = {getattr(Result, name): name for name in dir(Result) if isinstance(getattr(Result, name), int)}
POLL_S = 0.1  # how often a waiting goal checks cancellation, its deadline and the lifecycle state [s]
END_STATES = {
    ExecutionStatus.SUCCEEDED: Result.NONE,
    ExecutionStatus.REJECTED: Result.REJECTED_BY_BRIDGE,
    ExecutionStatus.ABORTED: Result.EXECUTION_ABORTED,
}



@dataclass(frozen=True)
class CameraFrame:
    """The newest valid head-camera image as RGB, with what the plan must carry about it.

    ``joint_state`` is the newest ``joint_states`` message when the image arrived (empty when none
    had arrived); ``received`` is the arrival time on the steady clock [s].
    """

    rgb: np.ndarray
    stamp: Time
    frame_id: str
    joint_state: JointState
    received: float


class CameraBuffer:
    """The newest valid head-camera image, paired with the newest joint state when it arrived.

    Subscription callbacks write, planning threads read; stop-and-go needs nothing older.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: CameraFrame | None = None
        self.joint_state: JointState | None = None
        self.malformed = 0

    def on_joint_state(self, message: JointState) -> None:
        """Remember the newest joint state; images arriving from now on carry it."""
        self.joint_state = message

    def keep(self, message: Image | CompressedImage) -> str:
        """Keep ``message`` as the newest image; '' when kept, else why it was dropped (field and value)."""
        convert = compressed_to_rgb if isinstance(message, CompressedImage) else image_to_rgb
        try:
            rgb = convert(message)
        except ValueError as error:
            self.malformed += 1
            return str(error)
        frame = CameraFrame(rgb, message.header.stamp, message.header.frame_id, self.joint_state or JointState(),
                            time.monotonic())
        with self._lock:
            self._newest = frame
        return ""

    def fresh(self, max_age: float, wait_s: float, keep_waiting: Callable[[], bool]) -> CameraFrame | None:
        """The newest image if it arrived within ``max_age`` s, waiting up to ``wait_s`` s while ``keep_waiting()``."""
        deadline = time.monotonic() + wait_s
        while keep_waiting():
            with self._lock:
                frame = self._newest
            if frame is not None and time.monotonic() - frame.received <= max_age:
                return frame
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        return None


def image_to_rgb(message: Image) -> np.ndarray:
    """An ``rgb8``/``bgr8`` Image as ``H x W x 3`` RGB uint8; ValueError names the field at fault."""
    if message.encoding not in RAW_ENCODINGS:
        raise ValueError(f"encoding: expected one of {list(RAW_ENCODINGS)}, got {message.encoding!r}")
    height, width, step, size = message.height, message.width, message.step, len(message.data)
    if height == 0 or width == 0:
        raise ValueError(f"height/width: image size must be positive, got {height}x{width}")
    if step < width * 3:
        raise ValueError(f"step: {step} bytes per row is less than width * 3 = {width * 3}")
    if size != step * height:
        raise ValueError(f"data: {size} bytes, expected step * height = {step} * {height} = {step * height}")
    rows = np.frombuffer(message.data, np.uint8).reshape(height, step)
    pixels = rows[:, : width * 3].reshape(height, width, 3)
    return np.ascontiguousarray(pixels[..., ::-1] if message.encoding == "bgr8" else pixels)


def compressed_to_rgb(message: CompressedImage) -> np.ndarray:
    """A PNG or JPEG CompressedImage as ``H x W x 3`` RGB uint8; ValueError names the field at fault."""
    bgr = cv2.imdecode(np.frombuffer(message.data, np.uint8), cv2.IMREAD_COLOR) if len(message.data) else None
    if bgr is None:
        raise ValueError(f"data: {len(message.data)} bytes of format {message.format!r} are not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def visual_plan(
    frames: np.ndarray,
    camera: CameraFrame,
    *,
    plan_id: str,
    instruction: str,
    fps: float,
    seed: int,
    model_id: str,
    steps: int,
    timings: Mapping[str, float],
    frame_format: str,
) -> VisualPlan:
    """The ``VisualPlan`` of ``frames`` (T x H x W x 3 RGB), stamped with the conditioning image's stamp.

    ``timings`` gains the encoding time as stage ``<frame_format>_encode``.
    """
    started = time.perf_counter()
    encoded = encode_frames(frames, frame_format)
    timings = {**timings, f"{frame_format}_encode": time.perf_counter() - started}
    plan = VisualPlan(
        plan_id=plan_id, instruction=instruction, joint_state_at_image=camera.joint_state,
        height=frames.shape[1], width=frames.shape[2], fps=float(fps), frames_sha256=frames_sha256(encoded),
        seed=seed, model_id=model_id, num_inference_steps=steps, timings=stage_timings(timings),
    )
    plan.header.stamp, plan.header.frame_id = camera.stamp, camera.frame_id
    plan.frames = compressed_frames(encoded, camera.stamp, camera.frame_id)
    return plan


def joint_positions(joint_state: JointState, names: Sequence[str]) -> np.ndarray | None:
    """``joint_state``'s positions in the order of ``names``; None unless it has every one of them.

    Best-of-N then scores without a measured pose, and the gate says so (``NO_JOINT_STATE``).
    """
    by_name = dict(zip(joint_state.name, joint_state.position, strict=False))
    if not all(name in by_name for name in names):
        return None
    return np.array([by_name[name] for name in names], dtype=np.float64)


def goal_problem(goal: ExecuteInstruction.Goal, can_rank: bool) -> str:
    """Why ``goal`` is invalid (naming the field and the value), or '' when it is fine."""
    if not goal.instruction.strip():
        return f"instruction: must not be empty, got {goal.instruction!r}"
    if not (math.isfinite(goal.timeout) and goal.timeout >= 0):
        return f"timeout: must be a finite number >= 0 [s] (0 = the planner's default), got {goal.timeout}"
    if goal.seed < -1:
        return f"seed: must be -1 (random) or >= 0, got {goal.seed}"
    if goal.best_of_n > 1 and not can_rank:
        return f"best_of_n: {goal.best_of_n} candidates need an IDM to rank them; the idm_checkpoint parameter is empty"
    return ""


def goal_outcome(
    report: ExecutabilityReport | None, status: ExecutionStatus | None, plan_only: bool
) -> tuple[int, str] | None:
    """The result code and message a goal ends with, from its plan's report and newest status; None while open.

    The bridge's final state decides (success only on SUCCEEDED); before it, a report that rejects
    the plan ends the goal, and so does any report for a ``plan_only`` goal.
    """
    if status is not None and status.state in END_STATES:
        return END_STATES[status.state], status.reason
    if report is not None and not report.executable:
        return Result.REJECTED_BY_GATE, report.reason
    if report is not None and plan_only:
        return Result.NONE, "planned and gated (plan_only)"
    return None


def goal_result(
    code: int, message: str, plan_id: str = "", report: ExecutabilityReport | None = None
) -> ExecuteInstruction.Result:
    """An ``ExecuteInstruction`` result (an empty report when there is none yet)."""
    return Result(error_code=code, error_msg=message, plan_id=plan_id, report=report or ExecutabilityReport())


def interrupted(
    goal_handle: ServerGoalHandle,
    deadline: float,
    when: str,
    plan_id: str = "",
    report: ExecutabilityReport | None = None,
) -> ExecuteInstruction.Result:
    """The result of a goal stopped ``when`` (a phrase): cancelled by its client, past its deadline, or deactivated."""
    if goal_handle.is_cancel_requested:
        return goal_result(Result.CANCELED, f"cancelled {when}", plan_id, report)
    if time.monotonic() > deadline:
        return goal_result(Result.TIMEOUT, f"timed out {when}", plan_id, report)
    return goal_result(Result.UNKNOWN, f"planner_node deactivated {when}", plan_id, report)


class VerdictBoard:
    """Executability reports and execution states of the plans a goal waits on, shared between threads.

    Subscription callbacks post every message; only plans announced with :meth:`expect` are kept,
    so transient-local replays of older plans are dropped. ``version`` grows with every kept
    message, so a waiter cannot miss one that arrives between reading and waiting.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._reports: dict[str, ExecutabilityReport | None] = {}
        self._statuses: dict[str, ExecutionStatus | None] = {}
        self.version = 0

    def expect(self, plan_id: str) -> None:
        """Keep the report and the newest status of ``plan_id`` from now on."""
        with self._changed:
            self._reports[plan_id] = self._statuses[plan_id] = None

    def forget(self, plan_id: str) -> None:
        """Stop keeping ``plan_id``'s messages."""
        with self._changed:
            self._reports.pop(plan_id, None)
            self._statuses.pop(plan_id, None)

    def post(self, message: ExecutabilityReport | ExecutionStatus) -> None:
        """Keep ``message`` if its plan is expected (a report, or the newest status)."""
        table = self._reports if isinstance(message, ExecutabilityReport) else self._statuses
        with self._changed:
            if message.plan_id in table:
                table[message.plan_id] = message
                self.version += 1
                self._changed.notify_all()

    def latest(self, plan_id: str) -> tuple[ExecutabilityReport | None, ExecutionStatus | None, int]:
        """The report and newest status of ``plan_id`` (None until they arrive), and the version read."""
        with self._changed:
            return self._reports.get(plan_id), self._statuses.get(plan_id), self.version

    def wait(self, seen_version: int, timeout: float) -> None:
        """Block until a message newer than ``seen_version`` is kept, or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen_version, timeout)


def await_verdicts(
    goal_handle: ServerGoalHandle,
    board: VerdictBoard,
    plan_id: str,
    plan_only: bool,
    deadline: float,
    active: Callable[[], bool],
) -> ExecuteInstruction.Result:
    """Follow the gate's report and the bridge's states of ``plan_id`` to the goal's result, with feedback.

    Returns early when the client cancels, ``deadline`` (steady clock) passes or ``active()`` turns false.
    """
    goal_handle.publish_feedback(Feedback(phase=Feedback.GATING, plan_id=plan_id, reward=math.nan))
    executing, last_status = False, None
    while True:
        report, status, version = board.latest(plan_id)
        outcome = goal_outcome(report, status, plan_only)
        if outcome is not None:
            if not executing and status is not None and status.state == ExecutionStatus.SUCCEEDED:
                # the whole execution fell between two polls: the client still sees the phase, completed
                goal_handle.publish_feedback(Feedback(phase=Feedback.EXECUTING, plan_id=plan_id,
                                                      reward=report.reward if report else math.nan, progress=1.0))
            return goal_result(*outcome, plan_id, report)
        if report is not None and (not executing or status is not last_status):
            executing, last_status = True, status
            progress = status.progress if status else 0.0
            feedback = Feedback(phase=Feedback.EXECUTING, plan_id=plan_id, reward=report.reward, progress=progress)
            goal_handle.publish_feedback(feedback)
        if goal_handle.is_cancel_requested or time.monotonic() > deadline or not active():
            awaited = "the bridge to finish" if report else "the executability report"
            return interrupted(goal_handle, deadline, f"while waiting for {awaited}", plan_id, report)
        board.wait(version, POLL_S)


def diagnostic_status(
    name: str, state: str, model_id: str, values: Mapping[str, object], error: str
) -> DiagnosticStatus:
    """One ``DiagnosticStatus``: ERROR with ``error`` when set, else OK with ``state`` as the message."""
    status = DiagnosticStatus(name=name, hardware_id=model_id, message=error or state)
    status.level = DiagnosticStatus.ERROR if error else DiagnosticStatus.OK
    status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
    return status
