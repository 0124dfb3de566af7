"""Start ROS 2 node executables as real processes and stop them reliably.

There is no ``ros2 run`` or ``launch`` in a pip-installed ROS 2, so demos, tests, benchmarks and
``eva replay`` start executables through this module: found with the ament index, given their
own ``ROS_DOMAIN_ID``, kept on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``), logged
to a file, and stopped by PID with escalation (SIGINT, then SIGTERM, then SIGKILL), because an
rclpy process can miss a first SIGINT while it sleeps in a futex.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class ExecutableNotFoundError(FileNotFoundError):
    """A node executable is not in the ament index; the message says how to build it."""


def find_executable(package: str, executable: str) -> Path:
    """Return ``<prefix>/lib/<package>/<executable>`` for an installed ament package."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix  # ROS tooling, imported on use

    try:
        prefix = Path(get_package_prefix(package))
    except PackageNotFoundError as error:
        raise ExecutableNotFoundError(
            f"package {package!r} is not in AMENT_PREFIX_PATH; run `make setup` and "
            "`source scripts/env.sh` first"
        ) from error
    path = prefix / "lib" / package / executable
    if not os.access(path, os.X_OK):
        raise ExecutableNotFoundError(f"executable {executable!r} of package {package!r} not found at {path}")
    return path


def ros_environment(domain_id: int | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment for a child process, with DDS discovery confined to this machine."""
    env = dict(os.environ)
    env.update(extra or {})
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


class NodeProcess:
    """A child process with its output in a log file, stopped with escalation."""

    def __init__(self, command: Sequence[str | os.PathLike], log_path: Path, env: Mapping[str, str]):
        self.command = [str(part) for part in command]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env)
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self.process.poll()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; raises ``subprocess.TimeoutExpired``."""
        return self.process.wait(timeout)

    def log(self) -> str:
        """Everything the process has written so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 5.0) -> int:
        """Stop by PID: SIGINT, wait ``grace`` s, SIGTERM, wait, SIGKILL. Returns the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            self.process.send_signal(sig)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        code = self.process.wait()
        self._log.close()
        return code

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
