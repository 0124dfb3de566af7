"""Drive a running EVA stack from outside, as an operator would: for the demo, benchmarks and tests.

:func:`launched_stack` starts the nodes of a launch file (read strictly by
:mod:`eva_sim.launch_xml`) and stops them afterwards; :class:`StackClient` is an rclpy node in its
own context that waits for the lifecycle nodes to become active, sends ``eva/execute`` goals,
engages and re-arms the e-stop, and records what the stack publishes with steady-clock arrival
times, so that latencies between stages can be measured outside the nodes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from action_msgs.msg import GoalStatus
from lifecycle_msgs.srv import GetState
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from eva_msgs.action import ExecuteInstruction
from eva_msgs.msg import ExecutabilityReport, ExecutionStatus, GatedPlan, VisualPlan
from eva_sim.launch_xml import read_launch_file, start_nodes
from eva_sim.processes import NodeProcess

CONTROLLER_TOPICS = ("left_arm_controller/joint_trajectory", "right_arm_controller/joint_trajectory",
                     "bimanual_controller/joint_trajectory")
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LATCHED_ONE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class StackError(RuntimeError):
    """The stack did not do what was waited for; the message says what and for how long."""


@contextlib.contextmanager
def launched_stack(launch_file: str | Path, arguments: Mapping[str, str], log_dir: Path,
                   domain_id: int) -> Iterator[list[NodeProcess]]:
    """Start every node of ``launch_file`` with ``arguments`` on ``domain_id``; stop them all on exit."""
    description = read_launch_file(launch_file, arguments)
    processes = start_nodes(description, log_dir, domain_id)
    try:
        yield processes
    finally:
        for process in reversed(processes):
            process.stop()


@dataclass
class Recorded:
    """Messages the client received, each with its steady-clock arrival time [s]."""

    joint_states: list[tuple[float, JointState]] = field(default_factory=list)
    plans: list[tuple[float, VisualPlan]] = field(default_factory=list)
    reports: list[tuple[float, ExecutabilityReport]] = field(default_factory=list)
    gated_plans: list[tuple[float, GatedPlan]] = field(default_factory=list)
    statuses: list[tuple[float, ExecutionStatus]] = field(default_factory=list)
    commands: list[tuple[float, str, JointTrajectory]] = field(default_factory=list)

    def report_for(self, plan_id: str) -> ExecutabilityReport | None:
        """The executability report of ``plan_id``, if it arrived."""
        return next((report for _, report in self.reports if report.plan_id == plan_id), None)

    def statuses_for(self, plan_id: str) -> list[ExecutionStatus]:
        """The bridge's statuses of ``plan_id``, in arrival order."""
        return [status for _, status in self.statuses if status.plan_id == plan_id]


@dataclass(frozen=True)
class GoalOutcome:
    """How an ``eva/execute`` goal ended, with the feedback it sent and steady-clock times [s]."""

    status: int
    result: ExecuteInstruction.Result
    feedback: tuple[ExecuteInstruction.Feedback, ...]
    sent_at: float
    ended_at: float

    @property
    def succeeded(self) -> bool:
        """Whether the goal ended in STATUS_SUCCEEDED."""
        return self.status == GoalStatus.STATUS_SUCCEEDED


@dataclass
class PendingGoal:
    """A sent goal: its fields, when it was sent, its handle and the feedback received so far."""

    goal: Mapping[str, object]
    sent_at: float
    handle: object = None
    feedback: list[ExecuteInstruction.Feedback] = field(default_factory=list)


