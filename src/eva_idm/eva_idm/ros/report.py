"""The IDM node's messages, without rclpy: a ``VisualPlan`` in, an ``ExecutabilityReport`` and a ``GatedPlan`` out.

:func:`verdict_messages` is everything ``idm_node`` does with one plan except publishing it, so it
is tested in-process: the checks in a fixed order, cheapest first (fps and frame count before
decoding any frame, the frames and their hash before the joint state, all of it before the IDM),
then :meth:`eva_idm.plan_gate.PlanGate.judge`. It never raises for a plan: an unexpected failure
becomes an INTERNAL_ERROR report with the exception's message.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from eva_idm.frames import FrameError
from eva_idm.motion import Verdict
from eva_idm.plan_gate import PlanGate, PlanJudgement, PlanRejected, check_plan_fps, frame_error_verdict
from eva_idm.ros.conversions import decode_visual_plan, stage_timings
from eva_idm.trajectory import Trajectory
from eva_msgs.msg import ExecutabilityReport, GatedPlan, VisualPlan

NANOSECONDS = 1_000_000_000


def verdict_messages(
    gate: PlanGate, plan: VisualPlan, preview: bool = False
) -> tuple[PlanJudgement, ExecutabilityReport, GatedPlan | None]:
    """The judgement on ``plan``, its report, and the ``GatedPlan`` when accepted (never for a ``preview``).

    Never raises for a plan: any unexpected failure is reported as INTERNAL_ERROR with its message.
    """
    try:
        judgement = judge_visual_plan(gate, plan)
        report = executability_report(plan, judgement, gate.model_id)
        gated = gated_plan(plan, report, judgement.motion.trajectory) if judgement.executable and not preview else None
        return judgement, report, gated
    except Exception as error:  # noqa: BLE001 (one plan's failure is its verdict; the node keeps serving)
        reason = f"idm_node failed while judging the plan: {type(error).__name__}: {error}"
        judgement = gate.rejected(Verdict.INTERNAL_ERROR, reason, len(plan.frames), plan.fps)
        return judgement, executability_report(plan, judgement, gate.model_id), None


def judge_visual_plan(gate: PlanGate, plan: VisualPlan) -> PlanJudgement:
    """Check, decode and judge ``plan``; bad plan data is a verdict, timings include ``frame_decode``.

    Order: fps and frame count (MALFORMED_PLAN, TOO_FEW_FRAMES), the frames and their hash
    (MALFORMED_PLAN, HASH_MISMATCH), then :meth:`PlanGate.judge` (joint state, IDM, gate).
    """
    num_frames = len(plan.frames)
    started = time.perf_counter()
    try:
        gate.check_frame_count(num_frames, check_plan_fps(plan.fps))
        try:
            frames = decode_visual_plan(plan)
        except FrameError as error:
            raise PlanRejected(frame_error_verdict(error), str(error)) from error
    except PlanRejected as rejection:
        return gate.rejected(rejection.verdict, rejection.reason, num_frames, plan.fps)
    frame_decode = time.perf_counter() - started
    joint_state = plan.joint_state_at_image
    judgement = gate.judge(frames, plan.fps, joint_state.name, joint_state.position)
    return dataclasses.replace(judgement, timings={"frame_decode": frame_decode, **judgement.timings})


def executability_report(plan: VisualPlan, judgement: PlanJudgement, idm_model_id: str) -> ExecutabilityReport:
    """The report on ``plan``: every field filled; NaN marks a number the judgement never reached.

    Header stamp and frame = the plan's (the conditioning image's); ``start_offset`` has one value
    per joint of ``joint_names`` (NaN when not computed); counts are zero when not computed.
    """
    motion = judgement.motion
    report = ExecutabilityReport(
        plan_id=plan.plan_id,
        frames_sha256=plan.frames_sha256,
        idm_model_id=idm_model_id,
        executable=judgement.executable,
        code=int(judgement.verdict),
        reason=judgement.reason,
        joint_names=list(judgement.joint_names),
        time_scale=float(judgement.time_scale),
        num_frames=judgement.num_frames,
        fps=float(judgement.fps),
        timings=stage_timings(dict(judgement.timings)),
    )
    report.header = plan.header
    reward = motion.reward if motion is not None else None
    report.reward, report.penalty = _number(reward, "reward"), _number(reward, "penalty")
    report.penalty_acceleration = _number(reward, "acceleration_penalty")
    report.penalty_jerk = _number(reward, "jerk_penalty")
    report.penalty_velocity_limit = _number(reward, "velocity_limit_penalty")
    report.penalty_acceleration_limit = _number(reward, "acceleration_limit_penalty")
    report.start_offset = [math.nan] * len(judgement.joint_names)
    report.max_smoothing_deviation = math.nan
    if motion is not None:
        report.position_violations = motion.position_violations
        report.velocity_violations = motion.velocity_violations
        report.acceleration_violations = motion.acceleration_violations
        report.jerk_violations = motion.jerk_violations
        report.offending_joints = list(motion.offending_joints)
        report.max_smoothing_deviation = float(motion.max_smoothing_deviation)
        if motion.start_offset is not None:
            report.start_offset = [float(value) for value in motion.start_offset]
    return report


def gated_plan(plan: VisualPlan, report: ExecutabilityReport, trajectory: Trajectory) -> GatedPlan:
    """The accepted plan's ``GatedPlan``: the plan's header and joint state at image time, the report, the motion."""
    message = GatedPlan(plan_id=plan.plan_id, joint_state_at_image=plan.joint_state_at_image, report=report,
                        trajectory=joint_trajectory(trajectory))
    message.header = plan.header
    return message


def joint_trajectory(trajectory: Trajectory) -> JointTrajectory:
    """``trajectory`` as a ``JointTrajectory`` with a zero stamp (start on arrival).

    Positions and velocities, accelerations when the trajectory has them; ``time_from_start``
    rounded to the nanosecond (the trajectory's points are at least 1 ns apart).
    """
    message = JointTrajectory(joint_names=list(trajectory.joint_names))
    for index, seconds in enumerate(trajectory.times):
        point = JointTrajectoryPoint(positions=trajectory.positions[index].tolist())
        if trajectory.velocities is not None:
            point.velocities = trajectory.velocities[index].tolist()
        if trajectory.accelerations is not None:
            point.accelerations = trajectory.accelerations[index].tolist()
        whole, nanoseconds = divmod(round(float(seconds) * NANOSECONDS), NANOSECONDS)
        point.time_from_start = Duration(sec=int(whole), nanosec=int(nanoseconds))
        message.points.append(point)
    return message


def diagnostics(name: str, hardware_id: str, values: Mapping[str, object], error: str, stamp: Time) -> DiagnosticArray:
    """One status: ERROR with ``error`` as its message when set, else OK with the node's state."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, message=error or str(values.get("state", "")))
    status.level = DiagnosticStatus.ERROR if error else DiagnosticStatus.OK
    status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
    message = DiagnosticArray(status=[status])
    message.header.stamp = stamp
    return message


def _number(breakdown: object, name: str) -> float:
    """A reward term as a float; NaN when there is no breakdown or the term was not computed."""
    return math.nan if breakdown is None else float(getattr(breakdown, name))
