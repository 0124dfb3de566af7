"""The simulated robot's settings as one validated, frozen dataclass, and the robot built from them, without ROS.

``config/sim_robot.yaml`` -> declared ROS parameters -> :class:`SimRobotConfig` -> :func:`build_sim_robot`
(see :mod:`eva_idm.node_parameters`): an unknown or misspelt parameter is an error, not a default.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from eva_idm.controllers import load_controllers
from eva_idm.embodiment import load_embodiment
from eva_idm.node_parameters import check_types, setting
from eva_sim.follower import SimulatedRobot

# Controllers of each layout in config/aloha_controllers.yaml (DESIGN.md §3).
LAYOUT_CONTROLLERS = {"split": ("left_arm_controller", "right_arm_controller"), "combined": ("bimanual_controller",)}
# Where the synthetic episodes' arms start at home (eva_sim.motions): joints at 0, grippers open.
HOME_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class SimRobotConfig:
    """Everything ``sim_robot`` reads at start; the defaults are the demo's."""

    embodiment: str = setting("aloha_agilex", "embodiment name or YAML path: joint names, limits, gripper mapping")
    controllers_file: str = setting("config/aloha_controllers.yaml", "ros2_control controller YAML (controllers, "
                                    "update rate, cmd_timeout); relative paths are taken from the working directory")
    controller_layout: str = setting("split", "split (left_arm_controller + right_arm_controller) or combined "
                                     "(bimanual_controller)")
    initial_positions: tuple[float, ...] = setting(HOME_POSE, "joint positions at start, embodiment order "
                                                   "[rad; grippers normalised 0..1]")
    camera_height: int = setting(480, "head camera image height [px]")
    camera_width: int = setting(640, "head camera image width [px]")
    camera_rate: float = setting(10.0, "head camera frame rate [Hz of wall time x real_time_factor]; 0 = no camera")
    joint_state_rate: float = setting(50.0, "joint_states rate [Hz of sim time]; at most the controllers' update_rate")
    tracking_time_constant: float = setting(0.05, "first-order lag of measured behind commanded positions [s]; "
                                            "0 = perfect tracking")
    real_time_factor: float = setting(1.0, "sim seconds per wall second [dimensionless]")
    clock_start: float = setting(1000.0, "sim time at start [s]; > 0, since a zero stamp means 'now' to JTC")
    gripper_in_metres: bool = setting(False, "gripper values in commands are finger travel in metres instead of "
                                      "normalised 0..1 [bool]")

    def __post_init__(self) -> None:
        check_types(self)
        if self.controller_layout not in LAYOUT_CONTROLLERS:
            raise ValueError(f"controller_layout: expected one of {list(LAYOUT_CONTROLLERS)}, "
                             f"got {self.controller_layout!r}")
        for name in ("embodiment", "controllers_file"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")
        for name in ("camera_height", "camera_width"):
            if not 16 <= getattr(self, name) <= 4096:
                raise ValueError(f"{name}: must be a whole number of pixels in [16, 4096], got {getattr(self, name)}")
        positive = ("joint_state_rate", "real_time_factor", "clock_start")
        non_negative = ("camera_rate", "tracking_time_constant")
        for name in positive + non_negative:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0.0 or (name in positive and value == 0.0):
                raise ValueError(f"{name}: must be a finite number {'> 0' if name in positive else '>= 0'}, "
                                 f"got {value}")
        if not all(math.isfinite(value) for value in self.initial_positions):
            raise ValueError(f"initial_positions: must be finite, got {list(self.initial_positions)}")

    @property
    def controller_names(self) -> tuple[str, ...]:
        """The controllers of :attr:`controller_layout`."""
        return LAYOUT_CONTROLLERS[self.controller_layout]


def build_sim_robot(config: SimRobotConfig, now: float) -> SimulatedRobot:
    """Load the embodiment and the controllers and stand the robot at ``initial_positions`` at time ``now``.

    Raises:
        ValueError: naming the parameter at fault (initial positions of the wrong length or outside
            the position limits, a joint_state_rate above the update rate); also
            :class:`~eva_idm.controllers.ControllerConfigError` and FileNotFoundError.
    """
    embodiment = load_embodiment(config.embodiment)
    controllers = load_controllers(Path(config.controllers_file), config.controller_names)
    initial = config.initial_positions
    if len(initial) != embodiment.num_joints:
        raise ValueError(f"initial_positions: expected {embodiment.num_joints} values in the order "
                         f"{list(embodiment.joint_names)}, got {len(initial)}")
    lower, upper = embodiment.position_bounds(with_tolerance=False)
    for name, value, low, high in zip(embodiment.joint_names, initial, lower, upper, strict=True):
        if not low <= value <= high:
            raise ValueError(f"initial_positions: {name} = {value} is outside its position limits [{low}, {high}]")
    robot = SimulatedRobot(embodiment, controllers, initial, config.tracking_time_constant, now,
                           config.gripper_in_metres)
    if config.joint_state_rate > robot.update_rate_hz:
        raise ValueError(f"joint_state_rate: {config.joint_state_rate} Hz is above the controllers' update_rate "
                         f"{robot.update_rate_hz} Hz (joint states are published on controller ticks)")
    return robot
