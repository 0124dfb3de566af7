"""The arms really stop: controller_bridge and sim_robot as real processes over real DDS, sim time.

A plan executes on the simulated arms (JTC's topic interface, :mod:`eva_sim.follower`); mid-motion
the e-stop, a tracking-error abort or a deactivate stops it. Judged on the robot's own
``joint_states`` (sim time): every joint's measured velocity falls below the bridge's standstill
threshold within the braking time the bridge reports plus the arm's lag, the arms stop short of
the plan's end, and nothing but the stop reaches the controllers afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import LifecycleClient

from eva_idm.embodiment import load_embodiment
from eva_idm.motion import GateConfig, plan_to_motion
from eva_sim.sim_config import HOME_POSE

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
EMBODIMENT = load_embodiment("aloha_agilex")
NAMES = list(EMBODIMENT.joint_names)
CONTROLLERS = ("left_arm_controller", "right_arm_controller")
NS = 1_000_000_000
HOME = np.array(HOME_POSE)
MOVE = np.array([0.5, 0.8, 0.7, -0.4, 0.3, 0.5, -0.6] * 2)
STANDSTILL = 0.01  # config/controller_bridge.yaml standstill_velocity [rad/s]
LAG = 0.05  # config/sim_robot.yaml tracking_time_constant [s]
ESTOP, TRACKING, CANCELLED = 5, 9, 12
EXECUTING, ABORTED = 3, 5


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class Operator:
    """The test peer: joint_states, the controller topics and statuses as they arrive; plans and the e-stop."""

    def __init__(self, ros_peer):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from trajectory_msgs.msg import JointTrajectory

        from eva_msgs.msg import ExecutionStatus, GatedPlan

        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.peer, node = ros_peer, ros_peer.node
        self.states: list[tuple[float, np.ndarray, np.ndarray]] = []  # (sim time, positions, velocities)
        self.commands: list[tuple[float, str, object]] = []  # (sim time of the newest state, controller, message)
        self.statuses: list = []
        node.create_subscription(JointState, "joint_states", self._on_state, qos_profile_sensor_data)
        for controller in CONTROLLERS:
            node.create_subscription(JointTrajectory, f"{controller}/joint_trajectory",
                                     lambda message, name=controller: self.commands.append(
                                         (self.now(), name, message)), reliable)
        node.create_subscription(ExecutionStatus, "eva/execution_status", self.statuses.append, latched)
        self.plans = node.create_publisher(GatedPlan, "eva/gated_plan", reliable)
        self.estop_publisher = node.create_publisher(Bool, "eva/estop", latched)

    def _on_state(self, message) -> None:
        self.states.append((seconds(message.header.stamp), np.array(message.position), np.array(message.velocity)))

    def now(self) -> float:
        return self.states[-1][0] if self.states else 0.0

    def spin_until(self, predicate, what: str, timeout: float = 60.0) -> None:
        self.peer.spin_until(predicate, timeout, what)

    def wait_for_sim_time(self, time_s: float) -> None:
        self.spin_until(lambda: self.now() >= time_s, f"sim time {time_s:.2f} s")

    def send_plan(self, plan_id: str, trajectory) -> None:
        from sensor_msgs.msg import JointState
        from trajectory_msgs.msg import JointTrajectoryPoint

        from eva_msgs.msg import GatedPlan

        self.spin_until(lambda: self.plans.get_subscription_count() > 0, "eva/gated_plan to match")
        stamp, positions, _ = self.states[-1]
        message = GatedPlan(plan_id=plan_id, joint_state_at_image=JointState(name=NAMES, position=positions.tolist()))
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(round(stamp * NS), NS)
        message.report.plan_id, message.report.executable = plan_id, True
        message.trajectory.joint_names = NAMES
        for time_s, point_positions, velocities in zip(trajectory.times, trajectory.positions,
                                                       trajectory.velocities, strict=True):
            point = JointTrajectoryPoint(positions=point_positions.tolist(), velocities=velocities.tolist())
            point.time_from_start.sec, point.time_from_start.nanosec = divmod(round(time_s * NS), NS)
            message.trajectory.points.append(point)
        self.plans.publish(message)

    def status(self, plan_id: str, state: int):
        return next((s for s in self.statuses if s.plan_id == plan_id and s.state == state), None)


def planned_motion(start: np.ndarray, move: np.ndarray = MOVE):
    """A 3 s plan from ``start`` (the gate's output for a smooth decode): long enough to interrupt."""
    phase = np.linspace(0.0, 1.0, 25)[:, None]
    decoded = start + move * (0.5 - 0.5 * np.cos(np.pi * phase))
    config = GateConfig.from_embodiment(EMBODIMENT, time_scale=0.5)
    result = plan_to_motion(decoded, 16.0, start, EMBODIMENT, config)
    assert result.executable, result.reason
    return result.trajectory


@pytest.fixture
def sim_and_bridge(start_node, ros_peer):
    """sim_robot (no camera) and controller_bridge on its sim time, configured and active; yields a starter."""
    from lifecycle_msgs.msg import Transition

    def start(*bridge_overrides: str):
        sim = start_node("eva_sim", "sim_robot", "--ros-args", "--params-file", str(ROOT / "config" / "sim_robot.yaml"),
                         "-p", f"controllers_file:={ROOT / 'config' / 'aloha_controllers.yaml'}",
                         "-p", "camera_rate:=0.0")
        overrides = ["use_sim_time:=true", "standstill_window:=0.2", *bridge_overrides]
        bridge = start_node("eva_idm", "controller_bridge", "--ros-args", "--params-file",
                            str(ROOT / "config" / "controller_bridge.yaml"),
                            *[part for override in overrides for part in ("-p", override)])
        operator = Operator(ros_peer)
        operator.spin_until(lambda: len(operator.states) > 5, "joint_states from the sim")
        lifecycle = LifecycleClient(ros_peer, "controller_bridge")
        assert lifecycle.transition(Transition.TRANSITION_CONFIGURE), bridge.log()
        assert lifecycle.transition(Transition.TRANSITION_ACTIVATE), bridge.log()
        operator.wait_for_sim_time(operator.now() + 0.5)
        return sim, bridge, operator, lifecycle

    return start


@pytest.mark.parametrize("cause", ["estop", "tracking", "deactivate"])
def test_a_stop_brings_the_simulated_arms_to_rest_short_of_the_plans_end(sim_and_bridge, cause):
    from lifecycle_msgs.msg import Transition
    from std_msgs.msg import Bool

    sim, bridge, operator, lifecycle = sim_and_bridge(*(["tracking_tolerance:=0.01"] if cause == "tracking" else []))
    trajectory = planned_motion(operator.states[-1][1])
    operator.send_plan("interrupted", trajectory)
    operator.spin_until(lambda: operator.status("interrupted", EXECUTING), "the plan to execute")
    if cause != "tracking":  # a tracking abort comes by itself, once the arm's lag exceeds the tolerance
        operator.spin_until(lambda: np.abs(operator.states[-1][2]).max() > 0.3, "the arms to move")
    if cause == "estop":
        operator.estop_publisher.publish(Bool(data=True))
    elif cause == "deactivate":
        assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE), bridge.log()
    operator.spin_until(lambda: operator.status("interrupted", ABORTED), "the abort")
    aborted = operator.status("interrupted", ABORTED)
    assert aborted.code == {"estop": ESTOP, "tracking": TRACKING, "deactivate": CANCELLED}[cause], aborted.reason
    braking = float(re.search(r"braking ([0-9.e+-]+) s", aborted.reason).group(1))
    plan_commands = [entry for entry in operator.commands if not entry[2].points[0].accelerations]
    stops = [entry for entry in operator.commands if entry[2].points[0].accelerations]
    assert len(plan_commands) == 2 and sorted(name for _, name, _ in stops) == sorted(CONTROLLERS)
    stop_stamp = seconds(stops[0][2].header.stamp)
    assert {seconds(message.header.stamp) for _, _, message in stops} == {stop_stamp}
    # The robot's own measurements, on sim time: at rest within braking + the arm's lag (5 time constants).
    operator.wait_for_sim_time(stop_stamp + braking + 2.0)
    after = [(stamp, positions, velocities) for stamp, positions, velocities in operator.states if stamp >= stop_stamp]
    moving_at = [stamp for stamp, _, velocities in after if np.abs(velocities).max() >= STANDSTILL]
    rest_s = (moving_at[-1] if moving_at else stop_stamp) - stop_stamp
    assert rest_s <= braking + 5 * LAG + 0.05, f"{cause}: still moving {rest_s:.3f} s after the stop's stamp " \
                                               f"(braking {braking:.3f} s)"
    final = after[-1][1]
    assert np.abs(final - trajectory.positions[-1]).max() > 0.1  # short of the plan's end
    assert np.abs(final - trajectory.positions[0]).max() > 0.01  # and it had moved
    assert len(operator.commands) == 4, [(name, len(m.points)) for _, name, m in operator.commands]  # stops only
    assert "rejected" not in sim.log(), sim.log()[-2000:]  # the sim (JTC's rules) took every message


