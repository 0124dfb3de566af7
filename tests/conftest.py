"""Shared fixtures: a free ROS_DOMAIN_ID per test, real node processes, an rclpy peer.

Nothing here mocks ROS: processes talk over real Fast DDS, confined to this machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eva_sim.processes import NodeProcess, find_executable, ros_environment


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run outside the workspace environment: DDS must stay on this machine."""
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
        raise pytest.UsageError("run the tests through `make test` (or `source scripts/env.sh` first)")


@pytest.fixture
def ros_domain() -> Iterator[int]:
    """A ROS_DOMAIN_ID no other test run on this machine is using."""
    from domain_coordinator import domain_id

    with domain_id() as free_id:
        yield free_id


@pytest.fixture
def start_node(ros_domain: int, tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start ``package``'s ``executable`` with arguments; every process is stopped at teardown."""
    started: list[NodeProcess] = []

    def start(package: str, executable: str, *arguments: str) -> NodeProcess:
        log = tmp_path / f"{executable}-{len(started)}.log"
        process = NodeProcess([find_executable(package, executable), *arguments], log, ros_environment(ros_domain))
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


class RosPeer:
    """An rclpy node in the test process, in its own context on the test's domain."""

    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = Node("test_peer", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until ``predicate()`` holds; fail the test naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


class LifecycleClient:
    """A lifecycle node's change_state/get_state services, ready for calls.

    Discovery settles ~1 s after the services appear before the first call: a response sent
    right after discovery can be lost (a known DDS race).
    """

    def __init__(self, ros_peer: RosPeer, node_name: str):
        from lifecycle_msgs.srv import ChangeState, GetState

        self.peer = ros_peer
        self.change = ros_peer.node.create_client(ChangeState, f"{node_name}/change_state")
        self.get = ros_peer.node.create_client(GetState, f"{node_name}/get_state")
        ros_peer.spin_until(lambda: self.change.service_is_ready() and self.get.service_is_ready(), 60,
                            f"the {node_name} lifecycle services")
        settled = time.monotonic() + 1.0
        ros_peer.spin_until(lambda: time.monotonic() > settled, 5, "service discovery to settle")

    def transition(self, transition_id: int) -> bool:
        """Request a transition; whether it succeeded."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        future = self.change.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        self.peer.spin_until(future.done, 60, f"lifecycle transition {transition_id}")
        return future.result().success

    def state(self) -> str:
        """The label of the current state, e.g. ``active``."""
        from lifecycle_msgs.srv import GetState

        future = self.get.call_async(GetState.Request())
        self.peer.spin_until(future.done, 30, "the lifecycle state")
        return future.result().current_state.label


@pytest.fixture
def ros_peer(ros_domain: int) -> Iterator[RosPeer]:
    """A real rclpy node in the test process, on the same domain as ``start_node``'s processes."""
    peer = RosPeer(ros_domain)
    yield peer
    peer.close()
