"""lifecycle_manager: the ROS-free sequencing (eva_idm.lifecycle) and the node with real lifecycle nodes.

The unit tests drive :mod:`eva_idm.lifecycle` through in-memory nodes that obey the lifecycle state
machine. The process tests start two planner_node processes (tiny config, renamed) and the manager
from a launch file read by eva_sim.launch_xml, over real DDS.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml

from eva_idm.lifecycle import (
    ACTIVATE,
    ACTIVE,
    CLEANUP,
    CONFIGURE,
    DEACTIVATE,
    FINALIZED,
    GOAL_STATES,
    INACTIVE,
    UNCONFIGURED,
    LifecycleManagerConfig,
    TransitionError,
    bring_down,
    bring_up,
    not_active,
)
from eva_idm.node_parameters import config_from_parameters, parameter_specs
from eva_sim.launch_xml import read_launch_file, start_nodes

CONFIG = Path(__file__).resolve().parents[1] / "config"
SOURCE_STATES = {CONFIGURE: UNCONFIGURED, ACTIVATE: INACTIVE, DEACTIVATE: ACTIVE, CLEANUP: INACTIVE}


class InMemoryNodes:
    """Lifecycle nodes in memory, reached like the manager reaches real ones (eva_idm.lifecycle.LifecycleClient)."""

    def __init__(self, states: dict[str, str], failing: set[tuple[str, str]] = frozenset(),
                 silent: set[str] = frozenset()):
        self.states, self.failing, self.silent = dict(states), failing, silent
        self.calls: list[tuple[str, str]] = []

    def state(self, node: str) -> str:
        if node in self.silent:
            raise TransitionError(node, "get_state", "no answer within 5 s")
        return self.states[node]

    def change_state(self, node: str, transition: str) -> None:
        self.calls.append((node, transition))
        if node in self.silent:
            raise TransitionError(node, transition, "no answer within 900 s")
        if self.states[node] != SOURCE_STATES[transition]:
            raise TransitionError(node, transition, f"invalid from {self.states[node]}")
        if (node, transition) in self.failing:
            raise TransitionError(node, transition, "the node reported failure")
        self.states[node] = GOAL_STATES[transition]


NODES = ("bridge", "idm", "planner")


def test_bring_up_configures_all_in_order_then_activates_all_in_order():
    nodes, lines = InMemoryNodes(dict.fromkeys(NODES, UNCONFIGURED)), []
    outcome = bring_up(NODES, nodes, lines.append)
    assert outcome.ok, outcome.message
    assert nodes.calls == [(node, CONFIGURE) for node in NODES] + [(node, ACTIVATE) for node in NODES]
    assert dict(outcome.states) == dict.fromkeys(NODES, ACTIVE) == nodes.states
    assert lines[0] == "bridge: configure -> inactive" and lines[-1] == "planner: activate -> active"


def test_bring_up_takes_each_node_from_where_it_is():
    nodes = InMemoryNodes({"bridge": ACTIVE, "idm": INACTIVE, "planner": UNCONFIGURED})
    assert bring_up(NODES, nodes, print).ok
    assert nodes.calls == [("planner", CONFIGURE), ("idm", ACTIVATE), ("planner", ACTIVATE)]


def test_a_failed_configure_brings_the_configured_nodes_back_down_in_reverse():
    nodes = InMemoryNodes(dict.fromkeys(NODES, UNCONFIGURED), failing={("planner", CONFIGURE)})
    outcome = bring_up(NODES, nodes, print)
    assert not outcome.ok
    assert outcome.message.startswith("startup failed: planner: configure failed: the node reported failure")
    assert nodes.calls[3:] == [("idm", CLEANUP), ("bridge", CLEANUP)]
    assert nodes.states == dict.fromkeys(NODES, UNCONFIGURED) == dict(outcome.states)


def test_a_failed_activate_deactivates_all_before_cleaning_any_up():
    nodes = InMemoryNodes(dict.fromkeys(NODES, UNCONFIGURED), failing={("idm", ACTIVATE)})
    outcome = bring_up(NODES, nodes, print)
    assert not outcome.ok and "idm: activate failed" in outcome.message
    assert nodes.calls[4:] == [("idm", ACTIVATE), ("bridge", DEACTIVATE),
                               ("planner", CLEANUP), ("idm", CLEANUP), ("bridge", CLEANUP)]
    assert nodes.states == dict.fromkeys(NODES, UNCONFIGURED)


def test_bring_up_stops_at_a_node_it_cannot_use():
    nodes = InMemoryNodes({"bridge": UNCONFIGURED, "idm": FINALIZED, "planner": UNCONFIGURED})
    outcome = bring_up(NODES, nodes, print)
    assert "idm: configure failed: it is finalized, not unconfigured" in outcome.message
    assert nodes.calls == [("bridge", CONFIGURE), ("bridge", CLEANUP)]
    silent = InMemoryNodes(dict.fromkeys(NODES, UNCONFIGURED), silent={"planner"})
    outcome = bring_up(NODES, silent, print)
    assert "planner: get_state failed: no answer within 5 s" in outcome.message
    assert silent.calls == [] and not outcome.ok and "incomplete" not in outcome.message  # not asked twice


def test_bring_down_to_inactive_leaves_the_lost_node_alone():
    nodes = InMemoryNodes(dict.fromkeys(NODES, ACTIVE), silent={"idm"})
    outcome = bring_down(NODES, nodes, print, to=INACTIVE, skip={"idm"})
    assert outcome.ok, outcome.message
    assert nodes.calls == [("planner", DEACTIVATE), ("bridge", DEACTIVATE)]
    assert dict(outcome.states) == {"planner": INACTIVE, "bridge": INACTIVE}


def test_bring_down_goes_on_past_a_node_that_fails_and_reports_it():
    nodes = InMemoryNodes(dict.fromkeys(NODES, ACTIVE), failing={("idm", CLEANUP)}, silent=set())
    outcome = bring_down(NODES, nodes, print)
    assert not outcome.ok and "idm: cleanup failed: the node reported failure" in outcome.message
    assert nodes.states == {"bridge": UNCONFIGURED, "idm": INACTIVE, "planner": UNCONFIGURED}
    with pytest.raises(ValueError, match="to: expected 'inactive' or 'unconfigured', got 'active'"):
        bring_down(NODES, nodes, print, to=ACTIVE)


def test_not_active_names_each_node_and_what_is_wrong():
    nodes = InMemoryNodes({"bridge": ACTIVE, "idm": INACTIVE, "planner": ACTIVE}, silent={"planner"})
    assert not_active(NODES, nodes) == {"idm": "it is inactive",
                                        "planner": "it does not answer (no answer within 5 s)"}


def test_the_shipped_parameter_file_sets_every_parameter():
    values = yaml.safe_load((CONFIG / "lifecycle_manager.yaml").read_text())["lifecycle_manager"]["ros__parameters"]
    assert set(values) == {spec.name for spec in parameter_specs(LifecycleManagerConfig)}
    config = config_from_parameters(LifecycleManagerConfig, values, "config/lifecycle_manager.yaml")
    assert config.node_names == ("controller_bridge", "idm_node", "planner_node")


@pytest.mark.parametrize(("values", "message"), [
    ({}, r"node_names: must name at least one lifecycle node, got \[\]"),
    ({"node_names": ["planner-node"]}, "node_names: 'planner-node' is not a relative ROS node name"),
    ({"node_names": ["a", "b", "a"]}, r"node_names: every node must be named once, got \['a', 'b', 'a'\]"),
    ({"node_names": ["a"], "state_timeout": 0.0}, r"state_timeout: must be a finite number > 0 \[s\], got 0.0"),
    ({"node_names": ["a"], "check_period": math.inf}, "check_period: must be a finite number > 0"),
    ({"node_names": ["a"], "discovery_settle": -1.0}, "discovery_settle: must be a finite number >= 0"),
    ({"node_names": ["a"], "autostart": "yes"}, "autostart: expected a boolean, got 'yes'"),
    ({"node_names": ["a"], "check_perod": 1.0}, r"unknown parameter.*'check_perod' \(did you mean 'check_period'"),
])
def test_bad_parameters_are_refused_naming_them(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_parameters(LifecycleManagerConfig, values, "config/lifecycle_manager.yaml")


# --- Real processes -------------------------------------------------------------------------------------------------

PLANNERS = ("planner_a", "planner_b")
LAUNCH = """<launch>
  <arg name="config_dir"/>
  <arg name="test_dir"/>
  <node pkg="eva_planner" exec="planner_node" name="planner_a">
    <param from="$(var test_dir)/planner_a.yaml"/>
  </node>
  <node pkg="eva_planner" exec="planner_node" name="planner_b">
    <param from="$(var test_dir)/planner_b.yaml"/>{planner_b_extra}
  </node>
  <node pkg="eva_idm" exec="lifecycle_manager" name="lifecycle_manager">
    <param from="$(var config_dir)/lifecycle_manager.yaml"/>
    <param from="$(var test_dir)/manager.yaml"/>
  </node>