def test_through_the_action_interface_a_plan_runs_and_an_estop_cancels_and_brakes(sim_and_bridge):
    """controller_interface action against the sim's FollowJointTrajectory servers (JTC's rules)."""
    from std_msgs.msg import Bool

    sim, bridge, operator, _ = sim_and_bridge("controller_interface:=action")
    operator.send_plan("first", planned_motion(operator.states[-1][1]))
    operator.spin_until(lambda: operator.status("first", 4), "the first plan to succeed via goals")  # SUCCEEDED
    operator.wait_for_sim_time(operator.now() + 0.5)  # standstill again
    trajectory = planned_motion(operator.states[-1][1], -MOVE)
    operator.send_plan("interrupted", trajectory)
    operator.spin_until(lambda: operator.status("interrupted", EXECUTING), "the plan to execute")
    operator.spin_until(lambda: np.abs(operator.states[-1][2]).max() > 0.3, "the arms to move")
    pressed_at = operator.now()
    operator.estop_publisher.publish(Bool(data=True))
    operator.spin_until(lambda: operator.status("interrupted", ABORTED), "the abort")
    aborted = operator.status("interrupted", ABORTED)
    assert aborted.code == ESTOP, aborted.reason
    braking = float(re.search(r"braking ([0-9.e+-]+) s", aborted.reason).group(1))
    operator.wait_for_sim_time(pressed_at + braking + 2.0)
    moving_at = [stamp for stamp, _, velocities in operator.states
                 if stamp >= pressed_at and np.abs(velocities).max() >= STANDSTILL]
    rest_s = (moving_at[-1] if moving_at else pressed_at) - pressed_at
    assert rest_s <= braking + 5 * LAG + 0.3, f"still moving {rest_s:.3f} s after the e-stop (braking {braking:.3f} s)"
    assert np.abs(operator.states[-1][1] - trajectory.positions[-1]).max() > 0.1  # short of the plan's end
    log = sim.log()
    assert log.count("goal succeeded") >= 2 and "goal rejected" not in log and "refused" not in log, log[-3000:]
    assert operator.commands == []  # goals only: nothing on the topics
