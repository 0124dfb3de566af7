"""EVA's executability reward and RLIR's action-consistency reward for decoded joint trajectories.

EVA (arXiv 2603.17808) scores the IDM's decode of a video plan, a ``T x D`` array of absolute
joint positions at the plan's frame rate, by how smooth it is and how well it respects the
embodiment's velocity and acceleration limits (``notes/eva_method.md`` section 3.1)::

    v, a, j   = first, second and third finite differences at the plan's fps
    P_acc     = mean_{t,d} w_d * Huber(a; 0.5 * a_max)
    P_jerk    = mean_{t,d} w_d * Huber(j; 0.5 * a_max * fps)
    P_vlim    = mean_{t,d} w_d * max(|v| - v_max, 0)^2
    P_alim    = mean_{t,d} w_d * max(|a| - a_max, 0)^2
    P         = 0.5 P_jerk + 0.25 P_acc + 2 P_vlim + 1 P_alim
    R         = 10 * (1 + P / 2000) ** -0.5            in (0, 10]

with dimension weights 1 for joints and 0.2 for grippers, divided by their mean. The same code
serves the RL reward (training) and the run-time gate (serving), so the two cannot drift.

RLIR (arXiv 2509.23958) instead rewards agreement of the decoded actions with the ground-truth
actions the world model was asked to follow; :func:`action_consistency_reward` is its
continuous-action form, and :func:`combine_rewards` mixes the two.

Both rewards accept one trajectory ``(T, D)`` or a batch ``(B, T, D)`` and return a breakdown
with scalars or ``(B,)`` arrays respectively. A sample that cannot be scored (too few frames,
non-finite values) gets reward 0, ``valid=False`` and a reason, instead of an exception: 0 is the
lowest reward, so the RL step ranks it last and the gate rejects it, and a NaN never reaches the
group-normalised advantages where it would poison every sample of its group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import ArrayLike

from eva_idm.embodiment import Embodiment

# Jerk, the third difference, needs four frames.
MIN_FRAMES = 4


@dataclass(frozen=True)
class RewardConfig:
    """Every constant of EVA's reward; build it with :meth:`from_embodiment`.

    Attributes:
        joint_names: names of the trajectory's dimensions, for reasons and width checks.
        velocity_limit: v_max per dimension (rad/s; grippers units/s).
        acceleration_limit: a_max per dimension (rad/s^2; grippers units/s^2).
        dimension_weights: raw per-dimension weights; they are divided by their mean when used.
        huber_acceleration_scale: Huber threshold of acceleration as a fraction of a_max.
        huber_jerk_scale: Huber threshold of jerk as a fraction of a_max * fps (i.e. a_max / dt).
        jerk_weight, acceleration_weight, velocity_limit_weight, acceleration_limit_weight:
            weights of the four penalty terms in P.
        reward_max: R at zero penalty.
        penalty_reference: P0, the penalty at which R has decayed by (1/2)**decay.
        decay: gamma, the exponent of the bounded reward.
    """

    joint_names: tuple[str, ...]
    velocity_limit: tuple[float, ...]
    acceleration_limit: tuple[float, ...]
    dimension_weights: tuple[float, ...]
    huber_acceleration_scale: float = 0.5
    huber_jerk_scale: float = 0.5
    jerk_weight: float = 0.5
    acceleration_weight: float = 0.25
    velocity_limit_weight: float = 2.0
    acceleration_limit_weight: float = 1.0
    reward_max: float = 10.0
    penalty_reference: float = 2000.0
    decay: float = 0.5

    def __post_init__(self) -> None:
        width = len(self.joint_names)
        for name in ("velocity_limit", "acceleration_limit", "dimension_weights"):
            if len(getattr(self, name)) != width:
                raise ValueError(f"{name}: expected {width} values (one per joint), got {list(getattr(self, name))}")
        for name in ("velocity_limit", "acceleration_limit"):
            if not all(value > 0.0 for value in getattr(self, name)):
                raise ValueError(f"{name}: every value must be > 0, got {list(getattr(self, name))}")
        if any(weight < 0.0 for weight in self.dimension_weights) or sum(self.dimension_weights) <= 0.0:
            raise ValueError(f"dimension_weights: must be >= 0 with a positive sum, got {list(self.dimension_weights)}")
        for name in ("huber_acceleration_scale", "huber_jerk_scale", "reward_max", "penalty_reference", "decay"):
            _require_finite(name, getattr(self, name), minimum=0.0, inclusive=False)
        for name in ("jerk_weight", "acceleration_weight", "velocity_limit_weight", "acceleration_limit_weight"):
            _require_finite(name, getattr(self, name), minimum=0.0, inclusive=True)

    @classmethod
    def from_embodiment(
        cls, embodiment: Embodiment, joint_weight: float = 1.0, gripper_weight: float = 0.2
    ) -> RewardConfig:
        """EVA's constants with the embodiment's limits; change others with ``dataclasses.replace``."""
        weights = np.where(embodiment.gripper_mask(), gripper_weight, joint_weight)
        return cls(
            joint_names=embodiment.joint_names,
            velocity_limit=embodiment.velocity_limit,
            acceleration_limit=embodiment.acceleration_limit,
            dimension_weights=tuple(float(weight) for weight in weights),
        )


class _JsonBreakdown:
    """Shared by the breakdowns: their fields as a JSON-ready dict."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict; NaN (not computed) becomes ``None``."""
        return {field.name: _json_ready(getattr(self, field.name)) for field in fields(self)}


