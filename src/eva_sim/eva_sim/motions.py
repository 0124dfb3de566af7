"""Smooth random bimanual motions that respect the embodiment's limits: ground truth for synthetic data.

Each arm moves independently: minimum-jerk moves between random target poses, still holds, and
gripper open/close toggles while the arm is still. Every segment starts and ends at rest, so
the whole motion is twice continuously differentiable.

Ground truth must pass the same executability gate as decoded plans, so every segment's
duration comes from the limits: a minimum-jerk move of amplitude ``d`` over ``T`` seconds peaks
at velocity ``1.875 d / T``, acceleration ``5.77 d / T^2`` and jerk ``60 d / T^3``; ``T`` is the
smallest duration keeping every joint under its limits, times a safety margin.

Target poses come from rejection sampling inside a joint box that lies within the position
limits; a :class:`PoseValidator` (the MuJoCo scene) adds cheap geometric checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from eva_idm.embodiment import Embodiment

# RoboTwin takes a frame every 15 steps of 1/250 s.
ROBOTWIN_FRAME_INTERVAL_S = 0.06
# Peak |velocity|, |acceleration| and |jerk| of the unit minimum-jerk profile over unit time.
MIN_JERK_PEAK_VELOCITY = 1.875
MIN_JERK_PEAK_ACCELERATION = 10.0 / math.sqrt(3.0)
MIN_JERK_PEAK_JERK = 60.0


class PoseValidator(Protocol):
    """Geometric checks of poses; :class:`eva_sim.scene.AgilexScene` implements them with MuJoCo."""

    def pose_is_valid(self, arm: str, arm_joints: np.ndarray) -> bool:
        """Whether ``arm`` at ``arm_joints`` (its slice of the joint vector) is a good target pose."""

    def path_is_clear(self, joints: np.ndarray) -> bool:
        """Whether the full joint vector is a safe pose on the way between targets."""


@dataclass(frozen=True)
class MotionConfig:
    """How random motions are drawn.

    Attributes:
        home_probability: chance that an arm starts at home (all zeros, gripper open).
        sample_lower, sample_upper: box of the arm joints (gripper excluded) that target poses
            are drawn from, rad; must lie within the embodiment's position limits.
        limit_margin: factor (> 1) on every segment's shortest duration allowed by the limits.
        slowdown: range of a random extra factor on each move's duration, for varied speeds.
        min_move_s: shortest arm move, s.
        min_gripper_s: shortest gripper toggle, s.
        hold_s: range of the still time after each move or toggle, s.
        gripper_toggle_probability: chance of a gripper toggle after each move.
        max_pose_attempts: target poses drawn before giving up on one target.
        max_motion_attempts: whole motions drawn before giving up on a clear path.
        path_check_interval_s: time step at which the whole-robot path is checked.
    """

    home_probability: float = 0.3
    sample_lower: tuple[float, ...] = (-1.2, 0.0, 0.0, -1.6, -1.5, -2.0)
    sample_upper: tuple[float, ...] = (1.2, 2.2, 2.4, 1.6, 1.5, 2.0)
    limit_margin: float = 1.2
    slowdown: tuple[float, float] = (1.0, 1.5)
    min_move_s: float = 0.5
    min_gripper_s: float = 1.0
    hold_s: tuple[float, float] = (0.0, 0.5)
    gripper_toggle_probability: float = 0.6
    max_pose_attempts: int = 5000
    max_motion_attempts: int = 50
    path_check_interval_s: float = 0.06

    def __post_init__(self) -> None:
        for name in ("home_probability", "gripper_toggle_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must lie in [0, 1], got {getattr(self, name)}")
        if self.limit_margin < 1.0:
            raise ValueError(f"limit_margin: must be >= 1 to keep motions within the limits, got {self.limit_margin}")
        for name in ("slowdown", "hold_s"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise ValueError(f"{name}: need 0 <= low <= high, got {getattr(self, name)}")
        if self.slowdown[0] < 1.0:
            raise ValueError(f"slowdown: must not speed moves up (low >= 1), got {self.slowdown}")
        for name in ("min_move_s", "min_gripper_s", "path_check_interval_s"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("max_pose_attempts", "max_motion_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if len(self.sample_lower) != len(self.sample_upper) or any(
            low > high for low, high in zip(self.sample_lower, self.sample_upper, strict=True)
        ):
            raise ValueError(
                f"sample_lower/sample_upper: need equal lengths and lower <= upper, "
                f"got {self.sample_lower} and {self.sample_upper}"
            )


@dataclass(frozen=True)
class ArmLimits:
    """One arm's slice of the embodiment: limits per joint (gripper included) and where the gripper is."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    jerk: np.ndarray
    gripper_index: int


