"""controller_bridge as a real process over real DDS: plans, the e-stop, joint-state faults, lifecycle.

The test process plays the robot (joint_states following the commands it receives, the way a
JointTrajectoryController would: a future stamp waits while the previous command goes on, an empty
trajectory is rejected) and the IDM node
(GatedPlans made by the gate, ``eva_idm.motion.plan_to_motion``, from smooth synthetic decodes that
start at the measured pose), and spies on both arm controller topics. Every command the spy sees
must be a stop (braking to rest) or the exact command of a plan the bridge accepted.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import LifecycleClient

from eva_idm.embodiment import load_embodiment
from eva_idm.motion import GateConfig, plan_to_motion
from eva_idm.trajectory import Trajectory, sample

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = ROOT / "config" / "controller_bridge.yaml"
EMBODIMENT = load_embodiment("aloha_agilex")
NAMES = list(EMBODIMENT.joint_names)
ARMS = {"left_arm_controller": NAMES[:7], "right_arm_controller": NAMES[7:]}
NS = 1_000_000_000
#                   j1   j2   j3   j4    j5   j6   gripper (x2 arms)
HOME = np.array([0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.5] * 2)
MOVE = np.array([0.4, 0.3, 0.2, -0.25, 0.15, 0.35, 0.3] * 2)
# Short delays so that each good plan of the bulk test takes a few tens of milliseconds; generous
# joint-state age and tracking tolerances, because this process plays the robot and may stall on
# a loaded machine (the robot's own stalls are what those checks are for; the tests cause them).
START_DELAY_NS = 20_000_000
FAST = ["start_delay:=0.02", "standstill_window:=0.05", "settle_time:=0.0", "monitor_rate:=100.0",
        "status_rate:=20.0", "max_joint_state_age:=1.0", "tracking_tolerance:=0.3", "diagnostics_period:=0.5"]
SHIPPED = yaml.safe_load(CONFIG_FILE.read_text())["controller_bridge"]["ros__parameters"]
START_DELAY, MAX_POINTS = SHIPPED["start_delay"], SHIPPED["max_points"]
ACCEPTED, REJECTED, EXECUTING, SUCCEEDED, ABORTED = 1, 2, 3, 4, 5
MALFORMED, LIMIT, MOVED, OLD_IMAGE, ESTOP, STALE, IMPLAUSIBLE = 1, 2, 3, 4, 5, 6, 7
TRACKING, BUSY, START_OFFSET, CANCELLED = 9, 10, 11, 12


def qos(depth: int, transient_local: bool = False):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    durability = DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=durability)


def motion(start: np.ndarray, move: np.ndarray, seconds: float = 1.0, fps: float = 16.0,
           time_scale: float = 0.5) -> Trajectory:
    """What the IDM node would gate: a smooth decode from the measured pose, made executable by plan_to_motion."""
    phase = np.linspace(0.0, 1.0, int(round(seconds * fps)) + 1)
    decoded = start + move * (0.5 * (1.0 - np.cos(np.pi * phase)))[:, None]
    config = GateConfig.from_embodiment(EMBODIMENT, time_scale=time_scale, min_time_scale=min(0.1, time_scale))
    result = plan_to_motion(decoded, fps, start, EMBODIMENT, config)
    assert result.executable, result.reason
    return result.trajectory


def tiny(pose: np.ndarray) -> Trajectory:
    """A 10 ms plan that stays at ``pose``: the full accept-execute-succeed path at almost no cost."""
    return motion(pose, np.zeros(14), seconds=4 / 400, fps=400.0, time_scale=1.0)


def gated_plan(plan_id: str, trajectory: Trajectory, at_image: np.ndarray, stamp_ns: int):
    from builtin_interfaces.msg import Duration
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectoryPoint

    from eva_msgs.msg import GatedPlan

    state = JointState(name=list(NAMES), position=at_image.tolist())  # copies: tests mutate messages
    message = GatedPlan(plan_id=plan_id, joint_state_at_image=state)
    message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp_ns, NS)
    message.report.plan_id, message.report.executable = plan_id, True
    message.trajectory.joint_names = list(NAMES)
    for time_s, positions, velocities in zip(trajectory.times, trajectory.positions, trajectory.velocities,
                                             strict=True):
        sec, nanosec = divmod(round(time_s * NS), NS)
        message.trajectory.points.append(JointTrajectoryPoint(positions=positions.tolist(),
                                                              velocities=velocities.tolist(),
                                                              time_from_start=Duration(sec=sec, nanosec=nanosec)))
    return message


def nanoseconds(stamp) -> int:
    return stamp.sec * NS + stamp.nanosec


class Robot:
    """The test peer: joint_states at ``rate`` Hz following the commands, a spy on both arms, plans, e-stop."""

    def __init__(self, ros_peer, rate: float = 50.0, pose: np.ndarray = HOME):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from trajectory_msgs.msg import JointTrajectory

        from eva_msgs.msg import ExecutionStatus, GatedPlan

        self.peer, node = ros_peer, ros_peer.node
        self.pose, self.velocity = np.array(pose, dtype=float), np.zeros(14)
        self.received: list[tuple[str, int, object]] = []  # (controller, arrival ns, message)
        self.active: dict[str, list[tuple[int, Trajectory, np.ndarray]]] = {}
        self.statuses: dict[str, list] = {}
        self.diagnostics: list = []
        self.publishing, self.following = True, True
        self.corrupt = None  # a function JointState -> JointState applied before publishing
        for controller in ARMS:
            node.create_subscription(JointTrajectory, f"{controller}/joint_trajectory",
                                     lambda message, name=controller: self._on_command(name, message), qos(100))
        node.create_subscription(ExecutionStatus, "eva/execution_status", self._on_status, qos(200, True))
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, qos(10))
        self.joint_states = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.plans = node.create_publisher(GatedPlan, "eva/gated_plan", qos(10))
        self.estop_publisher = node.create_publisher(Bool, "eva/estop", qos(1, True))
        self.period_s, self.last_published = 1.0 / rate, 0.0  # steady-clock time of the newest joint_states
        self.timer = node.create_timer(self.period_s, self._tick)

    def now_ns(self) -> int:
        return self.peer.node.get_clock().now().nanoseconds

    def _on_command(self, controller: str, message) -> None:
        self.received.append((controller, self.now_ns(), message))
        columns = [NAMES.index(name) for name in message.joint_names]
        if not message.points:  # JTC rejects it: the previous command goes on
            return
        times = [nanoseconds(point.time_from_start) / NS for point in message.points]
        accelerations = [list(p.accelerations) for p in message.points] if message.points[0].accelerations else None
        trajectory = Trajectory(tuple(message.joint_names), times, [list(p.positions) for p in message.points],
                                [list(p.velocities) for p in message.points], accelerations)
        self.active.setdefault(controller, []).append((nanoseconds(message.header.stamp), trajectory,
                                                       np.array(columns)))

    def _on_status(self, message) -> None:
        self.statuses.setdefault(message.plan_id, []).append(message)

    def _tick(self) -> None:
        from sensor_msgs.msg import JointState

        now = self.now_ns()
        self.velocity = np.zeros(14)
        for commands in self.active.values():  # the newest command already due; the one before it until then
            due = [command for command in commands if command[0] <= now]
            if self.following and due:
                stamp, trajectory, columns = due[-1]
                positions, velocities, _ = sample(trajectory, (now - stamp) / NS)
                self.pose[columns], self.velocity[columns] = positions, velocities
        if not self.publishing:
            return
        message = JointState(name=list(NAMES), position=self.pose.tolist(), velocity=self.velocity.tolist())
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(now, NS)
        self.joint_states.publish(self.corrupt(message) if self.corrupt else message)
        self.last_published = time.monotonic()

    def send(self, plan_id: str, trajectory: Trajectory, at_image: np.ndarray | None = None, **changes):
        self.catch_up()
        message = gated_plan(plan_id, trajectory, self.pose if at_image is None else at_image, self.now_ns())
        for name, value in changes.items():
            setattr(message, name, value)
        self.publish(message)
        return message

    def catch_up(self) -> None:
        """Publish fresh joint_states first if this process stalled (say, gating a plan on a loaded machine).

        The robot's joint_states go quiet while the test computes; a plan sent right after would be
        refused as stale, correctly, but that is not what the test is about.
        """
        if self.publishing and time.monotonic() - self.last_published > 2 * self.period_s:
            stalled_at = time.monotonic()
            self.peer.spin_until(lambda: self.last_published > stalled_at, 10, "fresh joint_states")

    def publish(self, message) -> None:
        self.peer.spin_until(lambda: self.plans.get_subscription_count() > 0, 60, "eva/gated_plan to match")
        self.plans.publish(message)

    def estop(self, engaged: bool) -> None:
        from std_msgs.msg import Bool

        self.estop_publisher.publish(Bool(data=engaged))

    def await_state(self, plan_id: str, state: int, timeout: float = 30.0):
        """The first status of ``plan_id`` in ``state``; fails naming the statuses seen so far."""
        def found():
            return next((s for s in self.statuses.get(plan_id, []) if s.state == state), None)

        seen = lambda: [(s.state, s.code, s.reason) for s in self.statuses.get(plan_id, [])]  # noqa: E731
        deadline = time.monotonic() + timeout
        while found() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"plan {plan_id!r} never reached state {state}; statuses: {seen()}")
            self.peer.executor.spin_once(timeout_sec=0.01)
        return found()

    def await_final(self, plan_id: str, timeout: float = 30.0):
        """The status that ends ``plan_id``: REJECTED, SUCCEEDED or ABORTED."""
        self.peer.spin_until(lambda: any(s.state in (REJECTED, SUCCEEDED, ABORTED)
                                         for s in self.statuses.get(plan_id, [])), timeout, f"plan {plan_id} to end")
        return next(s for s in self.statuses[plan_id] if s.state in (REJECTED, SUCCEEDED, ABORTED))

    def await_commands(self, count: int, timeout: float = 10.0) -> None:
        self.peer.spin_until(lambda: len(self.received) >= count, timeout, f"{count} controller messages")

    def spin_for(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        self.peer.spin_until(lambda: time.monotonic() > until, seconds + 5, "time to pass")


def assert_command_of(plan, pose: np.ndarray, messages) -> None:
    """``messages`` are the two arms' commands for ``plan``: one start stamp, point 0 = ``pose``, the plan's motion."""
    assert sorted(controller for controller, _, _ in messages) == sorted(ARMS)
    stamps = {nanoseconds(message.header.stamp) for _, _, message in messages}
    assert len(stamps) == 1, stamps
    for controller, _, message in messages:
        columns = [NAMES.index(name) for name in ARMS[controller]]
        assert list(message.joint_names) == ARMS[controller]
        # A future start: the bridge decided after the plan was made (its stamp) and added start_delay.
        assert nanoseconds(message.header.stamp) >= nanoseconds(plan.header.stamp) + START_DELAY_NS
        assert len(message.points) == len(plan.trajectory.points)
        np.testing.assert_array_equal(message.points[0].positions, pose[columns])
        for sent, planned in zip(message.points[1:], plan.trajectory.points[1:], strict=True):
            np.testing.assert_array_equal(sent.positions, np.asarray(planned.positions)[columns])
        for sent, planned in zip(message.points, plan.trajectory.points, strict=True):
            np.testing.assert_array_equal(sent.velocities, np.asarray(planned.velocities)[columns])
            assert (sent.time_from_start.sec, sent.time_from_start.nanosec) == (
                planned.time_from_start.sec, planned.time_from_start.nanosec)
            assert len(sent.accelerations) == len(sent.effort) == 0


def assert_stops(messages) -> None:
    """``messages`` are a stop for both arms: one stamp, braking with accelerations to a last point at rest."""
    assert sorted(controller for controller, _, _ in messages) == sorted(ARMS)
    assert len({nanoseconds(message.header.stamp) for _, _, message in messages}) == 1
    for controller, _, message in messages:
        assert list(message.joint_names) == ARMS[controller] and len(message.points) >= 2  # never empty
        assert all(len(point.accelerations) == 7 for point in message.points)
        assert list(message.points[-1].velocities) == [0.0] * 7


def await_rest(robot: Robot, timeout: float = 10.0) -> None:
    robot.peer.spin_until(lambda: np.abs(robot.velocity).max() == 0.0, timeout, "the arms to come to rest")


def call_rearm(ros_peer) -> tuple[bool, str]:
    from std_srvs.srv import Trigger

    client = ros_peer.node.create_client(Trigger, "eva/rearm")
    ros_peer.spin_until(client.service_is_ready, 30, "the eva/rearm service")
    settled = time.monotonic() + 1.0
    ros_peer.spin_until(lambda: time.monotonic() > settled, 5, "service discovery to settle")
    future = client.call_async(Trigger.Request())
    ros_peer.spin_until(future.done, 30, "eva/rearm")
    ros_peer.node.destroy_client(client)
    return future.result().success, future.result().message


@pytest.fixture
def bridge(start_node, ros_peer):
    """Start controller_bridge with the robot's YAML and ``FAST`` overrides (plus more), configured and active."""
    from lifecycle_msgs.msg import Transition

    def start(*overrides: str, rate: float = 50.0):
        robot = Robot(ros_peer, rate)
        arguments = [argument for override in [*FAST, *overrides] for argument in ("-p", override)]
        process = start_node("eva_idm", "controller_bridge", "--ros-args", "--params-file", str(CONFIG_FILE),
                             *arguments)
        lifecycle = LifecycleClient(ros_peer, "controller_bridge")
        assert lifecycle.transition(Transition.TRANSITION_CONFIGURE), process.log()
        assert lifecycle.transition(Transition.TRANSITION_ACTIVATE), process.log()
        ros_peer.spin_until(lambda: robot.plans.get_subscription_count() > 0, 30, "eva/gated_plan to match")
        robot.spin_for(0.3)  # joint_states arrive; the robot has been still for standstill_window
        return process, robot, lifecycle

    return start


