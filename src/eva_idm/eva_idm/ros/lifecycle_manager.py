"""``lifecycle_manager``: brings the lifecycle nodes up in order, watches them, brings them down on a failure.

A plain node (DESIGN.md §3; nav2's manager is not available here). The sequencing lives in
:mod:`eva_idm.lifecycle`; this node reaches the managed nodes through their ``<node>/change_state``
and ``<node>/get_state`` services, offers ``~/startup`` and ``~/shutdown`` (std_srvs/Trigger) and
reports on ``/diagnostics``.

Threads: a ``PatientMultiThreadedExecutor``. Startup, shutdown and the watch run one at a time in one
callback group and block while they wait for the managed nodes; the service clients live in a
second (reentrant) group, so other executor threads take their responses meanwhile. Timers and
timeouts run on the steady clock: with ``use_sim_time`` the manager works before ``/clock`` runs,
and ``/diagnostics`` carry the node's (sim) time.
"""

from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.client import Client
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_srvs.srv import Trigger

from eva_idm import lifecycle
from eva_idm.lifecycle import LifecycleManagerConfig, TransitionError
from eva_idm.ros.executable import run_node
from eva_idm.ros.parameters import declare_parameters, read_config

STATE_NAMES = {State.PRIMARY_STATE_UNCONFIGURED: lifecycle.UNCONFIGURED,
               State.PRIMARY_STATE_INACTIVE: lifecycle.INACTIVE,
               State.PRIMARY_STATE_ACTIVE: lifecycle.ACTIVE,
               State.PRIMARY_STATE_FINALIZED: lifecycle.FINALIZED}
TRANSITION_IDS = {lifecycle.CONFIGURE: Transition.TRANSITION_CONFIGURE,
                  lifecycle.ACTIVATE: Transition.TRANSITION_ACTIVATE,
                  lifecycle.DEACTIVATE: Transition.TRANSITION_DEACTIVATE,
                  lifecycle.CLEANUP: Transition.TRANSITION_CLEANUP}
LEVELS = {"active": DiagnosticStatus.OK, "failed": DiagnosticStatus.ERROR}  # idle, starting, down: WARN


class ServiceLifecycleClient:
    """:class:`eva_idm.lifecycle.LifecycleClient` over the managed nodes' lifecycle services."""

    def __init__(self, node: Node, config: LifecycleManagerConfig):
        group = ReentrantCallbackGroup()
        self._config, self._settled = config, set()
        self._change = {name: node.create_client(ChangeState, f"{name}/change_state", callback_group=group)
                        for name in config.node_names}
        self._get = {name: node.create_client(GetState, f"{name}/get_state", callback_group=group)
                     for name in config.node_names}

    def state(self, node: str) -> str:
        """The node's primary state; TransitionError when it is not there or does not answer in time."""
        response = self._call(node, "get_state", self._get[node], GetState.Request(), self._config.state_timeout)
        return STATE_NAMES.get(response.current_state.id, lifecycle.UNKNOWN)

    def change_state(self, node: str, transition: str) -> None:
        """Request ``transition``; TransitionError unless the node reports success in time."""
        request = ChangeState.Request(transition=Transition(id=TRANSITION_IDS[transition]))
        response = self._call(node, transition, self._change[node], request, self._config.transition_timeout)
        if not response.success:
            raise TransitionError(node, transition, "the node reported failure (its log says why)")

    def _call(self, node: str, what: str, client: Client, request: object, timeout: float):
        """Call ``client`` and wait for the answer here; another executor thread delivers it."""
        self._wait_for_services(node, what)
        answered = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: answered.set())
        if not answered.wait(timeout):
            client.remove_pending_request(future)
            raise TransitionError(node, what, f"no answer within {timeout:g} s")
        if future.exception() is not None:
            raise TransitionError(node, what, f"the call raised {future.exception()!r}")
        return future.result()

    def _wait_for_services(self, node: str, what: str) -> None:
        """Wait for both services (then let discovery settle); a node seen before and gone now is lost at once."""
        def ready() -> bool:
            return self._change[node].service_is_ready() and self._get[node].service_is_ready()

        if node in self._settled:
            if ready():
                return
            self._settled.discard(node)
            raise TransitionError(node, what, "its lifecycle services are gone")
        deadline = time.monotonic() + self._config.service_timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TransitionError(node, what, f"{node}/change_state and {node}/get_state did not appear "
                                                  f"within {self._config.service_timeout:g} s")
            time.sleep(0.05)
        time.sleep(self._config.discovery_settle)
        self._settled.add(node)