@dataclass(frozen=True)
class RewardBreakdown(_JsonBreakdown):
    """EVA's reward and its parts: floats for one trajectory, ``(B,)`` arrays for a batch.

    Penalty fields are NaN where a sample could not be scored (``valid`` false, ``reason`` says why).
    """

    reward: float | np.ndarray
    penalty: float | np.ndarray
    jerk_penalty: float | np.ndarray
    acceleration_penalty: float | np.ndarray
    velocity_limit_penalty: float | np.ndarray
    acceleration_limit_penalty: float | np.ndarray
    valid: bool | np.ndarray
    reason: str | tuple[str, ...]



@dataclass(frozen=True)
class ConsistencyConfig:
    """Constants of the action-consistency reward; build it with :meth:`from_embodiment`.

    Attributes:
        joint_names: names of the trajectory's dimensions, for reasons and width checks.
        tolerance: per dimension, the largest |decoded - reference| at which a frame still agrees
            (rad; grippers normalised).
        reward_max: reward when every frame agrees; 10 puts it on EVA's scale, so a weighted sum
            of the two weighs like with like.
    """

    joint_names: tuple[str, ...]
    tolerance: tuple[float, ...]
    reward_max: float = 10.0

    def __post_init__(self) -> None:
        if len(self.tolerance) != len(self.joint_names):
            raise ValueError(
                f"tolerance: expected {len(self.joint_names)} values (one per joint), got {list(self.tolerance)}"
            )
        if not all(value >= 0.0 for value in self.tolerance):
            raise ValueError(f"tolerance: every value must be >= 0, got {list(self.tolerance)}")
        _require_finite("reward_max", self.reward_max, minimum=0.0, inclusive=False)

    @classmethod
    def from_embodiment(
        cls, embodiment: Embodiment, joint_tolerance: float = 0.05, gripper_tolerance: float = 0.5
    ) -> ConsistencyConfig:
        """Tolerances of the authors' IDM accuracy metric: 0.05 rad on joints, 0.5 on grippers."""
        tolerance = np.where(embodiment.gripper_mask(), gripper_tolerance, joint_tolerance)
        return cls(joint_names=embodiment.joint_names, tolerance=tuple(float(value) for value in tolerance))


@dataclass(frozen=True)
class ConsistencyBreakdown(_JsonBreakdown):
    """Action-consistency reward and its parts: floats for one trajectory, ``(B,)`` arrays for a batch.

    ``agreement`` is the fraction of frames whose every dimension is within tolerance (RLIR's
    per-frame match); ``mean_absolute_error`` averages |decoded - reference| over frames and
    dimensions (mixed units: rad and normalised gripper), a diagnostic that does not enter the reward.
    """

    reward: float | np.ndarray
    agreement: float | np.ndarray
    mean_absolute_error: float | np.ndarray
    valid: bool | np.ndarray
    reason: str | tuple[str, ...]



def bounded_reward(penalty: float | np.ndarray, config: RewardConfig) -> float | np.ndarray:
    """Map a penalty P >= 0 to R = reward_max * (1 + P / P0) ** -decay, in (0, reward_max]."""
    return config.reward_max * (1.0 + np.asarray(penalty) / config.penalty_reference) ** -config.decay


