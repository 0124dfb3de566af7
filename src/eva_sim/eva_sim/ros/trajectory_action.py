"""``<controller>/follow_joint_trajectory``: JTC's FollowJointTrajectory action server on the simulated controllers.

One ``control_msgs/action/FollowJointTrajectory`` server per controller of the layout, served the
way ros2_controllers' JointTrajectoryController (JTC) serves it. Source: branch ``jazzy`` at
ed360c97 (4.42.1); ``cpp:N`` is a line of ``joint_trajectory_controller/src/joint_trajectory_controller.cpp``.
The trajectory goes through the same :class:`~eva_sim.follower.TrajectoryFollower` as the topic
interface, so a goal and a topic message with the same trajectory move the arm the same way.
Reproduced:

* **Goal request** (``goal_received_callback``, cpp:1401-1421): the goal's ``trajectory`` is checked
  by the follower's own validation (:meth:`~eva_sim.follower.SimulatedRobot.validate`, the checks
  of ``validate_trajectory_msg`` cpp:1671-1816 that a topic message gets); a goal it refuses is
  **rejected** with no result (JTC never sends INVALID_JOINTS or OLD_HEADER_TIMESTAMP), the reason
  logged and counted in the controller's diagnostics. Otherwise it is accepted.
* **Accepted goal** (``goal_accepted_callback``, cpp:1455-1492): the active goal, if any, is
  **aborted** at once with ``INVALID_GOAL`` "Current goal preempted by new incoming action."
  (``preempt_active_goal``, cpp:1824-1837); the new trajectory then replaces the current one
  exactly as a topic message does (cpp:274-284; no deceleration on preemption in JTC either).
* **Success** (cpp:386-406, 493-510): with goal tolerances 0 (not enforced, the defaults; tol:308-311)
  JTC succeeds on the first update at or past the trajectory's end: result ``SUCCESSFUL``
  "Goal successfully reached!".
* **Cancel** (``goal_cancelled_callback``, cpp:1423-1453): always accepted; the active goal ends
  ``CANCELED`` with a default result (error_code 0, empty error_string), and the controller holds
  the measured position (``set_hold_position``, cpp:1839-1849).
* **Topic while a goal is active** (cpp:277-284): the topic message replaces the trajectory and the
  goal stays active, judged on the new trajectory (it succeeds at that trajectory's end).
* **Feedback** (cpp:456-464): ``joint_names`` (the controller's joints), ``desired``, ``actual``
  and ``error = desired - actual`` (positions and velocities), stamped with sim time, at 20 Hz,
  JTC's default ``action_monitor_rate`` (yaml:111-119, cpp:1488-1491), and once more on success.

Departures from JTC:

* Path, goal and component tolerances and ``goal_time_tolerance`` are not read and never enforced:
  no ``PATH_TOLERANCE_VIOLATED`` (cpp:467-491) and no ``GOAL_TOLERANCE_VIOLATED`` (cpp:511-538); a
  goal always succeeds at its trajectory's end, as JTC does with its default tolerances.
  ``multi_dof_trajectory`` is ignored (JTC's validation does not look at it either).
* After a success JTC holds the last point (``set_success_trajectory_point``, cpp:1939-1951) and
  ``cmd_timeout`` no longer fires. The follower keeps sampling the last point and, ``cmd_timeout``
  after the end, holds the measured position (status ``stale``, its topic behaviour, cpp:350-369):
  the arm has long arrived by then, so the held pose differs from the last point by the lag left.
  ``cmd_timeout`` cannot fire while a goal is active here (the goal succeeds on the tick that
  reaches the end, ``cmd_timeout`` > 0 later); a goal that found its follower ``stale`` would be
  counted a success, as JTC's same cycle reports (cpp:350-369 then 493-510, code reading).
* Cancel always holds the measured position (a step of the command); JTC decelerates to a stop
  instead when ``decelerate_on_cancel`` is configured (cpp:1441-1450, ``decelerate_to_hold_position``
  cpp:1851-1937).
* The trajectory is validated in the goal callback and taken in the accepted callback in the same
  executor turn, at the same sim time, and takes effect between ticks; JTC swaps it in at its next
  update (cpp:274-284). A goal refused when taken (not expected: same checks, same time) is aborted
  with ``INVALID_GOAL`` and the reason; JTC has no such path.
* Feedback is paced by control ticks of sim time, not a wall timer; ``desired`` is the tick's
  command (JTC's desired is sampled at ``traj_time`` and the command one period ahead, cpp:322-329);
  ``time_from_start`` and accelerations are left empty (JTC: ``traj_time - start``, cpp:324, 331).
* No lifecycle: goals are never rejected as "Controller is not running." (cpp:1404-1410) and never
  aborted by a deactivate (cpp:1260-1268).
* The follower's stricter checks (non-finite values, duplicate names, fields given for some
  points only; see :mod:`eva_sim.follower`) reject goals too.

The execute callback is a coroutine awaiting a future that the control tick (:meth:`TrajectoryActions.update`),
a preempting goal or a cancel resolves, so a goal never blocks the node's single-threaded
executor. Terminal states are set when the outcome is decided (a cancel's ``CANCELED`` once rclpy
has moved the goal to ``CANCELING``, right after the cancel callback); the result is sent when the
coroutine resumes, on the executor's next turn.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.node import Node
from rclpy.task import Future
from rclpy.time import Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from control_msgs.action import FollowJointTrajectory
from eva_sim.follower import CommandError, SimulatedRobot, TrajectoryCommand

Result = FollowJointTrajectory.Result
PREEMPTED = "Current goal preempted by new incoming action."  # cpp:1830
SUCCEEDED = "Goal successfully reached!"  # cpp:498
FEEDBACK_RATE_HZ = 20.0  # JTC's default action_monitor_rate (yaml:111-119)
# Follower statuses at or past the trajectory's end (see TrajectoryFollower.status).
REACHED = ("finished", "stale")


@dataclass(eq=False)
class _Goal:
    """The active goal of a controller and the future its execute callback awaits: (transition, result)."""

    handle: ServerGoalHandle
    outcome: Future


class TrajectoryActions:
    """The FollowJointTrajectory servers of ``robot``'s controllers on ``node`` (see the module docstring).

    Call :meth:`update` after every control tick, from the node's (single-threaded) executor.

    Args:
        node: the node that owns the servers.
        robot: the simulated controllers.
        now_ns: the current sim time, integer nanoseconds.
        convert: a ``JointTrajectory`` message in the follower's form.
        on_rejection: called with the controller and the reason of each rejected goal (diagnostics).
    """

    def __init__(self, node: Node, robot: SimulatedRobot, now_ns: Callable[[], int],
                 convert: Callable[[JointTrajectory], TrajectoryCommand],
                 on_rejection: Callable[[str, str], None]) -> None:
        self._robot, self._now_ns, self._convert, self._on_rejection = robot, now_ns, convert, on_rejection
        self._log = node.get_logger()
        self._goals: dict[str, _Goal] = {}
        self._outcomes: dict[bytes, Future] = {}  # accepted goals whose execute callback has not started
        self._feedback_every = max(1, round(robot.update_rate_hz / FEEDBACK_RATE_HZ))
        self._ticks = 0
        self.servers = [
            ActionServer(node, FollowJointTrajectory, f"{controller}/follow_joint_trajectory",
                         execute_callback=self._execute,
                         goal_callback=functools.partial(self._on_goal, controller),
                         handle_accepted_callback=functools.partial(self._on_accepted, controller),
                         cancel_callback=functools.partial(self._on_cancel, controller))
            for controller in robot.followers]

    def update(self) -> None:
        """After a control tick: succeed the goals whose trajectory reached its end; publish feedback."""
        self._ticks += 1
        due = self._ticks % self._feedback_every == 0
        for controller, goal in list(self._goals.items()):
            reached = self._robot.followers[controller].status in REACHED
            if due or reached:
                self._publish_feedback(controller, goal.handle)
            if reached:
                self._log.info(f"{controller}/follow_joint_trajectory: goal succeeded, the trajectory reached its end")
                self._finish(controller, "succeed", Result(error_code=Result.SUCCESSFUL, error_string=SUCCEEDED))

    def _now(self) -> float:
        return self._now_ns() * 1e-9

    def _on_goal(self, controller: str, goal: FollowJointTrajectory.Goal) -> GoalResponse:
        """cpp:1401-1421: reject what the controller would refuse, with no result; accept the rest."""
        try:
            self._robot.validate(controller, self._convert(goal.trajectory), self._now())
        except CommandError as error:
            self._log.error(f"{controller}/follow_joint_trajectory: goal rejected: {error}")
            self._on_rejection(controller, str(error))
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_accepted(self, controller: str, handle: ServerGoalHandle) -> None:
        """cpp:1455-1492: preempt the active goal, then take the trajectory as a topic message."""
        name = f"{controller}/follow_joint_trajectory"
        outcome = Future()
        self._outcomes[bytes(handle.goal_id.uuid)] = outcome
        handle.execute()  # EXECUTING now; the coroutine starts on the executor's next turn
        if controller in self._goals:
            self._log.info(f"{name}: the active goal is aborted: {PREEMPTED}")
            self._finish(controller, "abort", Result(error_code=Result.INVALID_GOAL, error_string=PREEMPTED))
        self._goals[controller] = _Goal(handle, outcome)
        try:
            taken = self._robot.receive(controller, self._convert(handle.request.trajectory), self._now())
        except CommandError as error:  # validated at this same sim time: not expected
            self._log.error(f"{name}: goal aborted, the trajectory was refused when taken: {error}")
            self._finish(controller, "abort", Result(error_code=Result.INVALID_GOAL, error_string=str(error)))
            return
        self._log.info(f"{name}: goal {handle.goal_id.uuid.tobytes().hex()[:8]} {taken}")

    def _on_cancel(self, controller: str, handle: ServerGoalHandle) -> CancelResponse:
        """cpp:1423-1453: always accepted; the active goal ends CANCELED and the arm holds the measured position."""
        goal = self._goals.get(controller)
        if goal is not None and goal.handle == handle:
            self._robot.followers[controller].hold(self._now())
            self._log.info(f"{controller}/follow_joint_trajectory: goal canceled, holding the measured position")
            self._finish(controller, "canceled", Result())
        return CancelResponse.ACCEPT

    async def _execute(self, handle: ServerGoalHandle) -> Result:
        """Await the goal's outcome without blocking the executor; return its result."""
        transition, result = await self._outcomes.pop(bytes(handle.goal_id.uuid))
        if handle.is_active:  # a cancel: CANCELING only once the cancel callback returned
            getattr(handle, transition)()
        return result

    def _finish(self, controller: str, transition: str, result: Result) -> None:
        """End ``controller``'s active goal with ``transition`` (a ServerGoalHandle method) and ``result``."""
        goal = self._goals.pop(controller)
        if transition != "canceled":  # EXECUTING -> CANCELED is no transition; _execute makes it
            getattr(goal.handle, transition)()
        goal.outcome.set_result((transition, result))

    def _publish_feedback(self, controller: str, handle: ServerGoalHandle) -> None:
        """cpp:456-464: desired, actual and error of the controller's joints, stamped with sim time."""
        desired_positions, desired_velocities, positions, velocities = self._robot.controller_state(controller)

        def point(position: np.ndarray, velocity: np.ndarray) -> JointTrajectoryPoint:
            return JointTrajectoryPoint(positions=position.tolist(), velocities=velocity.tolist())

        feedback = FollowJointTrajectory.Feedback(
            joint_names=list(self._robot.followers[controller].joint_names),
            desired=point(desired_positions, desired_velocities), actual=point(positions, velocities),
            error=point(desired_positions - positions, desired_velocities - velocities))
        feedback.header.stamp = Time(nanoseconds=self._now_ns()).to_msg()
        handle.publish_feedback(feedback)
