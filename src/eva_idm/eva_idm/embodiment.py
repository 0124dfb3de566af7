"""The robot's joint names, limits, gripper mapping and gate defaults, loaded from YAML.

``config/embodiments/<name>.yaml`` is the single source of these numbers. The IDM, the EVA
reward, the plan-to-motion gate and the controller bridge all read them through
:class:`Embodiment`, so they cannot disagree, and a second robot is just another YAML file.

A bare name such as ``"aloha_agilex"`` is looked up as ``embodiments/<name>.yaml`` in each
directory of :func:`config_search_dirs`, in order:

1. ``$EVA_CONFIG_DIR`` when set (e.g. a robot's own config directory);
2. the ``config/`` directory of the workspace this module lives in, found by walking up from
   this file (works from the source tree and from a colcon install space inside the workspace);
3. ``<prefix>/share/eva_idm/config``, the copy a colcon or pip install made.

Anything that looks like a path (has a ``.yaml``/``.yml`` suffix or a directory separator) is
read as that file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import yaml

CONFIG_DIR_ENV = "EVA_CONFIG_DIR"
PER_JOINT_LIMITS = (
    "position_lower",
    "position_upper",
    "position_tolerance",
    "velocity_limit",
    "acceleration_limit",
    "jerk_limit",
)


@dataclass(frozen=True)
class GateDefaults:
    """Default thresholds of the plan-to-motion gate; per-joint tuples follow the joint order.

    Attributes:
        min_reward: lowest EVA reward (0..10) a raw decode may have.
        max_start_offset: largest start offset per joint that is faded out instead of rejected
            (rad; grippers in normalised units).
        start_offset_fade_s: time over which the start offset fades out, in seconds.
        max_smoothing_deviation: largest spline-vs-decode deviation per joint (rad; grippers normalised).
        time_scale: uniform retiming factor in (0, 1]; below 1 plays the plan slower than planned.
        controller_rate_hz: rate at which the executed spline is sampled and checked, in Hz.
    """

    min_reward: float
    max_start_offset: tuple[float, ...]
    start_offset_fade_s: float
    max_smoothing_deviation: tuple[float, ...]
    time_scale: float
    controller_rate_hz: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_reward <= 10.0:
            raise ValueError(f"gate.min_reward: must lie in [0, 10], got {self.min_reward}")
        _require_positive("gate.max_start_offset", self.max_start_offset)
        _require_positive("gate.max_smoothing_deviation", self.max_smoothing_deviation)
        if self.start_offset_fade_s < 0.0:
            raise ValueError(f"gate.start_offset_fade_s: must be >= 0, got {self.start_offset_fade_s}")
        if not 0.0 < self.time_scale <= 1.0:
            raise ValueError(f"gate.time_scale: must lie in (0, 1], got {self.time_scale}")
        if self.controller_rate_hz <= 0.0:
            raise ValueError(f"gate.controller_rate_hz: must be > 0, got {self.controller_rate_hz}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object], joint_count: int) -> GateDefaults:
        """Build from the YAML's ``gate`` mapping; ``joint_count`` sizes the per-joint lists."""
        _check_keys(data, {field.name for field in fields(cls)}, "gate")
        return cls(
            min_reward=_as_float(data["min_reward"], "gate.min_reward"),
            max_start_offset=_as_floats(data["max_start_offset"], "gate.max_start_offset", joint_count),
            start_offset_fade_s=_as_float(data["start_offset_fade_s"], "gate.start_offset_fade_s"),
            max_smoothing_deviation=_as_floats(
                data["max_smoothing_deviation"], "gate.max_smoothing_deviation", joint_count
            ),
            time_scale=_as_float(data["time_scale"], "gate.time_scale"),
            controller_rate_hz=_as_float(data["controller_rate_hz"], "gate.controller_rate_hz"),
        )