def eva_reward(actions: ArrayLike, fps: float, config: RewardConfig) -> RewardBreakdown:
    """Score decoded joint trajectories with EVA's smoothness and limit penalties.

    Args:
        actions: ``(T, D)`` or ``(B, T, D)`` absolute joint positions, ``D = len(config.joint_names)``.
        fps: frame rate of the plan (16 for EVA's 49-frame plans); sets the finite-difference step.
        config: the reward's constants.

    Raises:
        ValueError: ``actions`` has the wrong shape, or ``fps`` is not a positive number.
    """
    batch, single = _as_batch(actions, config.joint_names, "actions")
    fps = _check_fps(fps)
    reasons = _unscorable_reasons(batch, config.joint_names)
    scorable = np.array([not reason for reason in reasons], dtype=bool)
    # Zeros stand in for unscorable samples so that the vectorised maths stays warning-free.
    terms = _penalty_terms(np.where(scorable[:, None, None], batch, 0.0), fps, config)
    penalty = (
        config.jerk_weight * terms["jerk_penalty"]
        + config.acceleration_weight * terms["acceleration_penalty"]
        + config.velocity_limit_weight * terms["velocity_limit_penalty"]
        + config.acceleration_limit_weight * terms["acceleration_limit_penalty"]
    )
    reward = np.where(scorable, bounded_reward(penalty, config), 0.0)
    masked_terms = {name: np.where(scorable, value, np.nan) for name, value in terms.items()}
    return RewardBreakdown(
        reward=_unbatch(reward, single),
        penalty=_unbatch(np.where(scorable, penalty, np.nan), single),
        **{name: _unbatch(value, single) for name, value in masked_terms.items()},
        valid=_unbatch(scorable, single),
        reason=reasons[0] if single else tuple(reasons),
    )


def action_consistency_reward(
    actions: ArrayLike, reference: ArrayLike, config: ConsistencyConfig
) -> ConsistencyBreakdown:
    """Score decoded actions by their agreement with ground-truth actions (RLIR's reward).

    RLIR counts exact matches of discrete actions; for joint positions a frame matches when every
    dimension is within ``config.tolerance``. The reward is ``reward_max`` times the matching fraction.
    There is no frame rate: unlike EVA's reward this one compares frame by frame.

    Args:
        actions: ``(T, D)`` or ``(B, T, D)`` decoded joint positions.
        reference: ground-truth actions of the same shape.
        config: tolerances and scale.

    Raises:
        ValueError: wrong shapes, or a non-finite reference (ground truth must be clean data).
    """
    batch, single = _as_batch(actions, config.joint_names, "actions")
    truth, _ = _as_batch(reference, config.joint_names, "reference")
    if truth.shape != batch.shape:
        raise ValueError(f"reference: shape {np.shape(reference)} differs from actions' {np.shape(actions)}")
    corrupt = np.argwhere(~np.isfinite(truth))
    if len(corrupt):
        sample, frame, joint = corrupt[0]
        raise ValueError(
            f"reference: non-finite value at sample {sample}, frame {frame}, joint {config.joint_names[joint]}"
        )
    reasons = [
        "no frames to compare" if batch.shape[1] == 0 else non_finite_reason(sample, config.joint_names)
        for sample in batch
    ]
    scorable = np.array([not reason for reason in reasons], dtype=bool)
    # Unscorable samples are compared as if perfect only to keep the maths finite; their reward is 0.
    comparable = np.where(scorable[:, None, None], batch, truth)
    agreement, mean_absolute_error = _agreement_and_error(comparable, truth, config)
    return ConsistencyBreakdown(
        reward=_unbatch(np.where(scorable, config.reward_max * agreement, 0.0), single),
        agreement=_unbatch(np.where(scorable, agreement, np.nan), single),
        mean_absolute_error=_unbatch(np.where(scorable, mean_absolute_error, np.nan), single),
        valid=_unbatch(scorable, single),
        reason=reasons[0] if single else tuple(reasons),
    )


def combine_rewards(*weighted: tuple[float, RewardBreakdown | ConsistencyBreakdown]) -> float | np.ndarray:
    """Weighted sum of rewards, e.g. ``combine_rewards((0.7, eva), (0.3, consistency))``.

    Weights that add up to 1 keep the result on the 0..10 scale.
    """
    if not weighted:
        raise ValueError("weighted: need at least one (weight, breakdown) pair, got none")
    shapes = {np.shape(breakdown.reward) for _, breakdown in weighted}
    if len(shapes) > 1:
        raise ValueError(f"weighted: rewards must all be one trajectory or equal batches, got shapes {sorted(shapes)}")
    for weight, _ in weighted:
        _require_finite("weight", weight, minimum=0.0, inclusive=True)
    return sum(weight * breakdown.reward for weight, breakdown in weighted)