@dataclass(frozen=True)
class ArmTrack:
    """One arm's motion: rest-to-rest minimum-jerk segments between knots, then still at the last knot.

    Attributes:
        knot_times: increasing times of the knots, s, starting at 0.
        knot_poses: the arm's joints at each knot, ``(len(knot_times), joints)``.
    """

    knot_times: np.ndarray
    knot_poses: np.ndarray

    def positions(self, times: np.ndarray) -> np.ndarray:
        """The arm's joints at ``times`` (s), ``(len(times), joints)``."""
        times = np.asarray(times, dtype=np.float64)
        if len(self.knot_times) == 1:
            return np.repeat(self.knot_poses, len(times), axis=0)
        segment = np.clip(np.searchsorted(self.knot_times, times, side="right") - 1, 0, len(self.knot_times) - 2)
        start = self.knot_times[segment]
        progress = np.clip((times - start) / (self.knot_times[segment + 1] - start), 0.0, 1.0)
        delta = self.knot_poses[segment + 1] - self.knot_poses[segment]
        return self.knot_poses[segment] + delta * minimum_jerk(progress)[:, None]


@dataclass(frozen=True)
class BimanualMotion:
    """Both arms' tracks, in the embodiment's arm order; joint vectors concatenate them."""

    tracks: tuple[ArmTrack, ...]

    def positions(self, times: np.ndarray) -> np.ndarray:
        """The full joint vector at ``times`` (s), ``(len(times), joints)``."""
        return np.hstack([track.positions(times) for track in self.tracks])

    def sample(self, num_frames: int, dt: float = ROBOTWIN_FRAME_INTERVAL_S) -> np.ndarray:
        """``num_frames`` joint vectors ``dt`` seconds apart, starting at time 0."""
        return self.positions(np.arange(num_frames) * dt)


def minimum_jerk(progress: np.ndarray) -> np.ndarray:
    """Minimum-jerk profile ``10 s^3 - 15 s^4 + 6 s^5``: 0 -> 1 with zero velocity and acceleration at both ends."""
    progress = np.asarray(progress, dtype=np.float64)
    return progress**3 * (10.0 + progress * (-15.0 + 6.0 * progress))


def move_duration(delta: np.ndarray, limits: ArmLimits, margin: float) -> float:
    """Shortest minimum-jerk duration (s) for the joint change ``delta``, times ``margin``.

    The duration keeps every joint's peak velocity, acceleration and jerk within its limit.
    """
    distance = np.abs(np.asarray(delta, dtype=np.float64))
    bounds = np.concatenate(
        [
            MIN_JERK_PEAK_VELOCITY * distance / limits.velocity,
            np.sqrt(MIN_JERK_PEAK_ACCELERATION * distance / limits.acceleration),
            np.cbrt(MIN_JERK_PEAK_JERK * distance / limits.jerk),
        ]
    )
    return margin * float(bounds.max())


def arm_limits(embodiment: Embodiment) -> dict[str, ArmLimits]:
    """Arm name -> that arm's limits, sliced from the embodiment."""
    lower, upper = embodiment.position_bounds(with_tolerance=False)
    per_joint = {name: embodiment.per_joint(f"{name}_limit") for name in ("velocity", "acceleration", "jerk")}
    grippers = embodiment.gripper_mask()
    limits = {}
    for arm, joints in embodiment.arm_slices().items():
        gripper_indices = np.flatnonzero(grippers[joints])
        if len(gripper_indices) != 1:
            raise ValueError(f"arms.{arm}: random motions need exactly one gripper per arm, got {len(gripper_indices)}")
        limits[arm] = ArmLimits(
            lower=lower[joints],
            upper=upper[joints],
            velocity=per_joint["velocity"][joints],
            acceleration=per_joint["acceleration"][joints],
            jerk=per_joint["jerk"][joints],
            gripper_index=int(gripper_indices[0]),
        )
    return limits


