"""The bridge's commands as ``control_msgs/action/FollowJointTrajectory`` goals (``controller_interface: action``).

On a robot a JointTrajectoryController serves ``<controller>/follow_joint_trajectory`` beside its
topic; the action says what the topic cannot: whether the controller took the trajectory and
whether it gave up on it. JTC's rules (ros2_controllers Jazzy, joint_trajectory_controller.cpp):
a goal it cannot validate is rejected without a result (cpp:1401-1421); a new goal preempts the
active one, which is aborted with INVALID_GOAL (cpp:1824-1837); a cancelled goal ends CANCELED and
the controller holds, or decelerates with ``decelerate_on_cancel`` (cpp:1441-1450); a path or
goal-time violation aborts with PATH_TOLERANCE_VIOLATED / GOAL_TOLERANCE_VIOLATED (cpp:467-538).

So here: a plan is one goal per controller, all with one start stamp; a rejected goal, or an
abort of a plan's goal on either arm that this bridge did not cause by sending a newer goal,
is reported to the bridge (:meth:`eva_idm.bridge.ControllerBridge.controller_failed`), which stops
every controller. A stop cancels every active goal (JTC holds at once) and then sends the stop
trajectory as the next goal, which takes over from the hold.

Goals are sent as messages (rclpy serialises them in ``send_goal_async``): unlike the topic path
the serialisation falls after the stamp, ~25 ms per arm at ``max_points`` here, inside
``start_delay``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node

from control_msgs.action import FollowJointTrajectory
from eva_idm.bridge_checks import NS_PER_S, Code, ControllerCommand
from eva_idm.ros.bridge_messages import trajectory_message

# Result codes of FollowJointTrajectory that mean the controller left the path it was given.
_TRACKING = (FollowJointTrajectory.Result.PATH_TOLERANCE_VIOLATED, FollowJointTrajectory.Result.GOAL_TOLERANCE_VIOLATED)

Failure = Callable[[str, Code, str], None]  # (controller, code, reason)


@dataclass(frozen=True, eq=False)
class _Goal:
    controller: str
    goal: FollowJointTrajectory.Goal
    is_stop: bool


class ControllerActions:
    """One FollowJointTrajectory client per controller; sends the bridge's prepared commands as goals."""

    def __init__(self, node: Node, controllers: Sequence[str], on_failure: Failure, group: CallbackGroup):
        self._logger = node.get_logger()
        self._clients = {name: ActionClient(node, FollowJointTrajectory, f"{name}/follow_joint_trajectory",
                                            callback_group=group) for name in controllers}
        self._on_failure = on_failure
        self._lock = threading.Lock()  # send runs on the bridge's thread, the responses on the executor's
        self._handles: dict[str, object] = {}  # controller -> goal handle of the newest accepted goal
        self._generation = 0  # one per send: results of goals a newer send superseded are not failures

    def prepare(self, commands: Sequence[ControllerCommand]) -> list[_Goal]:
        """One unstamped goal per command."""
        return [_Goal(command.controller, FollowJointTrajectory.Goal(trajectory=trajectory_message(command)),
                      command.is_stop) for command in commands]

    def send(self, goals: Sequence[_Goal], stamp_ns: int) -> None:
        """Stamp the goals alike and send them; a stop first cancels every active goal.

        Raises:
            RuntimeError: a controller's action server is not available (nothing is sent then).
        """
        missing = [goal.controller for goal in goals if not self._clients[goal.controller].server_is_ready()]
        if missing:
            raise RuntimeError(f"no FollowJointTrajectory server for {missing} (controller_interface: action)")
        with self._lock:
            self._generation += 1
            generation = self._generation
            cancelled = list(self._handles.values()) if any(goal.is_stop for goal in goals) else []
            if cancelled:
                self._handles.clear()
        for handle in cancelled:
            handle.cancel_goal_async()
        seconds, nanoseconds = divmod(stamp_ns, NS_PER_S)
        for goal in goals:
            goal.goal.trajectory.header.stamp.sec, goal.goal.trajectory.header.stamp.nanosec = seconds, nanoseconds
        for goal in goals:
            future = self._clients[goal.controller].send_goal_async(goal.goal)
            future.add_done_callback(lambda done, goal=goal: self._on_response(goal, generation, done.result()))
        if any(goal.is_stop for goal in goals):
            self._logger.warning("cancelled the controllers' goals and sent a stop")

    def flush(self, timeout_s: float) -> None:
        """Nothing is waited for: a goal request has no delivery acknowledgement short of its response.

        So on process exit the cancels and the stop goal may not reach the controllers before the
        process is gone (the topic interface waits for acknowledgements).
        """

    def destroy(self) -> None:
        """Destroy the action clients."""
        for client in self._clients.values():
            client.destroy()

    def _on_response(self, goal: _Goal, generation: int, handle) -> None:
        with self._lock:  # never held while calling back into the bridge (its lock is taken around send)
            current = generation == self._generation
            if current and handle.accepted:
                self._handles[goal.controller] = handle
        if not handle.accepted:
            self._logger.error(f"{goal.controller}/follow_joint_trajectory rejected the "
                               f"{'stop' if goal.is_stop else 'plan'} goal")
            if current and not goal.is_stop:
                self._on_failure(goal.controller, Code.INTERNAL_ERROR, "the controller rejected the plan's goal")
            return
        handle.get_result_async().add_done_callback(
            lambda done: self._on_result(goal, generation, done.result()))

    def _on_result(self, goal: _Goal, generation: int, response) -> None:
        if response.status != GoalStatus.STATUS_ABORTED:
            return
        result = response.result
        self._logger.warning(f"{goal.controller}/follow_joint_trajectory aborted the "
                             f"{'stop' if goal.is_stop else 'plan'} goal: error_code {result.error_code}: "
                             f"{result.error_string}")
        with self._lock:
            current = generation == self._generation
        if current and not goal.is_stop:
            code = Code.TRACKING_ERROR if result.error_code in _TRACKING else Code.INTERNAL_ERROR
            self._on_failure(goal.controller, code, f"the controller aborted the plan's goal (error_code "
                                                    f"{result.error_code}: {result.error_string})")