def huber(values: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Huber loss: quadratic up to ``threshold``, linear beyond, so one jump cannot dominate the mean."""
    magnitude = np.abs(values)
    return np.where(magnitude <= threshold, 0.5 * values**2, threshold * (magnitude - 0.5 * threshold))


def _penalty_terms(batch: np.ndarray, fps: float, config: RewardConfig) -> dict[str, np.ndarray]:
    """The four mean penalty terms per sample of a finite ``(B, T, D)`` batch."""
    if batch.shape[1] < MIN_FRAMES:
        empty = np.zeros(batch.shape[0])
        return dict.fromkeys(
            ("jerk_penalty", "acceleration_penalty", "velocity_limit_penalty", "acceleration_limit_penalty"), empty
        )
    weights = np.asarray(config.dimension_weights) / np.mean(config.dimension_weights)
    velocity_limit = np.asarray(config.velocity_limit)
    acceleration_limit = np.asarray(config.acceleration_limit)
    velocity = np.diff(batch, axis=1) * fps
    acceleration = np.diff(velocity, axis=1) * fps
    jerk = np.diff(acceleration, axis=1) * fps

    def weighted_mean(per_entry: np.ndarray) -> np.ndarray:
        return (per_entry * weights).mean(axis=(1, 2))

    return {
        "jerk_penalty": weighted_mean(huber(jerk, config.huber_jerk_scale * acceleration_limit * fps)),
        "acceleration_penalty": weighted_mean(
            huber(acceleration, config.huber_acceleration_scale * acceleration_limit)
        ),
        "velocity_limit_penalty": weighted_mean(np.maximum(np.abs(velocity) - velocity_limit, 0.0) ** 2),
        "acceleration_limit_penalty": weighted_mean(np.maximum(np.abs(acceleration) - acceleration_limit, 0.0) ** 2),
    }


def _agreement_and_error(
    batch: np.ndarray, truth: np.ndarray, config: ConsistencyConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the fraction of agreeing frames and the mean absolute error (0 when empty)."""
    if batch.shape[1] == 0:
        return np.zeros(batch.shape[0]), np.zeros(batch.shape[0])
    error = np.abs(batch - truth)
    agreement = (error <= np.asarray(config.tolerance)).all(axis=2).mean(axis=1)
    return agreement, error.mean(axis=(1, 2))


def _unscorable_reasons(batch: np.ndarray, joint_names: Sequence[str]) -> list[str]:
    """Per sample, why EVA's reward cannot score it ("" when it can)."""
    frames = batch.shape[1]
    too_short = f"too few frames: {frames} (jerk needs at least {MIN_FRAMES})" if frames < MIN_FRAMES else ""
    return [non_finite_reason(sample, joint_names) or too_short for sample in batch]


def non_finite_reason(trajectory: np.ndarray, joint_names: Sequence[str]) -> str:
    """Where a ``(T, D)`` trajectory holds NaN or inf, in words; empty when every value is finite."""
    bad = np.argwhere(~np.isfinite(trajectory))
    if not len(bad):
        return ""
    frame, joint = bad[0]
    return (f"{len(bad)} non-finite value(s), the first {trajectory[frame, joint]} at frame {frame}, "
            f"joint {joint_names[joint]}")


def _as_batch(actions: ArrayLike, joint_names: Sequence[str], name: str) -> tuple[np.ndarray, bool]:
    """``(B, T, D)`` float64 view of ``actions`` and whether it was a single ``(T, D)`` trajectory."""
    array = np.asarray(actions, dtype=np.float64)
    width = len(joint_names)
    if array.ndim not in (2, 3) or array.shape[-1] != width:
        raise ValueError(f"{name}: expected shape (T, {width}) or (B, T, {width}), got {array.shape}")
    single = array.ndim == 2
    return (array[np.newaxis] if single else array), single


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not (math.isfinite(fps) and fps > 0.0):
        raise ValueError(f"fps: must be a finite number > 0, got {fps!r}")
    return float(fps)


def _require_finite(name: str, value: float, minimum: float, inclusive: bool) -> None:
    above = value >= minimum if inclusive else value > minimum
    if not (math.isfinite(value) and above):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"{name}: must be a finite number {relation} {minimum:g}, got {value}")


def _unbatch(values: np.ndarray, single: bool) -> float | bool | np.ndarray:
    if not single:
        return values
    return values[0].item()


def _json_ready(value: object) -> object:
    if isinstance(value, np.ndarray):
        return [_json_ready(item) for item in value.tolist()]
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
