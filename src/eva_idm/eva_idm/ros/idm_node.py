"""``idm_node``: a verdict on every ``VisualPlan``, and a ``GatedPlan`` for each plan the gate accepts.

A lifecycle node (DESIGN.md §3): configure reads the parameters into
:class:`~eva_idm.plan_gate.IDMNodeConfig` (``config/idm_node.yaml``), bounds torch's CPU threads,
loads the IDM and the gate (:meth:`~eva_idm.plan_gate.PlanGate.load`) and creates the interfaces;
activate enables the publishers and the judging of plans; deactivate stops taking plans; cleanup
frees the model once no plan is being judged.

Every plan on ``eva/plan`` gets an ``ExecutabilityReport`` on ``eva/executability`` (accepted or
not, with the reason); an accepted one also goes out as a ``GatedPlan`` on ``eva/gated_plan`` for the
controller bridge. Plans on ``eva/plan/preview`` (the planner's ``plan_only`` goals) get the report
only: they are never forwarded. What to do with one plan is :func:`eva_idm.ros.report.verdict_messages`;
this module only wires it up.

Threads: a ``PatientMultiThreadedExecutor``. Plans are judged one at a time in their own callback group;
the lifecycle services and the ``/diagnostics`` timer stay in the default group and answer while
the IDM runs.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable

import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from eva_idm.motion import Verdict
from eva_idm.plan_gate import YAML_HINT, IDMNodeConfig, PlanGate
from eva_idm.ros import report
from eva_idm.ros.executable import run_node
from eva_idm.ros.parameters import declare_parameters, read_config
from eva_msgs.msg import ExecutabilityReport, GatedPlan, VisualPlan

# Plans waiting while one is judged. Each deserves a verdict (a planner goal waits for it), so a
# plan arriving during a decode must not replace the one before it, as a depth of 1 would do;
# stop-and-go planners publish a plan or two at a time, so more would only hold stale plans.
PLAN_QUEUE = QoSProfile(depth=4, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# Volatile: a restarted node never replays an old plan to the bridge.
GATED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class IDMNode(LifecycleNode):
    """The lifecycle node around :class:`~eva_idm.plan_gate.PlanGate` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("idm_node")
        self._parameter_errors = declare_parameters(self, IDMNodeConfig)
        self._busy = threading.Lock()
        self._gate: PlanGate | None = None
        self._active = False
        self._teardown: list[Callable[[], object]] = []
        self._verdicts: collections.Counter[str] = collections.Counter()
        self._stats = {"state": "unconfigured", "last_plan_id": "", "last_verdict": ""}
        self._timings: dict[str, float] = {}
        self._error = ""

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the parameters, load the IDM and the gate, create the interfaces; FAILURE (logged) otherwise."""
        try:  # rclpy would turn an exception into ERROR without a word; log the reason instead
            config = read_config(self, IDMNodeConfig, self._parameter_errors, YAML_HINT)
            if config.num_threads:
                torch.set_num_threads(config.num_threads)
            gate = PlanGate.load(config)
        except Exception as error:  # noqa: BLE001 (whatever fails to load fails configure)
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self._gate = gate
        self._create_interfaces(config)
        self._stats["state"] = "inactive"
        thresholds = gate.gate_config
        self.get_logger().info(
            f"configured: IDM {gate.model_id} on {config.device} for embodiment {gate.embodiment.name}; "
            f"min_reward {thresholds.min_reward:g}, time_scale {thresholds.time_scale:g}, max_start_offset "
            f"{list(thresholds.max_start_offset)} ({gate.max_start_offset_origin()})")
        if gate.capped_start_offsets:
            self.get_logger().warning(
                f"the IDM's calibration.json allows more start offset than embodiment {gate.embodiment.name} at "
                f"{[cap.joint for cap in gate.capped_start_offsets]}, capped there: the IDM errs more than the gate "
                "tolerates, expect START_OFFSET rejections")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers and the judging of plans."""
        self._active, self._stats["state"] = True, "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking plans; the verdict on a plan being judged is dropped with the publishers."""
        self._active, self._stats["state"] = False, "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the interfaces and free the IDM once no plan is being judged."""
        with self._busy:
            for destroy in reversed(self._teardown):
                destroy()
            self._teardown.clear()
            self._gate = None
            self._stats["state"] = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking plans and clean up, from any state."""
        self._active = False
        return self.on_cleanup(state)

    def _create_interfaces(self, config: IDMNodeConfig) -> None:
        self._reports = self.create_lifecycle_publisher(ExecutabilityReport, "eva/executability", LATCHED)
        self._gated = self.create_lifecycle_publisher(GatedPlan, "eva/gated_plan", GATED)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        inference = MutuallyExclusiveCallbackGroup()
        subscriptions = [
            self.create_subscription(VisualPlan, topic, functools.partial(self._on_plan, preview=preview), PLAN_QUEUE,
                                     callback_group=inference)
            for topic, preview in (("eva/plan", False), ("eva/plan/preview", True))
        ]
        timer = self.create_timer(config.diagnostics_period, self._publish_diagnostics)
        self._teardown = [
            functools.partial(self.destroy_lifecycle_publisher, self._reports),
            functools.partial(self.destroy_lifecycle_publisher, self._gated),
            functools.partial(self.destroy_publisher, self._diagnostics),
            *(functools.partial(self.destroy_subscription, subscription) for subscription in subscriptions),
            functools.partial(self.destroy_timer, timer),
        ]

    def _on_plan(self, plan: VisualPlan, preview: bool) -> None:
        if not self._active:
            self.get_logger().warning(f"plan {plan.plan_id!r} ignored: idm_node is not active")
            return
        with self._busy:
            if self._gate is None:  # cleaned up while this plan waited for the lock
                return
            try:  # verdict_messages reports a failure as INTERNAL_ERROR; this guards the publishing too
                judgement, verdict, gated = report.verdict_messages(self._gate, plan, preview)
                self._reports.publish(verdict)
                if gated is not None:
                    self._gated.publish(gated)
            except Exception as error:  # noqa: BLE001 (logged and shown in /diagnostics; the node keeps serving)
                self._error = f"plan {plan.plan_id!r}: no verdict could be published: {error}"
                self.get_logger().error(self._error)
                return
        name = judgement.verdict.name
        self._verdicts[name] += 1
        self._stats.update(last_plan_id=plan.plan_id, last_verdict=name)
        self._timings = dict(judgement.timings)
        self._error = judgement.reason if judgement.verdict is Verdict.INTERNAL_ERROR else ""
        log = self.get_logger().info if judgement.executable else self.get_logger().warning
        log(f"plan {plan.plan_id!r}{' (preview)' if preview else ''}: {name}: {judgement.reason}")

    def _publish_diagnostics(self) -> None:
        values = {**self._stats, **{f"verdicts.{name}": count for name, count in sorted(self._verdicts.items())},
                  "plans": sum(self._verdicts.values()),
                  **{f"seconds.{stage}": f"{seconds:.4f}" for stage, seconds in self._timings.items()}}
        model_id = self._gate.model_id if self._gate else ""
        self._diagnostics.publish(report.diagnostics(f"{self.get_name()}: gating", model_id, values, self._error,
                                                     self.get_clock().now().to_msg()))


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``idm_node`` executable."""
    return run_node("idm_node", IDMNode, num_threads=3, args=args)  # the plan group, the default group, a spare

if __name__ == "__main__":
    raise SystemExit(main())