class LifecycleManager(Node):
    """The manager node (see the module docstring); ``config`` is None when its parameters are invalid."""

    def __init__(self) -> None:
        super().__init__("lifecycle_manager")
        errors = declare_parameters(self, LifecycleManagerConfig)
        self.config: LifecycleManagerConfig | None = None
        try:
            self.config = read_config(self, LifecycleManagerConfig, errors, "config/lifecycle_manager.yaml")
        except ValueError as error:
            self.get_logger().fatal(f"invalid parameters, nothing is managed: {error}")
            return
        self._lifecycle = ServiceLifecycleClient(self, self.config)
        self._status, self._message = "idle", "waiting for ~/startup"
        self._states = {name: lifecycle.UNKNOWN for name in self.config.node_names}
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        work, steady = MutuallyExclusiveCallbackGroup(), Clock(clock_type=ClockType.STEADY_TIME)
        self.create_service(Trigger, "~/startup", self._on_startup, callback_group=work)
        self.create_service(Trigger, "~/shutdown", self._on_shutdown, callback_group=work)
        self.create_timer(self.config.check_period, self._check, callback_group=work, clock=steady)
        if self.config.autostart:
            self._autostart = self.create_timer(0.0, self._start_once, callback_group=work, clock=steady)
        self.get_logger().info(f"managing {', '.join(self.config.node_names)} (autostart {self.config.autostart})")

    def _start_once(self) -> None:
        if self._autostart.is_canceled():  # a call queued before the first one cancelled the timer
            return
        self._autostart.cancel()
        self.startup()

    def startup(self) -> lifecycle.Outcome:
        """Bring every node up in order; on a failure bring them all down and report it."""
        self._report("starting", f"bringing up {', '.join(self.config.node_names)}")
        outcome = lifecycle.bring_up(self.config.node_names, self._lifecycle, self.get_logger().info)
        self._states.update(outcome.states)
        self._report("active" if outcome.ok else "failed", outcome.message)
        return outcome

    def shutdown(self) -> lifecycle.Outcome:
        """Bring every node down to unconfigured (reverse order); startup brings them back."""
        outcome = lifecycle.bring_down(self.config.node_names, self._lifecycle, self.get_logger().info)
        self._states.update(outcome.states)
        self._report("down" if outcome.ok else "failed", outcome.message)
        return outcome

    def _on_startup(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        outcome = self.startup()
        response.success, response.message = outcome.ok, outcome.message
        return response

    def _on_shutdown(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        outcome = self.shutdown()
        response.success, response.message = outcome.ok, outcome.message
        return response

    def _check(self) -> None:
        """While up, any node that leaves ACTIVE (or disappears) takes the others down to inactive."""
        if self._status == "active":
            problems = lifecycle.not_active(self.config.node_names, self._lifecycle)
            if problems:
                lost = "; ".join(f"{node}: {problem}" for node, problem in problems.items())
                self.get_logger().error(f"no longer active: {lost}; deactivating the others")
                outcome = lifecycle.bring_down(self.config.node_names, self._lifecycle, self.get_logger().info,
                                               to=lifecycle.INACTIVE, skip=problems)
                self._states.update(outcome.states)
                self._states.update({node: lifecycle.UNKNOWN for node in problems})
                self._report("failed", f"no longer active: {lost}; {outcome.message}")
                return
            self._states.update({node: lifecycle.ACTIVE for node in self.config.node_names})
        self._publish_diagnostics()

    def _report(self, status: str, message: str) -> None:
        self._status, self._message = status, message
        if status == "failed":  # rclpy wants one severity per call site
            self.get_logger().error(message)
        else:
            self.get_logger().info(message)
        self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: managed nodes", message=self._message,
                                  level=LEVELS.get(self._status, DiagnosticStatus.WARN))
        status.values = [KeyValue(key="status", value=self._status),
                         *(KeyValue(key=node, value=state) for node, state in self._states.items())]
        message = DiagnosticArray(status=[status])
        message.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(message)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``lifecycle_manager`` executable; exits with 1 on invalid parameters."""
    return run_node("lifecycle_manager", _started_manager, num_threads=3, args=args)  # work, client responses, spare


def _started_manager() -> LifecycleManager:
    node = LifecycleManager()
    if node.config is None:
        node.destroy_node()
        raise ValueError("invalid parameters (see the error above)")
    return node

if __name__ == "__main__":
    raise SystemExit(main())