def test_a_good_plan_moves_both_arms_together_and_succeeds(bridge):
    process, robot, _ = bridge()
    trajectory = motion(HOME, MOVE)  # 2 s at the gate's time_scale 0.5
    plan = robot.send("good", trajectory)
    robot.await_state("good", ACCEPTED)
    robot.send("second", trajectory, at_image=HOME)  # arrives before the arms have moved measurably
    assert robot.await_final("second").code == BUSY
    executing = robot.await_state("good", EXECUTING)
    assert "sent to left_arm_controller, right_arm_controller" in executing.reason
    robot.await_commands(2)
    assert_command_of(plan, HOME, robot.received)
    final = robot.await_final("good")
    assert (final.state, final.code, final.progress) == (SUCCEEDED, 0, 1.0), final.reason
    assert final.max_tracking_error < 0.15
    progress = [s.progress for s in robot.statuses["good"] if s.state == EXECUTING]
    # Progress is the share of the plan's time elapsed: it may reach 1.0 while the arms settle on the goal.
    assert len(progress) >= 5 and progress == sorted(progress) and all(0.0 <= p <= 1.0 for p in progress)
    assert any(0.0 < p < 1.0 for p in progress), progress
    np.testing.assert_allclose(robot.pose, trajectory.positions[-1], atol=1e-9)
    assert len(robot.received) == 2 and process.poll() is None
    robot.peer.spin_until(lambda: any(s.name == "controller_bridge: execution" for array in robot.diagnostics
                                      for s in array.status), 10, "the bridge's diagnostics")