@dataclass(frozen=True)
class Embodiment:
    """A validated, immutable description of one robot; per-joint tuples follow ``joint_names``.

    Arm joints are in rad (rad/s, rad/s^2, rad/s^3); grippers are normalised 0 (closed) .. 1 (open).

    Attributes:
        name: embodiment id, recorded in checkpoints.
        joint_names: order of the joint vector (the IDM's output order).
        arms: ``(arm name, joint count)`` pairs; each arm owns that many consecutive joints.
        gripper_joints: names of the joints that are grippers.
        position_lower, position_upper: position limits at the mechanical stops.
        position_tolerance: band beyond each stop that still passes the position check.
        velocity_limit, acceleration_limit, jerk_limit: magnitude limits per joint.
        gripper_closed_m, gripper_open_m: finger travel in metres at normalised 0 and 1.
        gate: default thresholds of the plan-to-motion gate.
    """

    name: str
    joint_names: tuple[str, ...]
    arms: tuple[tuple[str, int], ...]
    gripper_joints: tuple[str, ...]
    position_lower: tuple[float, ...]
    position_upper: tuple[float, ...]
    position_tolerance: tuple[float, ...]
    velocity_limit: tuple[float, ...]
    acceleration_limit: tuple[float, ...]
    jerk_limit: tuple[float, ...]
    gripper_closed_m: float
    gripper_open_m: float
    gate: GateDefaults

    def __post_init__(self) -> None:
        self._check_names()
        for field_name in PER_JOINT_LIMITS:
            _require_length(field_name, getattr(self, field_name), self.num_joints)
        _require_length("gate.max_start_offset", self.gate.max_start_offset, self.num_joints)
        _require_length("gate.max_smoothing_deviation", self.gate.max_smoothing_deviation, self.num_joints)
        for index, (lower, upper) in enumerate(zip(self.position_lower, self.position_upper, strict=True)):
            if not lower < upper:
                raise ValueError(
                    f"position_lower/position_upper: joint {self.joint_names[index]} needs lower < upper, "
                    f"got lower={lower}, upper={upper}"
                )
        if any(tolerance < 0.0 for tolerance in self.position_tolerance):
            raise ValueError(f"position_tolerance: must be >= 0, got {list(self.position_tolerance)}")
        for field_name in ("velocity_limit", "acceleration_limit", "jerk_limit"):
            _require_positive(field_name, getattr(self, field_name))
        if not 0.0 <= self.gripper_closed_m < self.gripper_open_m:
            raise ValueError(
                "gripper_closed_m/gripper_open_m: need 0 <= closed < open, "
                f"got closed={self.gripper_closed_m}, open={self.gripper_open_m}"
            )

    def _check_names(self) -> None:
        if not self.name:
            raise ValueError(f"name: must be a non-empty string, got {self.name!r}")
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"joint_names: must be non-empty and unique, got {list(self.joint_names)}")
        arm_names = [arm for arm, _ in self.arms]
        arm_sizes = [size for _, size in self.arms]
        sizes_ok = all(size > 0 for size in arm_sizes) and sum(arm_sizes) == self.num_joints
        if len(set(arm_names)) != len(arm_names) or not sizes_ok:
            raise ValueError(
                f"arms: need unique arm names with positive joint counts adding up to {self.num_joints}, "
                f"got {list(self.arms)}"
            )
        unknown = [name for name in self.gripper_joints if name not in self.joint_names]
        if unknown or len(set(self.gripper_joints)) != len(self.gripper_joints):
            raise ValueError(f"gripper_joints: must be unique names from joint_names, got {list(self.gripper_joints)}")

    @property
    def num_joints(self) -> int:
        """Width of the joint vector (14 for aloha-agilex)."""
        return len(self.joint_names)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Embodiment:
        """Build from a parsed YAML mapping; unknown or missing keys are an error, not a default."""
        _check_keys(data, {field.name for field in fields(cls)}, "embodiment")
        joint_names = _as_names(data["joint_names"], "joint_names")
        count = len(joint_names)
        arms = data["arms"]
        if not isinstance(arms, Mapping) or not arms:
            raise ValueError(f"arms: expected a mapping of arm name to joint count, got {arms!r}")
        gate = data["gate"]
        if not isinstance(gate, Mapping):
            raise ValueError(f"gate: expected a mapping, got {gate!r}")
        return cls(
            name=_as_name(data["name"], "name"),
            joint_names=joint_names,
            arms=tuple((_as_name(arm, "arms"), _as_count(size, f"arms.{arm}")) for arm, size in arms.items()),
            gripper_joints=_as_names(data["gripper_joints"], "gripper_joints"),
            **{field_name: _as_floats(data[field_name], field_name, count) for field_name in PER_JOINT_LIMITS},
            gripper_closed_m=_as_float(data["gripper_closed_m"], "gripper_closed_m"),
            gripper_open_m=_as_float(data["gripper_open_m"], "gripper_open_m"),
            gate=GateDefaults.from_dict(gate, count),
        )

    def per_joint(self, field_name: str) -> np.ndarray:
        """One of :data:`PER_JOINT_LIMITS` as a fresh float64 array of shape ``(num_joints,)``."""
        if field_name not in PER_JOINT_LIMITS:
            raise ValueError(f"field_name: expected one of {PER_JOINT_LIMITS}, got {field_name!r}")
        return np.array(getattr(self, field_name), dtype=np.float64)

    def gripper_mask(self) -> np.ndarray:
        """Boolean array, true at the gripper joints."""
        return np.array([name in self.gripper_joints for name in self.joint_names])

    def position_bounds(self, with_tolerance: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` position limits, widened by the tolerance band unless told otherwise."""
        band = self.per_joint("position_tolerance") if with_tolerance else 0.0
        return self.per_joint("position_lower") - band, self.per_joint("position_upper") + band

    def arm_slices(self) -> dict[str, slice]:
        """Arm name -> slice of the joint vector it owns, e.g. ``{"left": slice(0, 7), ...}``."""
        slices, start = {}, 0
        for arm, size in self.arms:
            slices[arm] = slice(start, start + size)
            start += size
        return slices

    def gripper_to_metres(self, normalised: np.ndarray | float) -> np.ndarray | float:
        """Normalised gripper opening (0 closed .. 1 open) -> finger travel in metres."""
        return self.gripper_closed_m + np.asarray(normalised) * (self.gripper_open_m - self.gripper_closed_m)

    def gripper_from_metres(self, metres: np.ndarray | float) -> np.ndarray | float:
        """Finger travel in metres -> normalised gripper opening (0 closed .. 1 open)."""
        return (np.asarray(metres) - self.gripper_closed_m) / (self.gripper_open_m - self.gripper_closed_m)


def config_search_dirs() -> list[Path]:
    """Directories searched for ``embodiments/<name>.yaml``, most specific first."""
    directories = []
    if os.environ.get(CONFIG_DIR_ENV):
        directories.append(Path(os.environ[CONFIG_DIR_ENV]))
    for parent in Path(__file__).resolve().parents:
        if (parent / "config" / "embodiments").is_dir():
            directories.append(parent / "config")
            break
    # <prefix>/lib/pythonX.Y/site-packages/eva_idm/embodiment.py -> <prefix>/share/eva_idm/config,
    # where colcon and pip installs put their copy.
    directories.append(Path(__file__).resolve().parents[4] / "share" / "eva_idm" / "config")
    return directories


def resolve_embodiment_path(path_or_name: str | os.PathLike[str]) -> Path:
    """Find the YAML file meant by a path or a bare embodiment name (see the module docstring)."""
    text = os.fspath(path_or_name)
    looks_like_path = Path(text).suffix in {".yaml", ".yml"} or "/" in text or os.sep in text
    if isinstance(path_or_name, os.PathLike) or looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"embodiment file {path} does not exist")
        return path
    candidates = [directory / "embodiments" / f"{text}.yaml" for directory in config_search_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(candidate) for candidate in candidates) or "no config directory found"
    raise FileNotFoundError(
        f"embodiment {text!r}: not found (searched: {searched}); set {CONFIG_DIR_ENV} or pass a YAML path"
    )


def load_embodiment(path_or_name: str | os.PathLike[str]) -> Embodiment:
    """Load and validate an embodiment from a YAML path or a bare name such as ``"aloha_agilex"``.

    Raises:
        FileNotFoundError: the file or name cannot be found.
        ValueError: the YAML is malformed or a field is invalid; the message names the file and field.
    """
    path = resolve_embodiment_path(path_or_name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Embodiment.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _check_keys(data: Mapping[str, object], expected: set[str], where: str) -> None:
    unknown = sorted(set(data) - expected)
    missing = sorted(expected - set(data))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected {sorted(expected)}")
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")


def _as_float(value: object, field_name: str) -> float:
    # bool is an int subclass; "true" as a limit is a typo, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field_name}: expected a finite number, got {value!r}")
    return float(value)


def _as_floats(value: object, field_name: str, length: int) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{field_name}: expected a list of {length} numbers, got {value!r}")
    _require_length(field_name, value, length)
    return tuple(_as_float(item, f"{field_name}[{index}]") for index, item in enumerate(value))


def _as_name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field_name}: expected a non-empty string, got {value!r}")
    return value


def _as_names(value: object, field_name: str) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{field_name}: expected a list of names, got {value!r}")
    return tuple(_as_name(item, f"{field_name}[{index}]") for index, item in enumerate(value))


def _as_count(value: object, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field_name}: expected a whole number of joints, got {value!r}")
    return value


def _require_length(field_name: str, values: Sequence[object], length: int) -> None:
    if len(values) != length:
        raise ValueError(f"{field_name}: expected {length} values (one per joint), got {len(values)}: {list(values)}")


def _require_positive(field_name: str, values: Sequence[float]) -> None:
    if any(value <= 0.0 for value in values):
        raise ValueError(f"{field_name}: every value must be > 0, got {list(values)}")
