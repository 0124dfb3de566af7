"""The core modules import without ROS, so training servers need no ROS and cannot drift."""

from __future__ import annotations

import subprocess
import sys

CORE_PACKAGES = ["eva_idm", "eva_planner", "eva_sim", "eva_training"]

# Imports every module of the core packages except their ``ros`` layers, then reports which
# ROS modules got loaded as a side effect.
PROBE = """
import importlib, pkgutil, sys
for package_name in {packages}:
    package = importlib.import_module(package_name)
    for module in pkgutil.walk_packages(package.__path__, package_name + "."):
        if ".ros" not in module.name:
            importlib.import_module(module.name)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("rclpy", "eva_msgs", "rosidl_runtime_py"))
print(loaded)
"""


def test_core_modules_import_without_loading_rclpy_or_messages():
    result = subprocess.run([sys.executable, "-c", PROBE.format(packages=CORE_PACKAGES)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_ros_layer_does_load_rclpy():
    """Guards the probe above: it must be able to see rclpy when it is imported."""
    probe = "import sys, eva_sim.ros.transport_probe; print('rclpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "True", result.stderr