def test_a_serialised_trajectory_is_stamped_in_place_without_changing_anything_else():
    from rclpy.serialization import deserialize_message
    from trajectory_msgs.msg import JointTrajectory

    from eva_idm.bridge_checks import ControllerCommand
    from eva_idm.ros.bridge_messages import serialised_trajectory, stamp_serialised, trajectory_message

    rng = np.random.default_rng(3)
    command = ControllerCommand("left_arm_controller", tuple(ARMS["left_arm_controller"]), np.array([0.0, 0.5, 1.25]),
                                rng.normal(size=(3, 7)), rng.normal(size=(3, 7)), rng.normal(size=(3, 7)))
    serialised = serialised_trajectory(command)
    stamp_serialised(serialised, 1_700_000_123 * NS + 987_654_321)
    expected = trajectory_message(command)
    expected.header.stamp.sec, expected.header.stamp.nanosec = 1_700_000_123, 987_654_321
    assert deserialize_message(bytes(serialised), JointTrajectory) == expected


# The arm controllers' side, in a process of its own as on a robot: takes both arms' serialised
# commands from DDS and writes "arrival_ns stamp_ns" per message; "ready" once it has matched.
CONTROLLERS_LISTENER = """
import pathlib, struct, sys, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from trajectory_msgs.msg import JointTrajectory
out = pathlib.Path(sys.argv[1])
rclpy.init()
node = rclpy.create_node("controllers")
lines = []
def take(raw):
    sec, nanosec = struct.unpack_from("<iI", raw, 4)
    lines.append(f"{time.time_ns()} {sec * 1_000_000_000 + nanosec}")
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
topics = ["left_arm_controller/joint_trajectory", "right_arm_controller/joint_trajectory"]
for topic in topics:
    node.create_subscription(JointTrajectory, topic, take, qos, raw=True)
deadline = time.monotonic() + 60
while not all(node.count_publishers(topic) for topic in topics) and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
out.with_suffix(".ready").write_text("ready")
while len(lines) < 2 and time.monotonic() < deadline + 60:
    rclpy.spin_once(node, timeout_sec=0.05)
out.write_text("\\n".join(lines))
"""


