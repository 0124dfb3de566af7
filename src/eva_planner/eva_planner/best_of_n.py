"""Best-of-N planning: EVA's inference-time alternative to RL alignment.

EVA aligns the world model with the IDM reward through RL. Without (or on top of) that, the same
reward can pick among plans at run time: sample ``n`` plans that differ only in their seed, decode
each with the IDM, score it with EVA's reward and the plan-to-motion gate against the pose the robot
had when the image was taken, and keep the best one the gate accepts (:func:`select_best`). It
costs ``n`` generations, which is why EVA calls rejection sampling inefficient; the gate still has
the last word on whatever is chosen.

Every candidate is scored on exactly the pixels consumers will see: its frames are encoded as they
will be published (PNG by default, :mod:`eva_idm.frames`) and decoded back before the IDM runs, and
the score carries the hash a ``VisualPlan`` of those frames would carry.

Candidates run ``config.candidate_batch`` at a time (:meth:`WorldModel.generate_batch`): one after
the other by default, which keeps the transformer's activation memory at one plan's and only the
best plan so far in memory; batched where memory allows, which is faster on a GPU the model does
not fill. Either way candidate ``i`` is the plan of seed ``config.seed + i``.

ROS-free: the planner node and ``eva plan`` share this module.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from eva_idm.embodiment import Embodiment
from eva_idm.frames import SUPPORTED_FORMATS, decode_frames, encode_frames, frames_sha256
from eva_idm.idm import ResNetPlusIDM
from eva_idm.idm.checkpoint import check_embodiment
from eva_idm.motion import GateConfig, plan_to_motion
from eva_idm.reward import RewardBreakdown
from eva_planner.world_model import PlanningCancelled, PlanResult, SamplerConfig, WorldModel


@dataclasses.dataclass(frozen=True)
class CandidateScore:
    """How one candidate plan scored.

    Attributes:
        seed: the sampler seed that produced the plan; None when scored outside :func:`best_of_n`.
        reward: EVA's reward (0..10) of the raw IDM decode.
        breakdown: the reward's penalty terms.
        verdict: name of the gate's :class:`~eva_idm.motion.Verdict` (``"ACCEPTED"`` or why not).
        executable: True when the gate accepted the plan.
        reason: the gate's human-readable explanation.
        frames_sha256: hash of the encoded frames, as the plan's ``VisualPlan`` carries it.
        decode_seconds: time from frames to decoded trajectory (encode/decode round trip and IDM).
    """

    seed: int | None
    reward: float
    breakdown: RewardBreakdown
    verdict: str
    executable: bool
    reason: str
    frames_sha256: str
    decode_seconds: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields, the breakdown as a nested dict."""
        return {**dataclasses.asdict(self), "breakdown": self.breakdown.to_dict()}


@dataclasses.dataclass(frozen=True)
class BestOfNResult:
    """The chosen plan and the scores of all candidates, in sampling order.

    ``executable`` is False when no candidate passed the gate; ``best`` is then the highest-reward
    plan, kept for inspection, and must not move the robot.
    """

    best: PlanResult
    best_index: int
    candidates: tuple[CandidateScore, ...]
    executable: bool

    @property
    def best_score(self) -> CandidateScore:
        """The score of :attr:`best`."""
        return self.candidates[self.best_index]


class PlanScorer:
    """Scores a plan's frames the way the IDM node will judge them: decode, reward, gate.

    Args:
        idm: the inverse dynamics model; it must have been trained for ``embodiment``.
        embodiment: joint names and limits.
        gate_config: the gate's thresholds; the embodiment's defaults when None.
        frame_format: the format plans are published in (``"png"`` or ``"rgb8"``).
    """

    def __init__(
        self,
        idm: ResNetPlusIDM,
        embodiment: Embodiment,
        gate_config: GateConfig | None = None,
        frame_format: str = "png",
    ):
        if frame_format not in SUPPORTED_FORMATS:
            raise ValueError(f"frame_format: must be one of {SUPPORTED_FORMATS}, got {frame_format!r}")
        check_embodiment(idm.config, embodiment.name, embodiment.joint_names, "PlanScorer idm")
        self.gate_config = GateConfig.from_embodiment(embodiment) if gate_config is None else gate_config
        self.gate_config.check_width(embodiment)
        self.idm = idm
        self.embodiment = embodiment
        self.frame_format = frame_format

    def score(self, frames: np.ndarray, fps: float, measured_positions: ArrayLike | None) -> CandidateScore:
        """Score ``frames`` (``(T, H, W, 3)`` uint8 RGB at ``fps``) against the measured pose at image time.

        A plan the gate rejects is a verdict, not an error (no pose at all is ``NO_JOINT_STATE``).
        """
        started = time.perf_counter()
        encoded = encode_frames(frames, self.frame_format)
        published = decode_frames(encoded, frames.shape[1], frames.shape[2])
        decoded = self.idm.decode_video(published, fps).numpy().astype(np.float64)
        decode_seconds = time.perf_counter() - started
        motion = plan_to_motion(decoded, fps, measured_positions, self.embodiment, self.gate_config)
        if motion.reward is None:  # only a malformed decode has none, and __init__ checked the IDM's width
            raise RuntimeError(f"the gate could not score the IDM's decode: {motion.reason}")
        return CandidateScore(
            seed=None,
            reward=float(motion.reward.reward),
            breakdown=motion.reward,
            verdict=motion.verdict.name,
            executable=motion.executable,
            reason=motion.reason,
            frames_sha256=frames_sha256(encoded),
            decode_seconds=decode_seconds,
        )


