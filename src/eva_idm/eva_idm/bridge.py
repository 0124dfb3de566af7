"""The controller bridge: the last safety check between accepted plans and the arm controllers, without ROS.

:class:`ControllerBridge` is the state machine behind the ``controller_bridge`` node. The node
converts messages to the plain inputs of :mod:`eva_idm.bridge_checks`, calls the methods below
from its callbacks, and publishes what the bridge hands its :class:`BridgeOutput` (commands and
statuses, in order). The bridge reads the node's clock itself, under its lock, at the moment it
takes the newest joint state: a time read before waiting for a thread could be older than that
joint state, which would then look stamped in the future. Everything the bridge decides is here,
so it is tested without ROS.

One plan at a time, stop-and-go (DESIGN.md §3)::

    submit --closed / e-stop latched / another plan running--> REJECTED CANCELLED / ESTOP_LATCHED / BUSY
       |     (decided before the plan is checked: a large plan cannot hold up a running one)
       |--checks fail--> REJECTED (code, reason); nothing is sent
       v
    ACCEPTED --robot not still for standstill_window within standstill_timeout--> REJECTED NOT_STANDSTILL
       |--checks fail again with the pose measured now--> REJECTED (code, reason)
       v  every controller gets its slice, point 0 = measured pose, one start stamp now + start_delay
    EXECUTING (progress at status_rate) --tracking error / stale or implausible joint_states /
       |                                  goal not measured within goal_time--> ABORTED; every controller stops
       v  measured (at a stamp >= end + settle_time) within the goal tolerances
    SUCCEEDED

**Stops.** Every stop (e-stop, abort, close) sends each controller a stop trajectory
(:mod:`eva_idm.stopping`): braking from the state the bridge commanded at the stop's start stamp
to rest within the acceleration and jerk limits, then holding. Never an empty trajectory, which a
real JointTrajectoryController rejects while it goes on with the previous one.

The e-stop (true = stop) latches: every controller gets a stop, a waiting or executing plan ends
with ESTOP_LATCHED, and nothing but stops is sent until :meth:`ControllerBridge.rearm`, which is
refused while the e-stop input is still true (or, with ``estop_heartbeat_timeout``, while the
e-stop source is silent; silence latches too). :meth:`ControllerBridge.close` (deactivate,
shutdown, exit) refuses plans until :meth:`ControllerBridge.open` and stops an executing one.

Threads: ``joint_state``, ``estop``, ``rearm``, ``open`` and ``close`` may be called from any
thread at any time; they take only a short lock, so a plan being checked cannot delay an e-stop.
``submit`` and ``tick`` serialise with each other, and check and build plans outside that lock;
before sending, they re-take it and find out whether an e-stop or a close came in meanwhile. The
executing state is set before a plan's commands go out, and a failure while sending them stops
every controller. Commands and statuses are handed to the output under the lock, so a stop can
never be overtaken by a command decided before it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

from eva_idm.bridge_checks import (
    NS_PER_S,
    Code,
    ControllerCommand,
    JointReading,
    JointStateInput,
    PlanChecker,
    PlanInput,
    State,
)
from eva_idm.stopping import CommandedState
from eva_idm.trajectory import Trajectory, sample


class Level(IntEnum):
    """``diagnostic_msgs/DiagnosticStatus`` levels."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class Status:
    """One ``eva_msgs/msg/ExecutionStatus`` (without its header): see the message for the fields."""

    plan_id: str
    state: State
    code: Code
    reason: str
    progress: float = 0.0
    max_tracking_error: float = 0.0


@dataclass(frozen=True)
class Diagnostics:
    """The bridge's ``/diagnostics`` status: level, a one-line message and key values."""

    level: Level
    message: str
    values: dict[str, str]


class BridgeOutput(Protocol):
    """Where the bridge's decisions go; the node publishes them, tests record them.

    Sending is two steps so that a plan's start stamp is set only after its messages exist:
    building a 10,000-point message takes longer than the start delay may allow.
    """

    def prepare(self, commands: Sequence[ControllerCommand]) -> object:
        """Build one message per command, without a stamp; called outside the bridge's lock."""

    def publish(self, prepared: object, stamp_ns: int) -> None:
        """Give every prepared message ``stamp_ns`` and publish them in order, now."""

    def report(self, status: Status) -> None:
        """Publish an execution status."""


@dataclass(eq=False)
class _Pending:
    plan: PlanInput
    accepted_ns: int


@dataclass(eq=False)
class _Execution:
    plan_id: str
    trajectory: Trajectory
    start_ns: int
    end_ns: int
    last_update_ns: int
    max_error: float = 0.0