def test_both_arms_receive_the_largest_plan_before_its_start_stamp(bridge, ros_domain, tmp_path):
    """max_points points, built and serialised before they are stamped, arrive together before their stamp.

    Arrival is when the controllers' process takes the serialised message from DDS (deserialising
    takes rclpy more, a C++ controller far less). The node clock here is the system clock (no sim
    time), shared by both processes. max_points is sized by this test: at 10,000 points (1.5 MB
    per arm) Fast DDS lost fragments in 2 of 3 runs and resent them at its 3 s heartbeat.
    """
    import subprocess
    import sys

    from eva_sim.processes import ros_environment

    process, robot, _ = bridge(f"start_delay:={START_DELAY}", "max_joint_state_age:=10.0")  # the shipped delay
    result = tmp_path / "arrivals.txt"
    listener = subprocess.Popen([sys.executable, "-c", CONTROLLERS_LISTENER, str(result)],
                                env=ros_environment(ros_domain), stderr=subprocess.PIPE, text=True)
    try:
        robot.peer.spin_until(lambda: result.with_suffix(".ready").exists() or listener.poll() is not None, 60,
                              "the controllers' listener to match")
        robot.spin_for(0.5)
        times = np.linspace(0.0, MAX_POINTS / 100.0, MAX_POINTS)
        phase = np.pi * times / times[-1]
        positions = HOME + 0.5 * MOVE * (0.5 - 0.5 * np.cos(phase))[:, None]
        velocities = 0.5 * MOVE * (0.5 * np.pi / times[-1] * np.sin(phase))[:, None]
        velocities[-1] = 0.0
        robot.send("largest", Trajectory(tuple(NAMES), times, positions, velocities))
        robot.await_state("largest", EXECUTING, timeout=120)
        robot.peer.spin_until(lambda: listener.poll() is not None, 120, "the controllers' listener to finish")
    finally:
        listener.kill()
    assert listener.returncode == 0, listener.stderr.read()
    arrivals = [tuple(int(value) for value in line.split()) for line in result.read_text().splitlines()]
    assert len(arrivals) == 2 and len({stamp for _, stamp in arrivals}) == 1, arrivals
    margins = [(stamp - arrived) / NS for arrived, stamp in arrivals]
    print(f"{MAX_POINTS}-point plan: both arms' commands taken {min(margins) * 1000:.0f} ms before their start "
          f"stamp (start_delay {START_DELAY:g} s)")
    assert min(margins) > 0.0, f"an arm's command arrived {-min(margins):.3f} s after its start stamp"
    apart = abs(arrivals[1][0] - arrivals[0][0]) / NS
    assert apart < 0.05, f"the arms' commands arrived {apart:.3f} s apart"  # was 100-300 ms, serialised in turn
    robot.await_commands(2, timeout=60)
    assert all(len(message.points) == MAX_POINTS for _, _, message in robot.received)
    assert process.poll() is None


