"""``controller_bridge``: accepted plans in, arm controller commands out, behind a final safety check.

A lifecycle node in its own process (DESIGN.md §2: the GIL means callback groups alone cannot
protect an e-stop from inference in the same process). Configure reads the parameters into
:class:`~eva_idm.bridge_config.BridgeConfig`, the embodiment and the ros2_control controller YAML
(failing, with the reason logged, on a bad one, e.g. ``cmd_timeout <= goal_time``); activate
enables the controller and status publishers and opens the bridge to plans; deactivate, shutdown
and process exit close it, which stops an executing plan (a braking trajectory to every
controller, never an empty one: JTC rejects those). The decisions are
:class:`~eva_idm.bridge.ControllerBridge`'s; this node converts messages and wires the topics.

**The e-stop an operator's publisher reaches.** ``eva/estop`` (``std_msgs/Bool``, true = stop) is
subscribed twice, both RELIABLE with KEEP_ALL history so that no ``true`` is lost behind a
following ``false``: once VOLATILE, which matches every reliable publisher (the default QoS of
``ros2 topic pub``, rclpy and rclcpp, and transient-local ones), and once TRANSIENT_LOCAL, which
also delivers what a transient-local publisher latched before the bridge started. An operator's
e-stop should publish RELIABLE + TRANSIENT_LOCAL (depth 1 is enough): then a bridge that
(re)starts after the press still sees it. A BEST_EFFORT publisher reaches neither (DDS does not
match a best-effort writer to a reliable reader): an e-stop must not be best effort. With
``estop_heartbeat_timeout`` > 0, silence on ``eva/estop`` (no message of either value for that
long, timed on the steady clock) latches the e-stop: a dead e-stop source fails safe.

Threads: a ``PatientMultiThreadedExecutor``. The e-stop, its heartbeat check and ``eva/rearm``
have their own callback group, so no plan check or monitoring tick can delay them;
``joint_states`` has another; plans and the monitoring timer share a third. All stamps and ages
use the node clock (``/clock`` under ``use_sim_time``).
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Sequence

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from eva_idm.bridge import ControllerBridge, Status
from eva_idm.bridge_checks import Code, ControllerCommand, PlanChecker
from eva_idm.bridge_config import YAML_HINT, BridgeConfig, load_bridge_setup
from eva_idm.ros.bridge_messages import joint_state_input, plan_input
from eva_idm.ros.controller_actions import ControllerActions
from eva_idm.ros.controller_topics import ControllerTopics
from eva_idm.ros.executor import PatientMultiThreadedExecutor
from eva_idm.ros.parameters import declare_parameters, read_config
from eva_msgs.msg import ExecutionStatus, GatedPlan

PLANS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# The e-stop subscriptions (module docstring): every reliable publisher, and what one latched.
ESTOP_LIVE = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
ESTOP_LATCHED = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
HEARTBEAT_CHECKS = 10  # heartbeat checks per estop_heartbeat_timeout
FLUSH_S = 1.0  # how long a stop sent on the way out may take to be acknowledged [s]


class ControllerBridgeNode(LifecycleNode):
    """The lifecycle node around :class:`~eva_idm.bridge.ControllerBridge` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("controller_bridge")
        self._parameter_errors = declare_parameters(self, BridgeConfig)
        self._bridge: ControllerBridge | None = None
        self._latch_carried = False  # an e-stop latch outlives cleanup + configure: only eva/rearm clears it
        self._teardown: list[Callable[[], object]] = []

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, embodiment and controllers; FAILURE (with the reason logged) leaves it unconfigured."""
        try:  # rclpy would turn an exception into ERROR without a word; log the reason instead
            config = read_config(self, BridgeConfig, self._parameter_errors, YAML_HINT)
            embodiment, controllers = load_bridge_setup(config)
        except Exception as error:  # noqa: BLE001 (whatever is wrong with the configuration fails configure)
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        checker = PlanChecker(config, embodiment, controllers)
        if config.controller_interface == "action":
            self._controllers = ControllerActions(self, [controller.name for controller in controllers],
                                                  self._on_controller_failure, MutuallyExclusiveCallbackGroup())
        else:
            self._controllers = ControllerTopics(self, controllers)
        self._status = self.create_lifecycle_publisher(ExecutionStatus, "eva/execution_status", LATCHED)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._bridge = ControllerBridge(checker, self, self._now_ns)
        if self._latch_carried:
            self._bridge.estop(True)
        safety, joints, work = (MutuallyExclusiveCallbackGroup() for _ in range(3))
        subscriptions = [
            *(self.create_subscription(Bool, "eva/estop", self._on_estop, qos, callback_group=safety)
              for qos in (ESTOP_LIVE, ESTOP_LATCHED)),
            self.create_subscription(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data,
                                     callback_group=joints),
            self.create_subscription(GatedPlan, "eva/gated_plan", self._on_plan, PLANS, callback_group=work),
        ]
        service = self.create_service(Trigger, "eva/rearm", self._on_rearm, callback_group=safety)
        timers = [self.create_timer(1.0 / config.monitor_rate, self._on_tick, callback_group=work),
                  self.create_timer(config.diagnostics_period, self._publish_diagnostics)]
        if config.estop_heartbeat_timeout > 0.0:
            timers.append(self.create_timer(config.estop_heartbeat_timeout / HEARTBEAT_CHECKS,
                                            self._bridge.check_estop_heartbeat, callback_group=safety,
                                            clock=Clock(clock_type=ClockType.STEADY_TIME)))
        self._teardown = [
            self._controllers.destroy,
            functools.partial(self.destroy_lifecycle_publisher, self._status),
            functools.partial(self.destroy_publisher, self._diagnostics),
            *(functools.partial(self.destroy_subscription, subscription) for subscription in subscriptions),
            functools.partial(self.destroy_service, service),
            *(functools.partial(self.destroy_timer, timer) for timer in timers),
        ]
        self.get_logger().info(f"configured: {embodiment.name}, {config.controller_layout} layout "
                               f"({', '.join(controller.name for controller in controllers)}) over "
                               f"{config.controller_interface} at {checker.rate_hz:g} Hz, goal_time "
                               f"{checker.goal_time:g} s")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the controller and status publishers, and take plans."""
        result = super().on_activate(state)
        self._bridge.open()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking plans; an executing plan is aborted and every controller stops."""
        self.close("controller_bridge deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the interfaces and forget the configuration."""
        for destroy in reversed(self._teardown):
            destroy()
        self._teardown.clear()
        self._latch_carried = self._bridge is not None and self._bridge.latched
        self._bridge = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop every controller if a plan is executing, then clean up, from any state."""
        self.close("controller_bridge shutting down")
        return self.on_cleanup(state)

    def close(self, reason: str) -> None:
        """Refuse plans; end the plan (if any) with CANCELLED, every controller stopping; wait for delivery."""
        if self._bridge is not None and self._bridge.close(reason):
            self._controllers.flush(FLUSH_S)

    def prepare(self, commands: Sequence[ControllerCommand]) -> list:
        """Build one unstamped command per controller (the bridge's output, step one)."""
        return self._controllers.prepare(commands)

    def publish(self, prepared: list, stamp_ns: int) -> None:
        """Stamp the prepared commands alike and send them in order (the bridge's output, step two)."""
        self._controllers.send(prepared, stamp_ns)

    def report(self, status: Status) -> None:
        """Publish an execution status (the bridge's output); problems are logged too."""
        message = ExecutionStatus(plan_id=status.plan_id, state=int(status.state), code=int(status.code),
                                  reason=status.reason, progress=status.progress,
                                  max_tracking_error=status.max_tracking_error)
        message.header.stamp = self.get_clock().now().to_msg()
        self._status.publish(message)
        if status.code is not Code.NONE:
            self.get_logger().warning(f"plan {status.plan_id!r} {status.state.name} {status.code.name}: "
                                      f"{status.reason}")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_controller_failure(self, controller: str, code: Code, reason: str) -> None:
        if self._bridge is not None:
            self._bridge.controller_failed(controller, code, reason)

    def _on_estop(self, message: Bool) -> None:
        if self._bridge is not None:
            self._bridge.estop(bool(message.data))

    def _on_rearm(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = False, "controller_bridge is not configured"
        if self._bridge is not None:
            response.success, response.message = self._bridge.rearm()
        self.get_logger().info(f"eva/rearm: {'done' if response.success else 'refused'}: {response.message}")
        return response

    def _on_joint_state(self, message: JointState) -> None:
        if self._bridge is not None:
            self._bridge.joint_state(joint_state_input(message))

    def _on_plan(self, message: GatedPlan) -> None:
        if self._bridge is None:
            self.get_logger().warning(f"plan {message.plan_id!r} ignored: controller_bridge is not configured")
            return
        try:
            plan = plan_input(message)
        except Exception as error:  # noqa: BLE001 (a message we cannot read is refused, never a crash)
            self._bridge.refuse(message.plan_id, Code.INTERNAL_ERROR, f"reading the GatedPlan failed: {error!r}")
            return
        self._bridge.submit(plan)

    def _on_tick(self) -> None:
        if self._bridge is not None:
            self._bridge.tick()

    def _publish_diagnostics(self) -> None:
        if self._bridge is None:
            return
        health = self._bridge.diagnostics()
        status = DiagnosticStatus(level=bytes([int(health.level)]), name=f"{self.get_name()}: execution",
                                  message=health.message, hardware_id=self._bridge.checker.embodiment.name,
                                  values=[KeyValue(key=key, value=value) for key, value in health.values.items()])
        message = DiagnosticArray(status=[status])
        message.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(message)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``controller_bridge`` executable.

    rclpy's own signal handling would shut the context down before a stop could be published, so
    SIGINT and SIGTERM raise KeyboardInterrupt here instead (the spin loop wakes every 0.1 s to let
    them in), and an executing plan is stopped before the node goes.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    node = ControllerBridgeNode()
    executor = PatientMultiThreadedExecutor(4)  # e-stop, joint states, plans + ticks, the default group
    executor.add_node(node)
    try:
        while rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:
                break
            except Exception as error:  # noqa: BLE001 (a failed callback is logged; the bridge keeps running)
                node.get_logger().error(f"callback failed: {error!r}")
    except KeyboardInterrupt:
        pass
    finally:
        node.close("controller_bridge process exiting")
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