class StackClient:
    """An operator's rclpy node on the stack's domain; spins only inside its own calls."""

    def __init__(self, domain_id: int, name: str = "eva_operator"):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.recorded = Recorded()
        self._subscribe()
        self._estop = self.node.create_publisher(Bool, "eva/estop", LATCHED_ONE)
        self._execute = ActionClient(self.node, ExecuteInstruction, "eva/execute")

    def _subscribe(self) -> None:
        record = self.recorded

        def keep(items: list) -> Callable[[object], None]:
            return lambda message: items.append((time.monotonic(), message))

        self.node.create_subscription(JointState, "joint_states", keep(record.joint_states), qos_profile_sensor_data)
        self.node.create_subscription(VisualPlan, "eva/plan", keep(record.plans), RELIABLE)
        self.node.create_subscription(ExecutabilityReport, "eva/executability", keep(record.reports), LATCHED)
        self.node.create_subscription(GatedPlan, "eva/gated_plan", keep(record.gated_plans), RELIABLE)
        self.node.create_subscription(ExecutionStatus, "eva/execution_status", keep(record.statuses), LATCHED)
        for topic in CONTROLLER_TOPICS:
            self.node.create_subscription(
                JointTrajectory, topic,
                lambda message, topic=topic: record.commands.append((time.monotonic(), topic, message)), RELIABLE)

    def spin_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until ``predicate()`` holds; StackError naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.02)

    def spin_for(self, seconds: float) -> None:
        """Spin for ``seconds``, processing whatever arrives."""
        end = time.monotonic() + seconds
        self.spin_until(lambda: time.monotonic() >= end, seconds + 1.0, "time to pass")

    def lifecycle_state(self, node_name: str, timeout: float = 10.0) -> str:
        """The label of ``node_name``'s lifecycle state, e.g. ``active``."""
        client = self.node.create_client(GetState, f"{node_name}/get_state")
        try:
            self.spin_until(client.service_is_ready, timeout, f"{node_name}/get_state")
            self.spin_for(0.5)  # a response sent right after discovery can be lost
            future = client.call_async(GetState.Request())
            self.spin_until(future.done, timeout, f"{node_name}'s lifecycle state")
            return future.result().current_state.label
        finally:
            self.node.destroy_client(client)

    def wait_active(self, node_names: tuple[str, ...], timeout: float) -> None:
        """Wait until every lifecycle node in ``node_names`` is active (the lifecycle manager's job)."""
        deadline = time.monotonic() + timeout
        for name in node_names:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StackError(f"timed out after {timeout:.0f} s waiting for {name} to become active")
                with contextlib.suppress(StackError):
                    if self.lifecycle_state(name, min(remaining, 10.0)) == "active":
                        break
                self.spin_for(0.5)

    def wait_for_joint_states(self, timeout: float = 30.0) -> JointState:
        """The newest joint state, after waiting for one."""
        self.spin_until(lambda: self.recorded.joint_states, timeout, "joint_states")
        return self.recorded.joint_states[-1][1]

    def send_goal(self, on_feedback: Callable[[ExecuteInstruction.Feedback], None] | None = None,
                  **goal: object) -> PendingGoal:
        """Send an ``eva/execute`` goal; its feedback is collected while the client spins."""
        self.spin_until(lambda: self._execute.server_is_ready(), 60, "the eva/execute action server")
        pending = PendingGoal(goal, time.monotonic())

        def received(message) -> None:
            pending.feedback.append(message.feedback)
            if on_feedback is not None:
                on_feedback(message.feedback)

        request = self._execute.send_goal_async(ExecuteInstruction.Goal(**goal), feedback_callback=received)
        self.spin_until(request.done, 30, "the goal to be accepted")
        pending.handle = request.result()
        if not pending.handle.accepted:
            raise StackError(f"eva/execute refused the goal {goal}")
        return pending

    def wait_result(self, pending: PendingGoal, timeout: float) -> GoalOutcome:
        """Wait for a sent goal's result."""
        result = pending.handle.get_result_async()
        self.spin_until(result.done, timeout, f"the result of goal {pending.goal}")
        response = result.result()
        return GoalOutcome(response.status, response.result, tuple(pending.feedback), pending.sent_at,
                           time.monotonic())

    def execute(self, timeout: float, on_feedback: Callable[[ExecuteInstruction.Feedback], None] | None = None,
                **goal: object) -> GoalOutcome:
        """Send an ``eva/execute`` goal and wait for its result (``timeout`` covers everything after sending)."""
        return self.wait_result(self.send_goal(on_feedback, **goal), timeout)

    def estop(self, engaged: bool) -> float:
        """Publish the e-stop state; returns the steady-clock time it was published."""
        self.spin_until(lambda: self._estop.get_subscription_count() > 0, 30, "a subscriber of eva/estop")
        published_at = time.monotonic()
        self._estop.publish(Bool(data=engaged))
        return published_at

    def rearm(self, timeout: float = 30.0) -> Trigger.Response:
        """Call ``eva/rearm`` and return the bridge's answer."""
        client = self.node.create_client(Trigger, "eva/rearm")
        try:
            self.spin_until(client.service_is_ready, timeout, "the eva/rearm service")
            self.spin_for(0.5)
            future = client.call_async(Trigger.Request())
            self.spin_until(future.done, timeout, "the eva/rearm response")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Destroy the node and its context."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> StackClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