def point(message, rng: np.random.Generator, first: int = 0):
    return message.trajectory.points[int(rng.integers(first, len(message.trajectory.points)))]


def set_value(values, rng: np.random.Generator, value: object) -> None:
    values[int(rng.integers(len(values)))] = value


def add_to_value(values, rng: np.random.Generator, amount: float) -> None:
    index = int(rng.integers(len(values)))
    values[index] += amount


BAD_MESSAGES = [  # (name, expected code, mutation of a good GatedPlan message)
    ("nan position", MALFORMED, lambda m, r: set_value(point(m, r, 1).positions, r, math.nan)),
    ("inf velocity", MALFORMED, lambda m, r: set_value(point(m, r).velocities, r, -math.inf)),
    ("nan accelerations", MALFORMED, lambda m, r: [p.accelerations.extend([math.nan] * 14)
                                                    for p in m.trajectory.points]),
    ("unknown joint", MALFORMED, lambda m, r: set_value(m.trajectory.joint_names, r, "elbow")),
    ("duplicate joint", MALFORMED, lambda m, r: m.trajectory.joint_names.__setitem__(13, NAMES[r.integers(13)])),
    ("swapped arms", MALFORMED, lambda m, r: setattr(m.trajectory, "joint_names", NAMES[7:] + NAMES[:7])),
    ("short positions", MALFORMED, lambda m, r: point(m, r).positions.pop()),
    ("no velocities", MALFORMED, lambda m, r: setattr(point(m, r), "velocities", [])),
    ("effort", MALFORMED, lambda m, r: setattr(point(m, r), "effort", [0.0] * 14)),
    ("repeated time", MALFORMED, lambda m, r: setattr(m.trajectory.points[2], "time_from_start",
                                                      m.trajectory.points[1].time_from_start)),
    ("absurd duration", MALFORMED, lambda m, r: setattr(m.trajectory.points[-1].time_from_start, "sec", 100000)),
    ("late point 0", MALFORMED, lambda m, r: setattr(m.trajectory.points[0].time_from_start, "nanosec", 1000)),
    ("no points", MALFORMED, lambda m, r: setattr(m.trajectory, "points", [])),
    ("stamped trajectory", MALFORMED, lambda m, r: setattr(m.trajectory.header.stamp, "sec", 1)),
    ("gate refused", MALFORMED, lambda m, r: setattr(m.report, "executable", False)),
    ("no image state", MALFORMED, lambda m, r: setattr(m.joint_state_at_image, "name", [])),
    ("old image", OLD_IMAGE, lambda m, r: setattr(m.header.stamp, "sec", m.header.stamp.sec - 601)),
    ("unstamped image", OLD_IMAGE, lambda m, r: setattr(m, "header", type(m.header)())),
    ("moved since image", MOVED, lambda m, r: add_to_value(m.joint_state_at_image.position, r,
                                                           r.choice([-1, 1]) * r.uniform(0.02, 0.5))),
]
BAD_MOTIONS = [  # (name, expected code): faults of a moving plan, see bad_motion
    ("teleport", START_OFFSET), ("waypoint at the limit moving outwards", LIMIT), ("too fast", LIMIT),
    ("not at rest at the end", LIMIT),
]


