"""PatientMultiThreadedExecutor: callbacks run as with rclpy's executor, without spinning for busy workers."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.ros


@pytest.fixture
def node(ros_domain):
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    node = rclpy.create_node("executor_probe", context=context)
    yield node
    node.destroy_node()
    context.try_shutdown()


def test_while_every_worker_is_busy_the_main_thread_waits_and_every_callback_still_runs(node):
    from rclpy.callback_groups import ReentrantCallbackGroup

    from eva_idm.ros.executor import PatientMultiThreadedExecutor

    release, ran = threading.Event(), []

    def blocking() -> None:
        ran.append("blocking")
        release.wait(10)

    group = ReentrantCallbackGroup()
    blockers = [node.create_timer(0.01, blocking, callback_group=group) for _ in range(2)]
    executor = PatientMultiThreadedExecutor(2, context=node.context)
    executor.add_node(node)
    deadline = time.monotonic() + 10
    while len(ran) < 2 and time.monotonic() < deadline:  # both workers now wait in a callback
        executor.spin_once(timeout_sec=0.05)
    for timer in blockers:
        node.destroy_timer(timer)
    node.create_timer(0.01, lambda: ran.append("waiting"), callback_group=group)  # ready, but no free worker

    spin_started, cpu_started = time.monotonic(), time.thread_time()
    while time.monotonic() - spin_started < 1.0:
        executor.spin_once(timeout_sec=0.05)
    main_thread_cpu = time.thread_time() - cpu_started
    pending = len(executor._futures)
    release.set()
    deadline = time.monotonic() + 10
    while "waiting" not in ran and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()

    assert ran[:2] == ["blocking", "blocking"] and "waiting" in ran
    assert main_thread_cpu < 0.3, f"the main thread spun for busy workers: {main_thread_cpu:.2f} s of CPU in 1 s"
    # rclpy's executor submits the waiting task again on every pass (20 times here, thousands a second
    # on a busy node, each pass walking the whole list); this one keeps it once.
    assert pending <= 3, f"{pending} pending submissions for 3 callbacks"