def select_best(candidates: Sequence[CandidateScore]) -> int:
    """Index of the highest-reward executable candidate, else of the highest-reward one; ties go to the first.

    Executability comes first: a smooth plan the gate rejects (say, one that starts far from the
    measured pose) must never beat one the robot may run.
    """
    if not candidates:
        raise ValueError("candidates: need at least one candidate to choose from")
    return max(range(len(candidates)), key=lambda i: (candidates[i].executable, candidates[i].reward, -i))


def candidate_seeds(seed: int, n: int) -> tuple[int, ...]:
    """Seeds of the ``n`` candidates: ``seed, seed + 1, ...``, so candidate 0 is the plain plan of ``seed``."""
    return tuple(seed + index for index in range(n))


def best_of_n(
    world_model: WorldModel,
    image: np.ndarray,
    instruction: str,
    config: SamplerConfig,
    n: int,
    scorer: PlanScorer,
    measured_positions: ArrayLike | None,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> BestOfNResult:
    """Sample ``n`` plans from ``image`` and ``instruction`` and keep the best one (see :func:`select_best`).

    Candidate ``i`` is sampled with ``config`` at seed ``config.seed + i``; with ``n = 1`` this is
    exactly ``world_model.generate(image, instruction, config)``, scored. ``measured_positions`` is
    the robot's pose when ``image`` was taken. Progress and cancellation span all candidates:
    ``on_step(completed, n * config.steps)`` runs after every denoising step, and when
    ``should_stop`` returns True, :class:`~eva_planner.world_model.PlanningCancelled` is raised with
    the steps completed over all candidates.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a whole number >= 1, got {n!r}")
    seeds = candidate_seeds(config.seed, n)
    total_steps = n * config.steps
    best: PlanResult | None = None
    candidates: list[CandidateScore] = []
    for first in range(0, n, config.candidate_batch):
        batch = seeds[first : first + config.candidate_batch]
        done_before = first * config.steps
        try:
            plans = _sample(world_model, image, instruction, config, batch, should_stop,
                            _overall_progress(on_step, done_before, total_steps, len(batch)))
        except PlanningCancelled as cancelled:
            raise PlanningCancelled(done_before + cancelled.completed_steps * len(batch), total_steps) from cancelled
        for seed, plan in zip(batch, plans, strict=True):
            score = scorer.score(plan.frames, plan.fps, measured_positions)
            candidates.append(dataclasses.replace(score, seed=seed))
            if select_best(candidates) == len(candidates) - 1:
                best = plan
    best_index = select_best(candidates)
    return BestOfNResult(best, best_index, tuple(candidates), candidates[best_index].executable)


def _sample(
    world_model: WorldModel,
    image: np.ndarray,
    instruction: str,
    config: SamplerConfig,
    seeds: Sequence[int],
    should_stop: Callable[[], bool] | None,
    on_step: Callable[[int, int], None] | None,
) -> list[PlanResult]:
    """The plans of ``seeds``: one ``generate`` call for a single seed (any world model), else one batch."""
    if len(seeds) == 1:
        plan = world_model.generate(image, instruction, dataclasses.replace(config, seed=seeds[0]),
                                    should_stop=should_stop, on_step=on_step)
        return [plan]
    return world_model.generate_batch(image, instruction, config, seeds, should_stop=should_stop, on_step=on_step)


def _overall_progress(
    on_step: Callable[[int, int], None] | None, done_before: int, total_steps: int, candidates: int = 1
) -> Callable[[int, int], None] | None:
    """A batch's ``on_step(done, steps)`` as progress over all candidates.

    One step of a batch of ``candidates`` plans counts once per candidate.
    """
    if on_step is None:
        return None
    return lambda done, _steps: on_step(done_before + done * candidates, total_steps)