</launch>
"""


@pytest.fixture
def stack(tmp_path, ros_domain):
    """Read the test launch file (planner_b's extra XML, manager parameters) and start nodes from it."""
    started = []
    tiny = yaml.safe_load((CONFIG / "planner_tiny.yaml").read_text())["planner_node"]
    for name in PLANNERS:  # parameter files are keyed by node name
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({name: tiny}))

    def launch(planner_b_extra: str = "", **manager_parameters):
        manager = {"node_names": ["planner_a", "planner_b"], "check_period": 0.5, "state_timeout": 2.0,
                   **manager_parameters}
        (tmp_path / "manager.yaml").write_text(yaml.safe_dump({"lifecycle_manager": {"ros__parameters": manager}}))
        (tmp_path / "test.launch.xml").write_text(LAUNCH.format(planner_b_extra=planner_b_extra))
        description = read_launch_file(tmp_path / "test.launch.xml", {"config_dir": str(CONFIG),
                                                                      "test_dir": str(tmp_path)})

        def start(*labels: str):
            processes = start_nodes(description, tmp_path / "logs", ros_domain, only=labels)
            started.extend(processes)
            return processes

        return start

    yield launch
    for process in reversed(started):
        process.stop()


class Watcher:
    """The test peer's view: the planners' transition events and the manager's /diagnostics."""

    def __init__(self, ros_peer):
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.msg import TransitionEvent

        self.peer, self.events, self.diagnostics = ros_peer, [], []
        for name in PLANNERS:
            ros_peer.node.create_subscription(
                TransitionEvent, f"{name}/transition_event",
                lambda event, name=name: self.events.append((name, event.goal_state.label)), 10)
        ros_peer.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def wait_for_planners(self) -> None:
        """Until both planners' transition events are discovered (so that none is missed)."""
        def discovered() -> bool:
            return all(self.peer.node.count_publishers(f"/{name}/transition_event") for name in PLANNERS)

        self.peer.spin_until(discovered, 180, "both planner_node processes")  # slow imports on a busy machine

    def reached(self, expected: list[tuple[str, str]], timeout: float, what: str) -> None:
        """Wait until the primary states reached since the last call are ``expected``, in this order."""
        primary = {UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED}

        def seen() -> list[tuple[str, str]]:
            return [event for event in self.events if event[1] in primary]

        self.peer.spin_until(lambda: len(seen()) >= len(expected), timeout, what)
        assert sorted(seen()) == sorted(expected), f"{what}: {seen()}"  # order: see the manager's log
        self.events.clear()

    def diagnosed(self, level: bytes, text: str, timeout: float) -> None:
        def found() -> bool:
            return any(status.name == "lifecycle_manager: managed nodes" and status.level == level
                       and text in status.message for array in self.diagnostics for status in array.status)

        self.peer.spin_until(found, timeout, f"/diagnostics level {level!r} with {text!r}")


