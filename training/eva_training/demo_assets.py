"""The demo's small trained IDM: synthesised, trained and cached on first use (DESIGN.md §7).

An untrained IDM decodes noise, so an honest gate rejects every plan and nothing would move.
``make demo`` therefore trains a small IDM once on a few synthetic episodes of the simulated
aloha-agilex, caches it, and replays one of those episodes as the oracle plan. With eight
episodes and a few CPU minutes the IDM is accurate only on what it has seen: the demo exercises
decode, gate, bridge and robot end to end, not the IDM's generalisation (``make bench-idm``
measures that). The gate keeps the robot's thresholds (the embodiment's defaults; no calibration
from training data).

Everything here is ``eva`` itself; :func:`reproduce_commands` prints the equivalent command lines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eva_idm.data.robotwin import EpisodeRecord, load_episode, scan_episodes
from eva_idm.embodiment import load_embodiment
from eva_idm.idm import load_checkpoint
from eva_idm.motion import GateConfig, MotionResult, plan_to_motion
from eva_sim.synth import SynthConfig, synthesize
from eva_training.train_idm import IDMTrainConfig, train

ASSETS_FILE = "assets.json"


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo's data and IDM are made; a change makes a new cache entry.

    Attributes:
        episodes: synthetic episodes (all used for training but one held out by the trainer).
        frames: frames per episode (49 are served as the oracle plan).
        height, width: head-camera size of the episodes, the IDM input and the simulated camera.
        seed: synthesis and training seed.
        steps: optimiser steps.
        max_minutes: wall-time cap of training.
        threads: torch CPU threads for training.
    """

    episodes: int = 8
    frames: int = 50
    height: int = 64
    width: int = 80
    seed: int = 0
    steps: int = 600
    max_minutes: float = 8.0
    threads: int = 1

    def key(self) -> str:
        """Short hash of the recipe: the cache directory's name."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def synth_config(self, data_dir: Path) -> SynthConfig:
        """Episodes whose grippers stay still: the few-minute IDM cannot learn fast gripper flips."""
        return SynthConfig(out_dir=data_dir, episodes=self.episodes, frames=self.frames, height=self.height,
                           width=self.width, seed=self.seed, gripper_toggle_probability=0.0)

    def train_config(self, data_dir: Path, run_dir: Path) -> IDMTrainConfig:
        """A ResNet-18 at the episodes' size, no flips (the oracle replays unflipped episodes)."""
        return IDMTrainConfig(data=str(data_dir), output_dir=str(run_dir), input_size=(self.height, self.width),
                              output_stride=16, batch_size=16, max_steps=self.steps, max_minutes=self.max_minutes,
                              eval_every=200, save_every=self.steps, val_fraction=1 / self.episodes,
                              flip_probability=0.0, seed=self.seed, num_threads=self.threads)


@dataclass(frozen=True)
class DemoAssets:
    """The cached demo IDM and its episodes."""

    checkpoint: Path
    data_dir: Path
    commands: tuple[str, ...]


def reproduce_commands(recipe: DemoRecipe, data_dir: Path, run_dir: Path) -> tuple[str, ...]:
    """The ``eva`` command lines that make the same data and IDM."""
    synth, config = recipe.synth_config(data_dir), recipe.train_config(data_dir, run_dir)
    return (
        f"eva data synth --out {data_dir} --episodes {synth.episodes} --frames {synth.frames} "
        f"--height {synth.height} --width {synth.width} --seed {synth.seed} "
        f"--gripper-toggle-probability {synth.gripper_toggle_probability}",
        f"eva train idm --data {data_dir} --output-dir {run_dir} --input-size {config.input_size[0]} "
        f"{config.input_size[1]} --output-stride {config.output_stride} --batch-size {config.batch_size} "
        f"--max-steps {config.max_steps} --max-minutes {config.max_minutes} --eval-every {config.eval_every} "
        f"--save-every {config.save_every} --val-fraction {config.val_fraction} "
        f"--flip-probability {config.flip_probability} --seed {config.seed} --num-threads {config.num_threads}",
    )


def demo_idm_cached(cache_root: Path, recipe: DemoRecipe = DemoRecipe()) -> bool:
    """Whether :func:`ensure_demo_idm` has already made this recipe's IDM."""
    return (cache_root / f"idm-{recipe.key()}" / ASSETS_FILE).is_file()


def ensure_demo_idm(cache_root: Path, recipe: DemoRecipe = DemoRecipe()) -> DemoAssets:
    """The cached demo IDM for ``recipe``, made first (synthesis + training, with progress bars) if missing."""
    root = cache_root / f"idm-{recipe.key()}"
    data_dir, run_dir = root / "data", root / "run"
    commands = reproduce_commands(recipe, data_dir, run_dir)
    marker = root / ASSETS_FILE
    if marker.is_file():
        return DemoAssets(root / json.loads(marker.read_text())["checkpoint"], data_dir, commands)
    if not (data_dir / "synth_reach").exists():
        synthesize(recipe.synth_config(data_dir))
    checkpoint = train(recipe.train_config(data_dir, run_dir), command=commands[1])
    marker.write_text(json.dumps({"checkpoint": str(Path(checkpoint).relative_to(root)), "recipe": asdict(recipe),
                                  "commands": commands}, indent=1) + "\n")
    return DemoAssets(checkpoint, data_dir, commands)


@dataclass(frozen=True)
class OracleChoice:
    """An episode to replay as the oracle plan, with the gate's offline verdict on every candidate."""

    record: EpisodeRecord
    verdicts: dict[str, MotionResult]


def choose_oracle_episode(assets: DemoAssets, num_frames: int) -> OracleChoice:
    """The first episode whose first ``num_frames`` the gate accepts when decoded by the demo IDM.

    The same decode and gate run again in the IDM node; deciding here only picks which episode to
    show. Falls back to the episode with the best reward when none is accepted (the demo then
    shows the rejection and its reason).
    """
    index = scan_episodes(assets.data_dir)
    embodiment = load_embodiment("aloha_agilex")
    model = load_checkpoint(assets.checkpoint, embodiment.name, embodiment.joint_names)
    gate = GateConfig.from_embodiment(embodiment)
    verdicts = {}
    for record in index.episodes:
        episode = load_episode(record)
        decoded = model.decode_video(episode.frames[:num_frames], fps=episode.fps).numpy()
        verdicts[record.episode_id] = plan_to_motion(decoded, episode.fps, episode.actions[0], embodiment, gate)
        if verdicts[record.episode_id].executable:
            return OracleChoice(record, verdicts)
    rewards = [verdicts[r.episode_id].reward.reward if verdicts[r.episode_id].reward else -np.inf
               for r in index.episodes]
    return OracleChoice(index.episodes[int(np.argmax(rewards))], verdicts)
