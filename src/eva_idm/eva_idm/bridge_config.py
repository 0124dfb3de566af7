"""The controller bridge's settings, and the embodiment and controllers they name, without ROS.

``config/controller_bridge.yaml`` -> declared ROS parameters -> :class:`BridgeConfig` (frozen,
validated) -> :func:`load_bridge_setup` -> the embodiment and the JointTrajectoryControllers the
bridge commands. Anything wrong here fails the node's configure transition with a message naming
the parameter or the file and key: a bridge that cannot check plans must not start.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from eva_idm.controllers import LAYOUTS, TrajectoryController, load_controllers
from eva_idm.embodiment import Embodiment, config_search_dirs, load_embodiment
from eva_idm.node_parameters import check_types, setting

# The combined layout's one 14-joint controller; the split layout has one "<arm>_arm_controller" per
# arm of the embodiment (left_arm_controller, right_arm_controller), each with its gripper.
COMBINED_CONTROLLER = "bimanual_controller"
YAML_HINT = "config/controller_bridge.yaml"
INTERFACES = ("topic", "action")


@dataclass(frozen=True)
class BridgeConfig:
    """Everything ``controller_bridge`` reads on configure; the defaults are the real robot's.

    Tolerances on arm joints are in rad; the ``gripper_*`` ones in normalised gripper units (0..1),
    because a gripper closing on an object stops short of its command by design.
    """

    embodiment: str = setting("aloha_agilex", "embodiment name or YAML path: joint names and limits")
    controllers_file: str = setting("aloha_controllers.yaml", "ros2_control controller-manager YAML: a path, or a "
                                    "file name looked up in the config directories")
    controller_interface: str = setting("topic", "topic (<controller>/joint_trajectory) or action "
                                        "(<controller>/follow_joint_trajectory, control_msgs/FollowJointTrajectory)")
    controller_layout: str = setting("split", "split (left_arm_controller + right_arm_controller) or combined "
                                     "(bimanual_controller)")
    start_delay: float = setting(0.5, "the commands' common start stamp lies this far after sending; covers "
                                 "delivering the largest plan (max_points) [s]")
    stop_lead: float = setting(0.05, "a stop's start stamp lies this far after sending; it starts from the state "
                               "commanded then [s]")
    stop_hold: float = setting(1.0, "a stop holds its final pose this long after braking, so that it still lies "
                               "ahead of the controller when delivery is late [s]")
    estop_heartbeat_timeout: float = setting(0.0, "when > 0, this long without any eva/estop message latches "
                                             "the e-stop (a dead e-stop source fails safe); 0 = off [s]")
    start_tolerance: float = setting(0.01, "largest |trajectory point 0 - measured pose| per joint [rad]")
    moved_tolerance: float = setting(0.01, "largest |joint_state_at_image - measured pose| per joint [rad]")
    max_image_age: float = setting(600.0, "oldest plan image (node clock now - plan header stamp) executed [s]")
    max_joint_state_age: float = setting(0.5, "oldest joint_states (node clock now - its stamp) trusted [s]")
    clock_tolerance: float = setting(0.1, "how far a stamp may lie ahead of the node clock [s]")
    joint_state_margin: float = setting(0.1, "measured positions beyond the limits (tolerance band included) by "
                                        "more than this are implausible [rad]")
    standstill_velocity: float = setting(0.01, "|joint velocity| below which a joint counts as still [rad/s]")
    standstill_window: float = setting(0.5, "how long every joint must be still before a plan starts [s]")
    standstill_timeout: float = setting(5.0, "an accepted plan whose robot is not still by then is rejected [s]")
    tracking_tolerance: float = setting(0.15, "largest |measured - commanded| of an arm joint while executing [rad]")
    gripper_tracking_tolerance: float = setting(0.5, "largest |measured - commanded| of a gripper while executing "
                                                "[normalised 0..1]")
    goal_tolerance: float = setting(0.02, "largest |measured - final point| of an arm joint to succeed [rad]")
    gripper_goal_tolerance: float = setting(0.5, "largest |measured - final point| of a gripper to succeed "
                                            "[normalised 0..1]")
    settle_time: float = setting(0.2, "time after the trajectory's end before the goal is checked [s]")
    gripper_in_metres: bool = setting(False, "command grippers in metres of finger travel instead of 0..1 "
                                      "(joint_states stay normalised, as the topic contract says)")
    max_duration: float = setting(120.0, "longest trajectory accepted [s]")
    max_points: int = setting(2000, "most trajectory points accepted; bounds a command's size (2,000 points: "
                              "300 kB per arm) so that it reaches the controllers within start_delay [points]")
    monitor_rate: float = setting(50.0, "rate of the standstill, tracking, freshness and goal checks [Hz]")
    status_rate: float = setting(5.0, "rate of EXECUTING progress updates on eva/execution_status [Hz]")
    diagnostics_period: float = setting(1.0, "period of the /diagnostics status [s]")

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("embodiment", "controllers_file"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")
        if self.controller_interface not in INTERFACES:
            raise ValueError(f"controller_interface: expected one of {list(INTERFACES)}, got "
                             f"{self.controller_interface!r}")
        if self.controller_layout not in LAYOUTS:
            raise ValueError(f"controller_layout: expected one of {list(LAYOUTS)}, got {self.controller_layout!r}")
        positive = ("start_delay", "stop_lead", "stop_hold", "start_tolerance", "moved_tolerance", "max_image_age",
                    "max_joint_state_age",
                    "standstill_velocity", "standstill_timeout", "tracking_tolerance", "gripper_tracking_tolerance",
                    "goal_tolerance", "gripper_goal_tolerance", "max_duration", "monitor_rate", "status_rate",
                    "diagnostics_period")
        for name in positive:  # 0 would disable a check or a timer: not a setting, a hole
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value}")
        for name in ("clock_tolerance", "joint_state_margin", "standstill_window", "settle_time",
                     "estop_heartbeat_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
        if self.max_points < 2:
            raise ValueError(f"max_points: a rest-to-rest motion needs at least 2 points, got {self.max_points}")

    def controller_names(self, embodiment: Embodiment) -> tuple[str, ...]:
        """The controllers of the layout: one per arm (split) or :data:`COMBINED_CONTROLLER`."""
        if self.controller_layout == "combined":
            return (COMBINED_CONTROLLER,)
        return tuple(f"{arm}_arm_controller" for arm, _ in embodiment.arms)


def resolve_config_file(name: str | os.PathLike[str]) -> Path:
    """``name`` as given when that file exists, else ``<config dir>/<name>`` in :func:`config_search_dirs`.

    Raises:
        FileNotFoundError: naming every place looked at.
    """
    path = Path(name)
    if path.is_file():
        return path
    candidates = [] if path.is_absolute() else [directory / path for directory in config_search_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(place) for place in [path, *candidates])
    raise FileNotFoundError(f"controllers_file: {os.fspath(name)!r} not found (looked at {searched})")


def load_bridge_setup(config: BridgeConfig) -> tuple[Embodiment, tuple[TrajectoryController, ...]]:
    """The embodiment and the layout's controllers; every embodiment joint commanded exactly once.

    Raises:
        FileNotFoundError, ValueError (ControllerConfigError included): naming the file and key.
    """
    embodiment = load_embodiment(config.embodiment)
    path = resolve_config_file(config.controllers_file)
    controllers = load_controllers(path, config.controller_names(embodiment))
    commanded = [joint for controller in controllers for joint in controller.joints]
    unknown = [joint for joint in commanded if joint not in embodiment.joint_names]
    missing = [joint for joint in embodiment.joint_names if joint not in commanded]
    if unknown or missing:
        raise ValueError(f"{path}: the {config.controller_layout} layout's controllers must command exactly the "
                         f"joints of embodiment {embodiment.name}; unknown {unknown}, uncommanded {missing}")
    if config.controller_layout == "split":
        for (arm, _), controller in zip(embodiment.arms, controllers, strict=True):
            arm_joints = set(embodiment.joint_names[embodiment.arm_slices()[arm]])
            if set(controller.joints) != arm_joints:
                raise ValueError(f"{path}: {controller.name} must command the {arm} arm's joints "
                                 f"{sorted(arm_joints)}, got {list(controller.joints)}")
    return embodiment, controllers