@dataclass(frozen=True, eq=False)
class _Commanded:
    """The last trajectory sent (a plan or a stop) and its start stamp: what the controllers command."""

    trajectory: Trajectory
    start_ns: int

    def state(self, at_ns: int) -> CommandedState:
        elapsed = max(0.0, (at_ns - self.start_ns) / NS_PER_S)
        return CommandedState(*sample(self.trajectory, elapsed))


class ControllerBridge:
    """The bridge's state machine (see the module docstring); closed until :meth:`open`."""

    def __init__(self, checker: PlanChecker, output: BridgeOutput, clock: Callable[[], int],
                 steady_clock: Callable[[], float] = time.monotonic):
        """Decide with ``checker``, hand commands and statuses to ``output``; ``clock()`` is the time in ns.

        ``steady_clock()`` (seconds) times the e-stop heartbeat: a watchdog measures real silence,
        whatever the node clock (sim time may stall) does.
        """
        self.checker, self.config, self._output, self._clock = checker, checker.config, output, clock
        self._steady = steady_clock
        arm_tracking, arm_goal = self.config.tracking_tolerance, self.config.goal_tolerance
        grippers = checker.embodiment.gripper_mask()
        self._tracking_tolerance = np.where(grippers, self.config.gripper_tracking_tolerance, arm_tracking)
        self._goal_tolerance = np.where(grippers, self.config.gripper_goal_tolerance, arm_goal)
        self._lock = threading.Lock()  # state, and the order of everything handed to the output
        self._work = threading.Lock()  # serialises submit and tick
        self._reading: JointReading | None = None
        self._still_since_ns: int | None = None
        self._closed = True
        self._estop_input = False
        self._estop_heard_s = steady_clock()  # silence since construction counts against the heartbeat
        self._latched = False
        self._latch_reason = ""
        self._pending: _Pending | None = None
        self._executing: _Execution | None = None
        self._commanded: _Commanded | None = None
        self._counts: Counter[str] = Counter()
        self._last_problem = ""
        self._last_stop = ""

    @property
    def latched(self) -> bool:
        """True while the e-stop is latched."""
        return self._latched

    @property
    def busy(self) -> bool:
        """True while a plan waits for standstill or executes."""
        with self._lock:
            return self._busy_locked()

    def joint_state(self, sample_input: JointStateInput) -> None:
        """Take the newest ``joint_states``: judged once, and followed for standstill."""
        reading = self.checker.read_joint_state(sample_input)
        still = reading.velocities is not None and bool(
            (np.abs(reading.velocities) < self.config.standstill_velocity).all())
        with self._lock:
            self._reading = reading
            if not still:
                self._still_since_ns = None
            elif self._still_since_ns is None or reading.stamp_ns < self._still_since_ns:
                self._still_since_ns = reading.stamp_ns

    def submit(self, plan: PlanInput) -> Status:
        """Check a plan and accept it (starting it at once if the robot is still), or say why not."""
        with self._work:
            with self._lock:
                refusal = self._refusal_locked(plan.plan_id)
                if refusal:
                    return self._report_locked(refusal)
                reading, now_ns = self._reading, self._clock()
            try:
                verdict = self.checker.check(plan, reading, now_ns)
            except Exception as error:  # noqa: BLE001 (a bug here must cost one plan, never the node)
                return self.refuse(plan.plan_id, Code.INTERNAL_ERROR, f"checking the plan failed: {error!r}")
            with self._lock:
                if not verdict.accepted:
                    return self._report_locked(Status(plan.plan_id, State.REJECTED, verdict.code, verdict.reason))
                refusal = self._refusal_locked(plan.plan_id)  # an e-stop or a close during the check
                if refusal:
                    return self._report_locked(refusal)
                self._pending = _Pending(plan, now_ns)
                accepted = self._report_locked(Status(plan.plan_id, State.ACCEPTED, Code.NONE,
                                                      f"{verdict.reason}; waiting for standstill"))
            self._tick()
            return accepted

    def refuse(self, plan_id: str, code: Code, reason: str) -> Status:
        """Report a plan as REJECTED without checking it (e.g. a message that could not be read)."""
        with self._lock:
            return self._report_locked(Status(plan_id, State.REJECTED, code, reason))

    def tick(self) -> None:
        """Start a waiting plan once the robot is still; follow an executing one. Call at ``monitor_rate``."""
        with self._work:
            self._tick()

    def estop(self, engaged: bool) -> None:
        """Take an e-stop message; true latches: every controller stops, the plan ends, only stops follow."""
        with self._lock:
            self._estop_input = engaged
            self._estop_heard_s = self._steady()
            if engaged:
                self._latch_locked("e-stop engaged")

    def check_estop_heartbeat(self) -> None:
        """Latch the e-stop when ``estop_heartbeat_timeout`` is set and no e-stop message came that long."""
        with self._lock:
            silence = self._heartbeat_silence_locked()
            if silence:
                self._latch_locked(silence)

    def rearm(self) -> tuple[bool, str]:
        """Unlatch the e-stop, unless its input is still true or its source is silent; ``(success, message)``."""
        with self._lock:
            if self._estop_input:
                return False, "eva/estop is still true: release the e-stop before re-arming"
            silence = self._heartbeat_silence_locked()
            if silence:
                return False, f"{silence}: the e-stop source must be alive before re-arming"
            if not self._latched:
                return True, "the e-stop is not latched; nothing to re-arm"
            self._latched, self._latch_reason = False, ""
            return True, "re-armed: plans are accepted again"

    def controller_failed(self, controller: str, code: Code, reason: str) -> None:
        """A controller refused or gave up the executing plan (a rejected or aborted action goal): stop them all."""
        with self._lock:
            if self._executing is not None:
                self._end_locked(code, f"{controller}: {reason}", self._clock())

    def open(self) -> None:
        """Accept plans (the node's activate)."""
        with self._lock:
            self._closed = False

    def close(self, reason: str) -> bool:
        """Refuse plans from now on; end a waiting plan, stop an executing one. True when a stop was sent."""
        with self._lock:
            self._closed = True
            executing = self._executing is not None
            self._end_locked(Code.CANCELLED, reason, self._clock())
            return executing

    def diagnostics(self) -> Diagnostics:
        """The bridge's health for ``/diagnostics``."""
        with self._lock:
            reading, pending, executing, now_ns = self._reading, self._pending, self._executing, self._clock()
            latched, counts, last_problem = self._latched, dict(self._counts), self._last_problem
            latch_reason, closed, last_stop = self._latch_reason, self._closed, self._last_stop
        joint_problem = self.checker.joint_state_problem(reading, now_ns)
        if executing:
            progress = self._progress(executing, now_ns)
            state = f"executing plan {executing.plan_id!r} ({progress:.0%})"
        elif pending:
            state = f"waiting for standstill: plan {pending.plan.plan_id!r}"
        else:
            state = "closed" if closed else "idle"
        if latched:
            level, message = Level.ERROR, f"e-stop latched ({latch_reason}): release eva/estop, then call eva/rearm"
        elif joint_problem:
            level, message = Level.WARN, joint_problem[1]
        else:
            level, message = Level.OK, state
        values = {"state": state, "estop_latched": str(latched), "estop_input": str(self._estop_input),
                  "controllers": ", ".join(controller.name for controller in self.checker.controllers),
                  "update_rate_hz": f"{self.checker.rate_hz:g}", "last_problem": last_problem,
                  "last_stop": last_stop,
                  "joint_states_age_s": f"{(now_ns - reading.stamp_ns) / NS_PER_S:.3f}" if reading else "none",
                  **{f"count.{name.lower()}": str(counts.get(name, 0)) for name in State.__members__}}
        return Diagnostics(level, message, values)

    def _heartbeat_silence_locked(self) -> str:
        """How long the e-stop source has been silent, when a heartbeat is required and overdue; '' otherwise."""
        timeout = self.config.estop_heartbeat_timeout
        silence = self._steady() - self._estop_heard_s
        if timeout > 0.0 and silence > timeout:
            return f"no eva/estop message for {silence:.3g} s (estop_heartbeat_timeout {timeout:g} s)"
        return ""

    def _busy_locked(self) -> bool:
        return self._pending is not None or self._executing is not None

    def _refusal_locked(self, plan_id: str) -> Status | None:
        """Why a plan cannot be taken now, whatever it holds (closed, latched, busy); None if it can."""
        if self._closed:
            return Status(plan_id, State.REJECTED, Code.CANCELLED, "controller_bridge is not active")
        if self._latched:
            return Status(plan_id, State.REJECTED, Code.ESTOP_LATCHED,
                          f"e-stop latched ({self._latch_reason}): release eva/estop, then call eva/rearm")
        if self._busy_locked():
            running = self._pending.plan.plan_id if self._pending else self._executing.plan_id
            return Status(plan_id, State.REJECTED, Code.BUSY, f"plan {running!r} is running; one plan at a time")
        return None

    def _tick(self) -> None:
        try:
            with self._lock:
                now_ns = self._clock()
                if self._executing is not None:
                    self._follow_locked(self._executing, now_ns)
                    return
                pending, reading, still_since = self._pending, self._reading, self._still_since_ns
            if pending is not None:
                self._try_start(pending, reading, still_since, now_ns)
        except Exception as error:  # noqa: BLE001 (never move the robot on doubt: stop, report, keep running)
            with self._lock:
                self._end_locked(Code.INTERNAL_ERROR, f"monitoring failed: {error!r}", self._clock())

    def _try_start(self, pending: _Pending, reading: JointReading | None, still_since: int | None,
                   now_ns: int) -> None:
        window_ns = round(self.config.standstill_window * NS_PER_S)
        fresh = self.checker.joint_state_problem(reading, now_ns) is None
        if not (fresh and still_since is not None and reading.stamp_ns - still_since >= window_ns):
            if now_ns - pending.accepted_ns > self.config.standstill_timeout * NS_PER_S:
                with self._lock:
                    if self._pending is pending:
                        self._pending = None
                        self._report_locked(Status(pending.plan.plan_id, State.REJECTED, Code.NOT_STANDSTILL,
                                                   self._not_still_reason(reading, now_ns)))
            return
        verdict = self.checker.check(pending.plan, reading, now_ns)  # again, with the pose measured now
        plan_id = pending.plan.plan_id
        if not verdict.accepted:
            with self._lock:
                if self._pending is pending:
                    self._pending = None
                    self._report_locked(Status(plan_id, State.REJECTED, verdict.code, f"at start: {verdict.reason}"))
            return
        trajectory = verdict.trajectory
        prepared = self._output.prepare(self.checker.commands(trajectory))  # the slow part, outside the lock
        with self._lock:
            if self._pending is not pending:  # an e-stop or a close ended it meanwhile
                return
            self._pending = None
            sent_ns = self._clock()  # the check took time: start_delay counts from now, not from the reading
            start_ns = sent_ns + round(self.config.start_delay * NS_PER_S)
            self._executing = _Execution(plan_id, trajectory, start_ns,
                                         start_ns + round(trajectory.duration * NS_PER_S), sent_ns)
            self._commanded = _Commanded(trajectory, start_ns)
            try:
                self._output.publish(prepared, start_ns)
            except Exception as error:  # noqa: BLE001 (one arm may have its command: stop them all)
                self._end_locked(Code.INTERNAL_ERROR, f"sending the plan failed: {error!r}", self._clock())
                return
            names = ", ".join(controller.name for controller in self.checker.controllers)
            self._report_locked(Status(plan_id, State.EXECUTING, Code.NONE,
                                       f"sent to {names}; starts in {self.config.start_delay:g} s"))

    def _not_still_reason(self, reading: JointReading | None, now_ns: int) -> str:
        config = self.config
        prefix = (f"the robot was not still (|velocity| < standstill_velocity {config.standstill_velocity:g}) for "
                  f"standstill_window {config.standstill_window:g} s within standstill_timeout "
                  f"{config.standstill_timeout:g} s")
        problem = self.checker.joint_state_problem(reading, now_ns)
        if problem:
            return f"{prefix}: {problem[1]}"
        worst = int(np.argmax(np.abs(reading.velocities)))
        return (f"{prefix}: newest joint_states has {self.checker.embodiment.joint_names[worst]} moving at "
                f"{reading.velocities[worst]:.4g}")

    def _follow_locked(self, execution: _Execution, now_ns: int) -> None:
        """Abort on stale or implausible joint states or a tracking error; succeed at the settled goal."""
        problem = self.checker.joint_state_problem(self._reading, now_ns)
        if problem:
            self._end_locked(problem[0], f"while executing: {problem[1]}", now_ns)
            return
        reading, names = self._reading, self.checker.embodiment.joint_names
        elapsed = max(0.0, (reading.stamp_ns - execution.start_ns) / NS_PER_S)
        commanded = sample(execution.trajectory, elapsed)[0]
        error = np.abs(reading.positions - commanded)
        execution.max_error = max(execution.max_error, float(error.max()))
        over = np.flatnonzero(error > self._tracking_tolerance)
        if len(over):
            joint = over[np.argmax(error[over] / self._tracking_tolerance[over])]
            self._end_locked(Code.TRACKING_ERROR, (
                f"{names[joint]} measured {reading.positions[joint]:.4g}, commanded {commanded[joint]:.4g} at "
                f"t={elapsed:.3f} s: |error| {error[joint]:.4g} > tolerance {self._tracking_tolerance[joint]:g}"),
                now_ns)
            return
        settle_ns = round(self.config.settle_time * NS_PER_S)
        final = execution.trajectory.positions[-1]
        goal_error = np.abs(reading.positions - final)
        if reading.stamp_ns >= execution.end_ns + settle_ns and (goal_error <= self._goal_tolerance).all():
            self._executing = None
            self._report_locked(Status(execution.plan_id, State.SUCCEEDED, Code.NONE,
                                       f"reached the goal: largest |error| {goal_error.max():.4g} within the goal "
                                       "tolerances", 1.0, execution.max_error))
            return
        deadline_ns = execution.end_ns + round(max(self.config.settle_time, self.checker.goal_time) * NS_PER_S)
        if reading.stamp_ns > deadline_ns:  # judged on measurements; their absence is the staleness check's
            joint = int(np.argmax(goal_error / self._goal_tolerance))
            self._end_locked(Code.TRACKING_ERROR, (
                f"goal not reached within goal_time {self.checker.goal_time:g} s after the end: {names[joint]} "
                f"at {reading.positions[joint]:.4g}, goal {final[joint]:.4g} (tolerance "
                f"{self._goal_tolerance[joint]:g})"), now_ns)
            return
        if now_ns - execution.last_update_ns >= NS_PER_S / self.config.status_rate:
            execution.last_update_ns = now_ns
            self._report_locked(Status(execution.plan_id, State.EXECUTING, Code.NONE, "executing",
                                       self._progress(execution, now_ns), execution.max_error))

    def _progress(self, execution: _Execution, now_ns: int) -> float:
        duration = execution.end_ns - execution.start_ns
        return float(np.clip((now_ns - execution.start_ns) / duration, 0.0, 1.0))

    def _latch_locked(self, reason: str) -> None:
        """Latch the e-stop (once): every controller stops, the plan ends with ESTOP_LATCHED."""
        if self._latched:
            return
        self._latched, self._latch_reason = True, reason
        stopped = self._send_stop_locked(reason)
        self._end_locked(Code.ESTOP_LATCHED, f"{reason}: {stopped}; release eva/estop, then call eva/rearm",
                         self._clock(), stop_sent=True)

    def _end_locked(self, code: Code, reason: str, now_ns: int, stop_sent: bool = False) -> None:
        """End the waiting plan (REJECTED) or the executing one (ABORTED, every controller stopped)."""
        if self._pending is not None:
            self._report_locked(Status(self._pending.plan.plan_id, State.REJECTED, code, reason))
            self._pending = None
        if self._executing is not None:
            execution, self._executing = self._executing, None
            if not stop_sent:
                reason = f"{reason}; {self._send_stop_locked(reason)}"
            self._report_locked(Status(execution.plan_id, State.ABORTED, code, reason,
                                       self._progress(execution, now_ns), execution.max_error))

    def _send_stop_locked(self, why: str) -> str:
        """Send every controller a stop from the state commanded ``stop_lead`` from now; says what was done."""
        outcome = self._stop_locked()
        self._last_stop = f"{why}: {outcome}"
        return outcome

    def _stop_locked(self) -> str:
        """Build and send the stop (or say why none can be sent); what was done, in words."""
        stamp_ns = self._clock() + round(self.config.stop_lead * NS_PER_S)
        if self._commanded is not None:
            state = self._commanded.state(stamp_ns)
        elif self._reading is not None and self._reading.positions is not None:
            state = CommandedState.at_rest(np.clip(self._reading.positions, *self.checker.stops))
        else:
            return "no stop sent (nothing was commanded and no joint_states were read)"
        try:
            stop = self.checker.stop_plan(state)
            prepared = self._output.prepare(self.checker.commands(stop.trajectory, is_stop=True))
            self._commanded = _Commanded(stop.trajectory, stamp_ns)
            self._output.publish(prepared, stamp_ns)
        except Exception as error:  # noqa: BLE001 (reported; the caller's report says the stop failed)
            return f"sending the stop failed: {error!r}"
        return f"every controller stops (braking {stop.braking_time:.3g} s{'; ' + stop.note if stop.note else ''})"

    def _report_locked(self, status: Status) -> Status:
        self._counts[status.state.name] += 1
        if status.state in (State.REJECTED, State.ABORTED):
            self._last_problem = f"{status.plan_id}: {status.code.name}: {status.reason}"
        self._output.report(status)
        return status
