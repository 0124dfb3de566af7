"""The robot's ros2_control controller configuration, as far as the bridge and the sim rely on it.

The controller bridge and the simulated robot read the same controller-manager YAML the real
robot runs (``config/aloha_controllers.yaml``): which JointTrajectoryControllers exist, which
joints each commands, the update rate, and the two timeouts whose relation JTC does not enforce:
JTC silently disables ``cmd_timeout`` unless ``cmd_timeout > constraints.goal_time``, so a
configuration without ``cmd_timeout > goal_time > 0`` is refused here (DESIGN.md §3).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

JTC_TYPE = "joint_trajectory_controller/JointTrajectoryController"
LAYOUTS = ("split", "combined")


class ControllerConfigError(ValueError):
    """The controller configuration is missing, malformed or unsafe; the message names the key."""


@dataclass(frozen=True)
class TrajectoryController:
    """One JointTrajectoryController: its name (topic ``<name>/joint_trajectory``) and its settings.

    Attributes:
        name: controller name.
        joints: joints it commands, in command order.
        update_rate_hz: the controller manager's update rate.
        cmd_timeout: seconds after the end of a trajectory before the command counts as stale.
        goal_time: tolerance on the trajectory's end time, seconds.
    """

    name: str
    joints: tuple[str, ...]
    update_rate_hz: float
    cmd_timeout: float
    goal_time: float

    @property
    def topic(self) -> str:
        """The controller's topic interface (relative, so namespaces apply)."""
        return f"{self.name}/joint_trajectory"


def load_controllers(path: str | os.PathLike[str], names: Sequence[str]) -> tuple[TrajectoryController, ...]:
    """Read the controllers ``names`` from a controller-manager YAML and check them.

    Raises:
        ControllerConfigError: naming the file, the controller and the key at fault; also when
            ``cmd_timeout > goal_time > 0`` does not hold or two controllers share a joint.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ControllerConfigError(f"{path}: cannot read the controller configuration: {error}") from None
    if not isinstance(document, Mapping):
        raise ControllerConfigError(f"{path}: expected a mapping of node names to ros__parameters")
    manager = _parameters(document, "controller_manager", path)
    rate = _number(manager, "update_rate", f"{path}: controller_manager")
    controllers = tuple(_controller(document, name, rate, path) for name in names)
    seen: dict[str, str] = {}
    for controller in controllers:
        for joint in controller.joints:
            if joint in seen:
                raise ControllerConfigError(f"{path}: joint {joint!r} is commanded by both {seen[joint]!r} "
                                            f"and {controller.name!r}")
            seen[joint] = controller.name
    return controllers


def _controller(document: Mapping, name: str, rate: float, path: Path) -> TrajectoryController:
    where = f"{path}: {name}"
    declared = _parameters(document, "controller_manager", path).get(name)
    if not isinstance(declared, Mapping) or declared.get("type") != JTC_TYPE:
        raise ControllerConfigError(f"{where}: controller_manager must declare it with type {JTC_TYPE!r}, "
                                    f"got {declared!r}")
    parameters = _parameters(document, name, path)
    joints = parameters.get("joints")
    if not (isinstance(joints, list) and joints and all(isinstance(joint, str) and joint for joint in joints)):
        raise ControllerConfigError(f"{where}: joints must be a non-empty list of names, got {joints!r}")
    if len(set(joints)) != len(joints):
        raise ControllerConfigError(f"{where}: joints must be unique, got {joints}")
    constraints = parameters.get("constraints")
    if not isinstance(constraints, Mapping):
        raise ControllerConfigError(f"{where}: constraints.goal_time is required (JTC ignores cmd_timeout "
                                    "unless cmd_timeout > goal_time)")
    cmd_timeout = _number(parameters, "cmd_timeout", where)
    goal_time = _number(constraints, "goal_time", f"{where}: constraints")
    if not cmd_timeout > goal_time > 0.0:
        raise ControllerConfigError(
            f"{where}: needs cmd_timeout > constraints.goal_time > 0, got cmd_timeout={cmd_timeout} and "
            f"goal_time={goal_time} (JTC silently disables cmd_timeout otherwise; a stale command would run on)"
        )
    return TrajectoryController(name, tuple(joints), rate, cmd_timeout, goal_time)


def _parameters(document: Mapping, node: str, path: Path) -> Mapping:
    section = document.get(node)
    parameters = section.get("ros__parameters") if isinstance(section, Mapping) else None
    if not isinstance(parameters, Mapping):
        raise ControllerConfigError(f"{path}: no '{node}: ros__parameters:' section")
    return parameters


def _number(mapping: Mapping, key: str, where: str) -> float:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ControllerConfigError(f"{where}: {key} must be a finite number > 0, got {value!r}")
    return float(value)