def trigger(ros_peer, service: str):
    from std_srvs.srv import Trigger

    client = ros_peer.node.create_client(Trigger, service)
    ros_peer.spin_until(client.service_is_ready, 30, service)
    settled = time.monotonic() + 1.0  # a response sent before the server discovered the client is lost
    ros_peer.spin_until(lambda: time.monotonic() > settled, 5, "service discovery to settle")
    future = client.call_async(Trigger.Request())
    ros_peer.spin_until(future.done, 120, f"the {service} response")
    return future.result()


def transitions_logged(log: str) -> list[str]:
    return [line.split("]: ", 1)[1] for line in log.splitlines() if " -> " in line and "]: planner_" in line]


UP = ["planner_a: configure -> inactive", "planner_b: configure -> inactive",
      "planner_a: activate -> active", "planner_b: activate -> active"]
DOWN = ["planner_b: deactivate -> inactive", "planner_a: deactivate -> inactive",
        "planner_b: cleanup -> unconfigured", "planner_a: cleanup -> unconfigured"]


@pytest.mark.ros
def test_the_manager_brings_nodes_up_in_order_and_deactivates_the_rest_when_one_dies(stack, ros_peer):
    from diagnostic_msgs.msg import DiagnosticStatus

    start, watcher = stack(), Watcher(ros_peer)
    _, planner_b = start("planner_a", "planner_b")
    watcher.wait_for_planners()
    (manager,) = start("lifecycle_manager")
    watcher.reached([("planner_a", INACTIVE), ("planner_b", INACTIVE), ("planner_a", ACTIVE),
                     ("planner_b", ACTIVE)], 120, "autostart to bring both planners up")
    watcher.diagnosed(DiagnosticStatus.OK, "2 nodes active: planner_a, planner_b", 10)  # after its log lines
    assert transitions_logged(manager.log()) == UP, manager.log()

    response = trigger(ros_peer, "lifecycle_manager/shutdown")
    assert response.success, response.message
    watcher.reached([("planner_b", INACTIVE), ("planner_a", INACTIVE), ("planner_b", UNCONFIGURED),
                     ("planner_a", UNCONFIGURED)], 60, "shutdown to bring both planners down")
    response = trigger(ros_peer, "lifecycle_manager/startup")
    assert response.success, response.message
    watcher.reached([("planner_a", INACTIVE), ("planner_b", INACTIVE), ("planner_a", ACTIVE),
                     ("planner_b", ACTIVE)], 60, "startup to bring both planners up again")
    assert transitions_logged(manager.log()) == UP + DOWN + UP, manager.log()

    planner_b.process.kill()  # no goodbye on DDS: the manager finds out when get_state goes unanswered
    watcher.reached([("planner_a", INACTIVE)], 60, "the manager to deactivate planner_a")
    watcher.diagnosed(DiagnosticStatus.ERROR, "no longer active: planner_b: it does not answer", 10)
    assert transitions_logged(manager.log())[-1] == "planner_a: deactivate -> inactive"
    assert manager.poll() is None


