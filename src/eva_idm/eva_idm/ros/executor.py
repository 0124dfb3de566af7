"""A ``MultiThreadedExecutor`` that waits for its worker threads instead of spinning for them.

rclpy's ``MultiThreadedExecutor`` (Jazzy) yields a callback's task again on every pass of its loop
until a worker thread has started it, and submits it to the pool again each time. A worker needs
the GIL to start, and the spinning main thread holds it: on a loaded machine the loop burns a core
and starves the very callbacks it dispatched (measured here with py-spy: the bridge's main thread
at 100 % CPU in that loop, plans judged several times slower, and planner stages stalled for
seconds). This executor submits a task once; while a task waits for a worker, the main thread
sleeps for a millisecond so that the workers get the GIL. Tasks that have started and suspended
(coroutines awaiting a future) are resumed exactly as rclpy resumes them.

It overrides rclpy's private ``_spin_once_impl`` (rclpy as pinned in requirements/constraints.txt);
tests/test_executor.py checks the behaviour, so an rclpy that changes the method fails there first.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rclpy.context import Context
from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)
from rclpy.task import Task

WORKER_WAIT_S = 0.001  # the main thread's pause while a submitted task waits for a worker thread


class PatientMultiThreadedExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` without its busy loop while tasks wait for a worker (see the module docstring)."""

    def __init__(self, num_threads: int, context: Context | None = None):
        super().__init__(num_threads=num_threads, context=context)
        self._not_started: set[Task] = set()

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        if handler in self._not_started:  # submitted already: give the workers the GIL to start it
            time.sleep(WORKER_WAIT_S)
            return
        self._not_started.add(handler)
        self._executor.submit(self._start, handler)
        self._futures.append(handler)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exception of the callback, as rclpy does

    def _start(self, task: Task) -> None:
        self._not_started.discard(task)
        task()