def bad_motion(kind: str, moving: Trajectory, rng: np.random.Generator) -> Trajectory:
    joint = int(rng.integers(14))
    positions, velocities, times = moving.positions.copy(), moving.velocities.copy(), moving.times.copy()
    if kind == "teleport":  # point 0 is not where the robot is
        positions[0, joint] += rng.choice([-1, 1]) * rng.uniform(0.02, 0.5)
    elif kind == "too fast":
        factor = rng.uniform(4.0, 20.0)
        times, velocities = times / factor, velocities * factor
    elif kind == "not at rest at the end":
        velocities[-1, joint] = 0.1
    else:  # legal position and velocity at the waypoint; the cubic leaves the range (and jerks)
        index = int(rng.integers(2, len(times) - 2))
        outwards = rng.choice([-1, 1])
        velocities[index, joint] = outwards * EMBODIMENT.velocity_limit[joint] * 0.99
        bounds = EMBODIMENT.position_upper if outwards > 0 else EMBODIMENT.position_lower
        positions[index, joint] = bounds[joint]
    return Trajectory(moving.joint_names, times, positions, velocities)


def test_a_thousand_bad_plans_never_reach_the_controllers(bridge):
    """Each bad plan is refused with its code, then a good one executes: the spy sees only the good ones' commands."""
    process, robot, _ = bridge("max_joint_state_age:=10.0", rate=100.0)  # staleness is not under test here
    rng = np.random.default_rng(7)
    moving = motion(HOME, 0.5 * MOVE)
    good_plans, previous, started = [], None, time.monotonic()
    rounds = 1000
    kinds = [*BAD_MESSAGES, *BAD_MOTIONS]
    for index in range(rounds):
        name, code, *mutate = kinds[index % len(kinds)]
        bad_id = f"bad-{index}-{name}"
        if previous is not None:  # a plan while another runs is BUSY, decided before any check: let it finish
            assert robot.await_final(previous).state == SUCCEEDED
        pose = robot.pose.copy()
        if mutate:
            message = gated_plan(bad_id, tiny(pose), pose, robot.now_ns())
            mutate[0](message, rng)
        else:
            message = gated_plan(bad_id, bad_motion(name, moving, rng), pose, robot.now_ns())
        robot.publish(message)
        verdict = robot.await_final(bad_id)
        assert (verdict.state, verdict.code) == (REJECTED, code), (name, verdict.reason, process.log()[-2000:])
        assert verdict.reason
        pose = robot.pose.copy()  # where the last good plan left the arms (its spline's last point)
        good_id = f"good-{index}"
        good_plans.append(robot.send(good_id, tiny(pose)))
        robot.await_state(good_id, EXECUTING)
        robot.await_commands(2 * len(good_plans))
        assert len(robot.received) == 2 * len(good_plans), [m.points for _, _, m in robot.received[-3:]]
        assert_command_of(good_plans[-1], pose, robot.received[-2:])
        previous = good_id
    assert robot.await_final(previous).state == SUCCEEDED
    robot.spin_for(0.5)  # anything late would show up now
    assert len(robot.received) == 2 * rounds and process.poll() is None
    print(f"{rounds} bad + {rounds} good plans in {time.monotonic() - started:.1f} s")


def test_the_estop_stops_both_arms_until_it_is_released_and_rearmed(bridge):
    from lifecycle_msgs.msg import Transition

    process, robot, lifecycle = bridge()
    robot.send("moving", motion(HOME, MOVE))
    robot.await_state("moving", EXECUTING)
    robot.spin_for(0.5)
    robot.estop(True)
    aborted = robot.await_final("moving")
    assert (aborted.state, aborted.code) == (ABORTED, ESTOP)
    robot.await_commands(4)
    assert_stops(robot.received[2:])
    await_rest(robot)
    held = robot.pose.copy()
    assert np.abs(held - HOME).max() > 0.01  # it had moved, and braked to rest
    assert np.abs(held - (HOME + MOVE)).max() > 0.05  # short of the plan's end
    success, message = call_rearm(robot.peer)
    assert (success, message) == (False, "eva/estop is still true: release the e-stop before re-arming")
    refused = robot.send("while latched", motion(robot.pose, MOVE))
    assert robot.await_final(refused.plan_id).code == ESTOP
    robot.estop(False)
    robot.spin_for(0.5)
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert lifecycle.transition(transition), process.log()  # a lifecycle cycle does not clear the latch
    robot.spin_for(0.5)  # joint_states reach the reconfigured bridge
    reconfigured = robot.send("after reconfigure", motion(robot.pose, MOVE))
    assert robot.await_final(reconfigured.plan_id).code == ESTOP
    assert len(robot.received) == 4  # nothing commanded while latched
    np.testing.assert_array_equal(robot.pose, held)
    assert call_rearm(robot.peer) == (True, "re-armed: plans are accepted again")
    resumed = robot.send("after rearm", motion(robot.pose, -0.5 * MOVE))
    assert robot.await_final("after rearm", 60).state == SUCCEEDED
    assert_command_of(resumed, held, robot.received[4:])
    assert process.poll() is None