@pytest.mark.ros
def test_a_node_that_fails_configure_fails_startup_and_the_configured_one_is_brought_back_down(stack, ros_peer):
    from diagnostic_msgs.msg import DiagnosticStatus

    start, watcher = stack('\n    <param name="stpes" value="2"/>', autostart=False), Watcher(ros_peer)
    _, planner_b = start("planner_a", "planner_b")
    watcher.wait_for_planners()
    (manager,) = start("lifecycle_manager")
    response = trigger(ros_peer, "lifecycle_manager/startup")
    assert not response.success
    assert response.message.startswith("startup failed: planner_b: configure failed"), response.message
    watcher.reached([("planner_a", INACTIVE), ("planner_b", UNCONFIGURED), ("planner_a", UNCONFIGURED)], 30,
                    "planner_b's failed configure and planner_a's cleanup")
    assert transitions_logged(manager.log()) == ["planner_a: configure -> inactive",
                                                 "planner_a: cleanup -> unconfigured"]
    assert "startup failed: planner_b: configure failed" in manager.log()
    assert "unknown parameter(s) 'stpes' (did you mean 'steps'?)" in planner_b.log()
    watcher.diagnosed(DiagnosticStatus.ERROR, "planner_b: configure failed", 10)
    assert manager.poll() is None and planner_b.poll() is None
