"""The body of every node executable: start one node, spin it until Ctrl-C or shutdown, clean up."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from eva_idm.ros.executor import PatientMultiThreadedExecutor


def run_node(name: str, make_node: Callable[[], Node], num_threads: int, args: list[str] | None = None) -> int:
    """Run the node ``make_node()`` builds on an executor with ``num_threads`` threads; the exit code.

    A node that cannot start (bad parameters, missing files: ``make_node`` raises) is reported
    with the reason under ``name`` and gives exit code 1, so a launch system sees the failure.
    """
    rclpy.init(args=args)
    try:
        node = make_node()
    except Exception as error:  # noqa: BLE001 (any start failure is reported with its reason)
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor() if num_threads == 1 else PatientMultiThreadedExecutor(num_threads)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