# An operator's e-stop in its own process: one message per value given, then exit, QoS as given.
ESTOP_PUBLISHER = """
import sys, time
import rclpy
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
durability, *values = sys.argv[1:]
rclpy.init()
node = rclpy.create_node("operator_estop")
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=getattr(DurabilityPolicy, durability))
publisher = node.create_publisher(Bool, "eva/estop", qos)
deadline = time.monotonic() + 30
while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
for value in values:
    publisher.publish(Bool(data=value == "true"))
publisher.wait_for_all_acked(Duration(seconds=5))
print("published", values, "to", publisher.get_subscription_count(), "subscriptions", flush=True)
"""


def operator_estop(robot: Robot, ros_domain: int, durability: str, *values: str) -> str:
    """Run ESTOP_PUBLISHER to its end while the robot peer goes on spinning; its output."""
    import subprocess
    import sys

    from eva_sim.processes import ros_environment

    child = subprocess.Popen([sys.executable, "-c", ESTOP_PUBLISHER, durability, *values], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ros_environment(ros_domain))
    robot.peer.spin_until(lambda: child.poll() is not None, 60, "the operator's e-stop publisher to exit")
    output, errors = child.communicate()
    assert child.returncode == 0, errors
    return output


@pytest.mark.parametrize("durability", ["VOLATILE", "TRANSIENT_LOCAL"])
def test_an_estop_from_any_reliable_publisher_stops_the_arms_and_no_true_is_lost(bridge, ros_domain, durability):
    """The default QoS of ros2 topic pub, rclpy and rclcpp is volatile: it must reach the bridge too."""
    process, robot, _ = bridge()
    robot.send("moving", motion(HOME, MOVE, seconds=4.0))  # 8 s: the operator's process takes seconds to start
    robot.await_state("moving", EXECUTING)
    robot.spin_for(0.3)
    assert "published" in operator_estop(robot, ros_domain, durability, "true", "false")  # then exits
    aborted = robot.await_final("moving")
    assert (aborted.state, aborted.code) == (ABORTED, ESTOP), aborted.reason  # the true was not lost behind false
    robot.await_commands(4)
    assert_stops(robot.received[2:])
    await_rest(robot)
    refused = robot.send("while latched", tiny(robot.pose))
    assert robot.await_final(refused.plan_id).code == ESTOP
    assert call_rearm(robot.peer) == (True, "re-armed: plans are accepted again")  # released: false came last
    assert len(robot.received) == 4 and process.poll() is None


def test_a_transient_local_estop_pressed_before_the_bridge_started_latches_it(start_node, ros_peer, ros_domain,
                                                                              tmp_path):
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool

    qos_latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pressed = ros_peer.node.create_publisher(Bool, "eva/estop", qos_latched)
    pressed.publish(Bool(data=True))
    robot = Robot(ros_peer)
    process = start_node("eva_idm", "controller_bridge", "--ros-args", "--params-file", str(CONFIG_FILE),
                         *[argument for override in FAST for argument in ("-p", override)])
    lifecycle = LifecycleClient(ros_peer, "controller_bridge")
    assert lifecycle.transition(Transition.TRANSITION_CONFIGURE), process.log()
    assert lifecycle.transition(Transition.TRANSITION_ACTIVATE), process.log()
    robot.spin_for(0.5)
    refused = robot.send("after the press", tiny(HOME))
    final = robot.await_final(refused.plan_id)
    assert final.code == ESTOP and "e-stop engaged" in final.reason


def test_a_silent_estop_source_latches_when_a_heartbeat_is_required(bridge):
    process, robot, _ = bridge("estop_heartbeat_timeout:=0.5")
    robot.spin_for(0.6)
    refused = robot.send("no heartbeat", tiny(HOME))
    final = robot.await_final(refused.plan_id)
    assert final.code == ESTOP and "no eva/estop message for" in final.reason, final.reason
    success, message = call_rearm(robot.peer)
    assert not success and "the e-stop source must be alive before re-arming" in message
    assert robot.received == [] or all(len(m.points) >= 2 for _, _, m in robot.received)  # stops only


