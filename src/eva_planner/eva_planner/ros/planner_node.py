"""``planner_node``: newest head-camera image + instruction in, ``VisualPlan`` out; serves ``eva/execute``.

A lifecycle node (DESIGN.md §3): configure reads the parameters into
:class:`~eva_planner.node_config.PlannerNodeConfig`, loads the world model and creates the
interfaces; activate enables the plan publishers, instructions and goals; deactivate stops a running
plan at its next denoising step; cleanup frees the model.

Threads: a ``PatientMultiThreadedExecutor``. Camera, joint-state and verdict callbacks and the lifecycle
services stay in the default group, so they run while a plan is computed; plans asked for on
``eva/instruction`` run in their own inference group. rclpy runs an action's execute callback as an
executor task outside every callback group, so ``_busy`` lets one plan run at a time in either path.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import uuid
from collections.abc import Callable

import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from eva_idm.ros.executable import run_node
from eva_idm.ros.parameters import declare_parameters, read_config
from eva_msgs.action import ExecuteInstruction
from eva_msgs.msg import ExecutabilityReport, ExecutionStatus, VisualPlan
from eva_planner.node_config import PlannerNodeConfig, build_plan_scorer, build_world_model, sample_plan
from eva_planner.ros import support
from eva_planner.world_model import PlanningCancelled

Goal, Result, Feedback = ExecuteInstruction.Goal, ExecuteInstruction.Result, ExecuteInstruction.Feedback
RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
NEWEST_IMAGE = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


class PlannerNode(LifecycleNode):
    """The lifecycle node around the world model (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("planner_node")
        self._parameter_errors = declare_parameters(self, PlannerNodeConfig)
        self._busy, self._board = threading.Lock(), support.VerdictBoard()
        self._config: PlannerNodeConfig | None = None
        self._model = self._scorer = None
        self._images = support.CameraBuffer()
        self._active = False
        self._teardown: list[Callable[[], object]] = []
        self._stats = {"state": "unconfigured", "plans": 0, "last_plan_id": ""}
        self._timings: dict[str, float] = {}
        self._error = ""

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the parameters, load the model, create the interfaces; FAILURE (logged) leaves it unconfigured."""
        try:  # rclpy would turn an exception into ERROR without a word; log the reason instead
            config = read_config(self, PlannerNodeConfig, self._parameter_errors, "config/planner.yaml")
            if config.num_threads:
                torch.set_num_threads(config.num_threads)
            self._model, self._scorer = build_world_model(config), build_plan_scorer(config)
        except Exception as error:  # noqa: BLE001 (whatever fails to load fails configure)
            self.get_logger().error(f"configure failed: {error}")
            self._model = self._scorer = None
            return TransitionCallbackReturn.FAILURE
        self._config = config
        self._create_interfaces(config)
        self._stats["state"] = "inactive"
        self.get_logger().info(f"configured: model {self._model.model_id}, {config.num_frames} frames "
                               f"{config.height}x{config.width}, {config.steps} steps, best of {config.best_of_n}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the plan publishers, instructions and goals."""
        self._active, self._stats["state"] = True, "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Refuse new work; a running plan stops at its next denoising step, a waiting goal ends."""
        self._active, self._stats["state"] = False, "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the interfaces and free the model once no plan runs."""
        with self._busy:
            for destroy in reversed(self._teardown):
                destroy()
            self._teardown.clear()
            self._model = self._scorer = self._config = None
            self._images = support.CameraBuffer()
            self._stats["state"] = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop work and clean up, from any state."""
        self._active = False
        return self.on_cleanup(state)

    def _create_interfaces(self, config: PlannerNodeConfig) -> None:
        self._plan_publisher = self.create_lifecycle_publisher(VisualPlan, "eva/plan", RELIABLE)
        # plan_only goals: the IDM node judges these too but never forwards them to the bridge.
        self._preview_publisher = self.create_lifecycle_publisher(VisualPlan, "eva/plan/preview", RELIABLE)
        self._frame_publisher = self.create_lifecycle_publisher(  # keeps a whole plan for slow viewers
            CompressedImage, "eva/plan/image/compressed", QoSProfile(depth=config.num_frames))
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        compressed = config.image_transport == "compressed"
        subscriptions = [
            self.create_subscription(CompressedImage if compressed else Image,
                                     "head_camera/image_raw/compressed" if compressed else "head_camera/image_raw",
                                     self._on_image, NEWEST_IMAGE),
            self.create_subscription(JointState, "joint_states", self._images.on_joint_state, qos_profile_sensor_data),
            self.create_subscription(String, "eva/instruction", self._on_instruction, RELIABLE,
                                     callback_group=MutuallyExclusiveCallbackGroup()),
            self.create_subscription(ExecutabilityReport, "eva/executability", self._board.post, LATCHED),
            self.create_subscription(ExecutionStatus, "eva/execution_status", self._board.post, LATCHED),
        ]
        timer = self.create_timer(config.diagnostics_period, self._publish_diagnostics)
        server = ActionServer(self, ExecuteInstruction, "eva/execute", execute_callback=self._execute,
                              goal_callback=self._accept_goal, cancel_callback=lambda _: CancelResponse.ACCEPT)
        self._teardown = [
            *(functools.partial(self.destroy_lifecycle_publisher, publisher)
              for publisher in (self._plan_publisher, self._preview_publisher, self._frame_publisher,
                                self._diagnostics)),
            *(functools.partial(self.destroy_subscription, subscription) for subscription in subscriptions),
            functools.partial(self.destroy_timer, timer), server.destroy,
        ]

    def _on_image(self, message: Image | CompressedImage) -> None:
        problem = self._images.keep(message)
        if problem:  # a bad frame costs a log line, never the node
            self.get_logger().error(f"dropped a malformed head camera image: {problem}", throttle_duration_sec=5.0)
        elif self._images.joint_state is None:
            self.get_logger().warning("no joint_states yet: plans from this image carry no joint state at image "
                                      "time, and the gate will reject them", throttle_duration_sec=5.0)

    def _fresh_image(self, wait_s: float) -> support.CameraFrame | None:
        return self._images.fresh(self._config.max_image_age, wait_s, lambda: self._active)

    def _on_instruction(self, message: String) -> None:
        camera = self._fresh_image(self._config.image_timeout) if message.data.strip() else None
        if camera is None or not self._busy.acquire(blocking=False):
            reason = "a plan is running" if camera else "it is empty, the node is inactive or no image is fresh"
            self.get_logger().warning(f"instruction {message.data!r} ignored: {reason}")
            return
        try:
            self._plan(str(uuid.uuid4()), message.data, camera, self._config.plan_seed(), self._config.best_of_n,
                       lambda: not self._active)
        except PlanningCancelled as stopped:  # deactivated
            self.get_logger().warning(f"plan for {message.data!r} stopped: {stopped}")
        except Exception as error:  # noqa: BLE001 (a failed plan is reported; the node keeps serving)
            self._error = f"plan for {message.data!r} failed: {error}"
            self.get_logger().error(self._error)
        finally:
            self._busy.release()

    def _plan(self, plan_id: str, instruction: str, camera: support.CameraFrame, seed: int, n: int,
              should_stop: Callable[[], bool], on_step: Callable[[int, int], None] | None = None,
              preview: bool = False) -> VisualPlan:
        """Sample a plan (the best of ``n`` when ``n`` > 1), publish it and its frames, and return it.

        A ``preview`` plan goes to ``eva/plan/preview``: gated, never executed.
        """
        started, config, scorer = time.perf_counter(), self._config, self._scorer
        measured = support.joint_positions(camera.joint_state, scorer.embodiment.joint_names) if scorer else None
        result, timings = sample_plan(self._model, scorer, camera.rgb, instruction, config.sampler_config(seed), n,
                                      measured, should_stop=should_stop, on_step=on_step)
        plan = support.visual_plan(result.frames, camera, plan_id=plan_id, instruction=instruction,
                                   fps=result.fps, seed=result.seed, model_id=self._model.model_id, steps=config.steps,
                                   timings=timings, frame_format=config.frame_format)
        (self._preview_publisher if preview else self._plan_publisher).publish(plan)
        for frame in plan.frames:
            self._frame_publisher.publish(frame)
        self._stats.update(plans=self._stats["plans"] + 1, last_plan_id=plan.plan_id)
        self._timings, self._error = {timing.stage: timing.seconds for timing in plan.timings}, ""
        self._publish_diagnostics()
        self.get_logger().info(f"published plan {plan.plan_id} for {instruction!r} "
                               f"({len(plan.frames)} frames, {time.perf_counter() - started:.2f} s)")
        return plan

    def _accept_goal(self, goal: Goal) -> GoalResponse:
        if not self._active:
            self.get_logger().warning("eva/execute goal rejected: planner_node is not active")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, goal_handle: ServerGoalHandle) -> Result:
        result = self._run_goal(goal_handle)
        if result.error_code == Result.NONE:
            goal_handle.succeed()
        elif result.error_code == Result.CANCELED:
            goal_handle.canceled()
        else:
            goal_handle.abort()
            self.get_logger().warning(f"eva/execute goal failed, {support.RESULT_NAMES[result.error_code]}: "
                                      f"{result.error_msg}")
        return result

    def _run_goal(self, goal_handle: ServerGoalHandle) -> Result:
        goal, config = goal_handle.request, self._config
        problem = support.goal_problem(goal, can_rank=self._scorer is not None)
        if problem or not self._busy.acquire(blocking=False):
            return support.goal_result(Result.INVALID_GOAL if problem else Result.BUSY,
                                       problem or "another goal or instruction is being planned")
        deadline, plan_id = time.monotonic() + (goal.timeout or config.goal_timeout), str(uuid.uuid4())
        self._board.expect(plan_id)  # before the plan is published, so that no verdict on it can be missed
        try:
            goal_handle.publish_feedback(Feedback(phase=Feedback.WAITING_FOR_IMAGE, reward=math.nan))
            camera = self._fresh_image(min(config.image_timeout, deadline - time.monotonic()))
            if camera is None:
                return support.goal_result(Result.NO_IMAGE, "no head camera image received within the last "
                                           f"max_image_age = {config.max_image_age} s")

            def stop() -> bool:
                return goal_handle.is_cancel_requested or time.monotonic() > deadline or not self._active

            def on_step(done: int, total: int) -> None:
                goal_handle.publish_feedback(Feedback(phase=Feedback.PLANNING, progress=done / total, reward=math.nan))

            n = goal.best_of_n or config.best_of_n
            self._plan(plan_id, goal.instruction, camera, config.plan_seed(goal.seed), n, stop, on_step,
                       preview=goal.plan_only)
            return support.await_verdicts(goal_handle, self._board, plan_id, goal.plan_only, deadline,
                                          lambda: self._active)
        except PlanningCancelled as stopped:
            return support.interrupted(goal_handle, deadline, f"while planning ({stopped})")
        except Exception as error:  # noqa: BLE001 (the goal fails with the reason; the node keeps serving)
            self._error = f"planning failed: {error}"
            return support.goal_result(Result.PLANNING_FAILED, self._error)
        finally:
            self._board.forget(plan_id)
            self._busy.release()

    def _publish_diagnostics(self) -> None:
        values = {**self._stats, "malformed_images": self._images.malformed,
                  **{f"seconds.{stage}": f"{seconds:.3f}" for stage, seconds in self._timings.items()}}
        status = support.diagnostic_status(f"{self.get_name()}: planning", self._stats["state"],
                                           self._model.model_id if self._model else "", values, self._error)
        message = DiagnosticArray(status=[status])
        message.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(message)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``planner_node`` executable."""
    return run_node("planner_node", PlannerNode, num_threads=4, args=args)  # a goal, an instruction, default, spare

if __name__ == "__main__":
    raise SystemExit(main())