def random_bimanual_motion(
    embodiment: Embodiment,
    validator: PoseValidator,
    rng: np.random.Generator,
    duration_s: float,
    config: MotionConfig | None = None,
) -> BimanualMotion:
    """Draw independent arm tracks covering ``duration_s`` until the whole-robot path is clear.

    Raises:
        ValueError: ``duration_s`` is not positive, or the sampling box does not fit the embodiment.
        RuntimeError: no valid target or clear path was found within the configured attempts.
    """
    config = config or MotionConfig()
    if not duration_s > 0.0:
        raise ValueError(f"duration_s: must be > 0, got {duration_s}")
    limits = arm_limits(embodiment)
    for arm, arm_limit in limits.items():
        _check_sample_box(arm, arm_limit, config)
    check_times = np.arange(0.0, duration_s + config.path_check_interval_s, config.path_check_interval_s)
    for _ in range(config.max_motion_attempts):
        tracks = tuple(
            random_arm_track(arm, arm_limit, validator, rng, duration_s, config) for arm, arm_limit in limits.items()
        )
        motion = BimanualMotion(tracks)
        if all(validator.path_is_clear(pose) for pose in motion.positions(check_times)):
            return motion
    raise RuntimeError(f"no clear bimanual path found in {config.max_motion_attempts} attempts (max_motion_attempts)")


def random_arm_track(
    arm: str,
    limits: ArmLimits,
    validator: PoseValidator,
    rng: np.random.Generator,
    duration_s: float,
    config: MotionConfig,
) -> ArmTrack:
    """One arm's moves, holds and gripper toggles until ``duration_s`` is covered."""
    if rng.random() < config.home_probability:
        pose = np.zeros(len(limits.lower))
        pose[limits.gripper_index] = 1.0
    else:
        pose = _random_target(arm, limits, validator, rng, config, gripper=float(rng.integers(0, 2)))
    times, poses = [0.0], [pose]

    def go_to(target: np.ndarray, shortest_s: float, slowdown: float) -> None:
        duration = max(shortest_s, move_duration(target - poses[-1], limits, config.limit_margin)) * slowdown
        times.append(times[-1] + duration)
        poses.append(target)
        hold = rng.uniform(*config.hold_s)
        if hold > 0.0:
            times.append(times[-1] + hold)
            poses.append(target)

    while times[-1] < duration_s:
        gripper = poses[-1][limits.gripper_index]
        target = _random_target(arm, limits, validator, rng, config, gripper)
        go_to(target, config.min_move_s, rng.uniform(*config.slowdown))
        if times[-1] < duration_s and rng.random() < config.gripper_toggle_probability:
            toggled = poses[-1].copy()
            toggled[limits.gripper_index] = 1.0 - np.round(gripper)
            go_to(toggled, config.min_gripper_s, 1.0)
    return ArmTrack(np.array(times), np.array(poses))


def _random_target(
    arm: str,
    limits: ArmLimits,
    validator: PoseValidator,
    rng: np.random.Generator,
    config: MotionConfig,
    gripper: float,
) -> np.ndarray:
    """Rejection-sample the sampling box until the validator accepts a pose; the gripper is kept."""
    lower, upper = np.array(config.sample_lower), np.array(config.sample_upper)
    for _ in range(config.max_pose_attempts):
        pose = np.insert(rng.uniform(lower, upper), limits.gripper_index, gripper)
        if validator.pose_is_valid(arm, pose):
            return pose
    raise RuntimeError(f"arm {arm}: no valid target pose in {config.max_pose_attempts} attempts (max_pose_attempts)")


def _check_sample_box(arm: str, limits: ArmLimits, config: MotionConfig) -> None:
    joints = np.delete(np.arange(len(limits.lower)), limits.gripper_index)
    if len(config.sample_lower) != len(joints):
        raise ValueError(
            f"sample_lower/sample_upper: have {len(config.sample_lower)} values, arm {arm} has {len(joints)} arm joints"
        )
    if np.any(np.array(config.sample_lower) < limits.lower[joints]) or np.any(
        np.array(config.sample_upper) > limits.upper[joints]
    ):
        raise ValueError(
            f"sample_lower/sample_upper: box {config.sample_lower}..{config.sample_upper} leaves arm {arm}'s "
            f"position limits {limits.lower[joints].tolist()}..{limits.upper[joints].tolist()}"
        )