def test_stale_and_implausible_joint_states_refuse_plans_and_abort_execution(bridge):
    process, robot, _ = bridge()
    robot.publishing = False
    robot.spin_for(1.2)
    stale = robot.await_final(robot.send("stale", tiny(HOME)).plan_id)
    assert stale.code == STALE and "newest joint_states is" in stale.reason and "max_joint_state_age 1 s" in \
        stale.reason
    robot.publishing = True
    for name, corrupt, reason in [
        ("nan", lambda m: (m.position.__setitem__(4, math.nan), m)[1], "non-finite position nan of fl_joint5"),
        ("missing", lambda m: (m.name.pop(), m.position.pop(), m.velocity.pop(), m)[3],
         "joints missing: 'right_gripper'"),
        ("out of range", lambda m: (m.position.__setitem__(9, 4.0), m)[1], "fr_joint3 4 not in"),
    ]:
        robot.corrupt = corrupt
        robot.spin_for(0.1)
        refused = robot.await_final(robot.send(name, tiny(HOME)).plan_id)
        assert (refused.code, reason in refused.reason) == (IMPLAUSIBLE, True), refused.reason
    robot.corrupt = None
    robot.spin_for(0.2)
    robot.send("silenced", motion(HOME, MOVE))
    robot.await_state("silenced", EXECUTING)
    robot.spin_for(0.3)
    robot.publishing = False
    aborted = robot.await_final("silenced")
    assert (aborted.state, aborted.code) == (ABORTED, STALE) and aborted.reason.startswith("while executing")
    robot.await_commands(4)
    assert_stops(robot.received[2:])
    assert len(robot.received) == 4 and process.poll() is None


def test_a_moved_robot_is_refused_and_a_stuck_one_is_stopped(bridge):
    process, robot, _ = bridge()
    at_image = HOME + np.where(np.arange(14) == 8, 0.05, 0.0)
    moved = robot.await_final(robot.send("moved", motion(at_image, MOVE), at_image=at_image).plan_id)
    assert moved.code == MOVED and "fr_joint2 0.55 vs measured 0.5" in moved.reason
    robot.following = False  # the arms do not move: the tracking error grows
    robot.send("stuck", motion(HOME, MOVE))
    aborted = robot.await_final("stuck")
    assert (aborted.state, aborted.code) == (ABORTED, TRACKING) and "every controller stops" in aborted.reason
    robot.await_commands(4)
    assert_stops(robot.received[2:])
    assert len(robot.received) == 4 and process.poll() is None


def test_deactivating_or_stopping_the_bridge_stops_an_executing_plan(bridge):
    from lifecycle_msgs.msg import Transition

    process, robot, lifecycle = bridge()
    robot.send("deactivated", motion(HOME, MOVE))
    robot.await_state("deactivated", EXECUTING)
    assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE)
    aborted = robot.await_final("deactivated")
    assert (aborted.state, aborted.code) == (ABORTED, CANCELLED)
    assert aborted.reason.startswith("controller_bridge deactivated; every controller stops (braking")
    robot.await_commands(4)
    assert_stops(robot.received[2:])
    assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
    robot.spin_for(0.3)
    robot.send("interrupted", motion(robot.pose, MOVE))
    robot.await_state("interrupted", EXECUTING)
    robot.await_commands(6)
    assert process.stop() == 0  # SIGINT
    robot.await_commands(8)
    assert_stops(robot.received[6:])
    assert "controller_bridge process exiting" in process.log_path.read_text()


def test_an_unsafe_controller_configuration_fails_configure_and_the_node_stays_up(start_node, ros_peer, tmp_path):
    from lifecycle_msgs.msg import Transition

    document = yaml.safe_load((ROOT / "config" / "aloha_controllers.yaml").read_text())
    document["right_arm_controller"]["ros__parameters"]["cmd_timeout"] = 0.5  # == goal_time: JTC would ignore it
    unsafe = tmp_path / "controllers.yaml"
    unsafe.write_text(yaml.safe_dump(document))
    process = start_node("eva_idm", "controller_bridge", "--ros-args", "--params-file", str(CONFIG_FILE),
                         "-p", f"controllers_file:={unsafe}")
    lifecycle = LifecycleClient(ros_peer, "controller_bridge")
    assert not lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == "unconfigured" and process.poll() is None
    assert "configure failed" in process.log() and "right_arm_controller: needs cmd_timeout > " \
        "constraints.goal_time > 0, got cmd_timeout=0.5 and goal_time=0.5" in process.log()

