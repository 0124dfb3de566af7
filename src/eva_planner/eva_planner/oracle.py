"""The oracle planner: a recorded episode's video served as the plan (EVA's "IDM on ground-truth video").

EVA's upper bound for the IDM and everything after it is a plan the world model cannot get
wrong: the ground-truth video of a demonstration. :class:`OracleWorldModel` stands in for the
world model with that video, so the IDM node, the gate, the bridge and the robot are tested end to
end without a trained world model. It answers :meth:`generate` like
:class:`~eva_planner.world_model.WorldModel` (same result type, cancellation and progress hooks) and
ignores the instruction and the image: the robot must stand where the episode starts, which is the
caller's job (the demo starts the simulated robot at the episode's first pose).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eva_idm.data.robotwin import ScanConfig, episode_files, inspect_episode, load_episode
from eva_planner.world_model import PlanningCancelled, PlanResult, SamplerConfig

ORACLE_PREFIX = "oracle:"


class OracleWorldModel:
    """Serves the first ``num_frames`` frames of one RoboTwin-layout HDF5 episode as every plan.

    Args:
        episode_path: ``.../<task>/<config>/data/episode{i}.hdf5``.
        joint_names: the embodiment's joint order, which the episode's actions must match.

    Raises:
        EpisodeError: the episode is unreadable or faulty (the message names the file and field).
    """

    def __init__(self, episode_path: str | Path, joint_names: tuple[str, ...]):
        record = inspect_episode(episode_files(Path(episode_path)), ScanConfig(joint_names=joint_names))
        self.episode = load_episode(record)
        self.model_id = f"{ORACLE_PREFIX}{record.episode_id}"

    @property
    def first_pose(self) -> np.ndarray:
        """The joint vector at the episode's first frame: where the robot must stand."""
        return self.episode.actions[0].copy()

    def generate(
        self,
        image: np.ndarray,
        instruction: str,
        config: SamplerConfig | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> PlanResult:
        """The episode's first ``config.num_frames`` frames at the episode's own size and frame rate.

        Raises:
            ValueError: the episode has fewer frames than asked for.
            PlanningCancelled: ``should_stop`` returned True.
        """
        config = config or SamplerConfig()
        started = time.perf_counter()
        frames = self.episode.frames
        if len(frames) < config.num_frames:
            raise ValueError(f"num_frames: the oracle episode {self.model_id!r} has {len(frames)} frames, "
                             f"fewer than the {config.num_frames} asked for")
        if should_stop is not None and should_stop():
            raise PlanningCancelled(0, 1)
        if on_step is not None:
            on_step(1, 1)
        return PlanResult(frames=frames[: config.num_frames].copy(), latents=torch.empty(0), fps=self.episode.fps,
                          seed=config.seed, instruction=instruction,
                          timings={"oracle": time.perf_counter() - started}, config=config)
