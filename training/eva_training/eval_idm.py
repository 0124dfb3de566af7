"""Evaluate a trained IDM (``eva eval idm``): accuracy, reward separation and gate calibration.

Three questions, answered on held-out episodes:

1. **How accurate is the decode?** Per-joint mean absolute error against ``joint_action/vector``
   and the share of frames whose every joint is within tolerance (EVA's "accuracy").
2. **Does the reward separate good videos from bad ones?** Each ground-truth video is decoded as
   it is and with each artifact of :mod:`eva_training.artifacts`; the ROC AUC of "clean scores
   higher than damaged" says whether EVA's reward, computed through this IDM, can rank rollouts.
3. **What start offset is IDM error?** The gate removes a decoded-first-pose offset up to a
   tolerance and rejects above it. The tolerance is calibrated here from the measured first-frame
   error and reported; ``--calibrate true`` also writes it into the checkpoint as
   ``calibration.json``, which the gate reads, capped at the embodiment's tolerance of each joint
   (a calibration only tightens the gate). Writing into the checkpoint is asked for, not a side
   effect of evaluating: an evaluation on other data must not silently change how a robot gates.

Writes ``eval.json`` and one PNG per plotted episode (decode vs ground truth per arm, reward in
the title, like EVA's Figure 2) to the output directory.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eva_training.artifacts import ARTIFACTS, separation_auc


@dataclass(frozen=True)
class IDMEvalConfig:
    """What to evaluate and how strictly."""

    checkpoint: str = field(default="", metadata={"help": "IDM checkpoint directory"})
    data: str = field(default="", metadata={"help": "root directory of RoboTwin-layout episodes"})
    output_dir: str = field(default="runs/idm_eval", metadata={"help": "where eval.json and PNGs go"})
    split: str = field(default="val", metadata={"help": "val (the training split's held-out episodes) or all"})
    val_fraction: float = field(default=0.1, metadata={"help": "must match training to reproduce its split"})
    seed: int = field(default=0, metadata={"help": "split seed (as in training) and artifact seed"})
    max_episodes: int = field(default=50, metadata={"help": "evaluate at most this many episodes"})
    joint_tolerance: float = field(default=0.05, metadata={"help": "accuracy tolerance on arm joints [rad]"})
    gripper_tolerance: float = field(default=0.1, metadata={"help": "accuracy tolerance on grippers [0..1]"})
    plot_episodes: int = field(default=3, metadata={"help": "PNGs of decode vs ground truth"})
    calibration_quantile: float = field(default=0.99, metadata={"help": "quantile of first-frame error"})
    calibration_margin: float = field(default=1.5, metadata={"help": "tolerance = margin x quantile"})
    calibrate: bool = field(default=False, metadata={"help": "write calibration.json into the checkpoint (the "
                                                             "gate caps it at the embodiment's tolerances)"})
    batch_size: int = field(default=32, metadata={"help": "IDM decode batch size"})

    def __post_init__(self) -> None:
        if not self.checkpoint or not self.data:
            raise ValueError("checkpoint/data: both are required (--checkpoint DIR --data DIR)")
        if self.split not in ("val", "all"):
            raise ValueError(f"split: use 'val' or 'all', got {self.split!r}")
        if not 0.5 <= self.calibration_quantile <= 1.0:
            raise ValueError(f"calibration_quantile: must be in [0.5, 1], got {self.calibration_quantile}")


def evaluation_episodes(config: IDMEvalConfig, embodiment) -> list:
    """The held-out episodes of the training split (or all), decoded."""
    from eva_idm.data import ScanConfig, load_episode, scan_episodes

    index = scan_episodes(config.data, ScanConfig(joint_names=embodiment.joint_names), progress=True)
    records = index.episodes if config.split == "all" else index.split(config.val_fraction, config.seed)[1]
    return [load_episode(record) for record in records[: config.max_episodes]]


def accuracy(decoded: list[np.ndarray], truth: list[np.ndarray], grippers: np.ndarray,
             config: IDMEvalConfig) -> dict:
    """Per-joint MAE and the share of frames within tolerance (per joint and all joints at once)."""
    error = np.abs(np.concatenate(decoded) - np.concatenate(truth))
    tolerance = np.where(grippers, config.gripper_tolerance, config.joint_tolerance)
    within = error <= tolerance
    return {
        "per_joint_mae": error.mean(axis=0).tolist(),
        "mae_arm_joints": float(error[:, ~grippers].mean()),
        "mae_grippers": float(error[:, grippers].mean()),
        "per_joint_within_tolerance": within.mean(axis=0).tolist(),
        "frames_all_within_tolerance": float(within.all(axis=1).mean()),
        "tolerance": tolerance.tolist(),
    }


def separation(model, episodes: list, reward_config, seed: int, batch_size: int) -> dict:
    """Rewards of decoded clean videos vs each artifact; the AUC overall and per artifact."""
    from eva_idm.reward import eva_reward

    rng = np.random.default_rng(seed)
    clean, damaged = [], {name: [] for name in ARTIFACTS}
    for episode in episodes:
        decode = model.decode_video(episode.frames, fps=episode.fps, batch_size=batch_size).numpy()
        clean.append(float(eva_reward(decode, episode.fps, reward_config).reward))
        for name, artifact in ARTIFACTS.items():
            broken = model.decode_video(artifact(episode.frames, rng), fps=episode.fps, batch_size=batch_size)
            damaged[name].append(float(eva_reward(broken.numpy(), episode.fps, reward_config).reward))
    all_damaged = np.concatenate([np.asarray(values) for values in damaged.values()])
    return {
        "auc": separation_auc(np.asarray(clean), all_damaged),
        "auc_per_artifact": {name: separation_auc(np.asarray(clean), np.asarray(values))
                             for name, values in damaged.items()},
        "median_reward_clean": float(np.median(clean)),
        "median_reward_per_artifact": {name: float(np.median(values)) for name, values in damaged.items()},
    }


def start_offset_calibration(decoded: list[np.ndarray], truth: list[np.ndarray], embodiment,
                             config: IDMEvalConfig) -> dict:
    """Per-joint start-offset tolerance: margin x the quantile of the first-frame decode error.

    Never below the IDM's accuracy tolerance, so a very good IDM does not make the gate brittle.
    """
    first_error = np.abs(np.stack([d[0] - t[0] for d, t in zip(decoded, truth, strict=True)]))
    quantile = np.quantile(first_error, config.calibration_quantile, axis=0)
    floor = np.where(embodiment.gripper_mask(), config.gripper_tolerance, config.joint_tolerance)
    tolerance = np.maximum(config.calibration_margin * quantile, floor)
    return {"joint_names": list(embodiment.joint_names), "max_start_offset": tolerance.tolist(),
            "first_frame_error_quantile": quantile.tolist(), "quantile": config.calibration_quantile,
            "margin": config.calibration_margin, "episodes": len(decoded)}


def evaluate(config: IDMEvalConfig) -> dict:
    """Run the evaluation and write its outputs; returns the report."""
    from eva_idm.embodiment import load_embodiment
    from eva_idm.idm import load_checkpoint, read_checkpoint_config
    from eva_idm.idm.checkpoint import CALIBRATION_FILE  # read back by eva_idm.idm.checkpoint.read_calibration
    from eva_idm.reward import RewardConfig, eva_reward
    from eva_training.plots import Series, plot_arm_trajectories

    embodiment = load_embodiment(read_checkpoint_config(config.checkpoint).embodiment)
    model = load_checkpoint(config.checkpoint, embodiment.name, embodiment.joint_names)
    reward_config = RewardConfig.from_embodiment(embodiment)
    episodes = evaluation_episodes(config, embodiment)
    if not episodes:
        raise ValueError(f"data: no usable episodes in {config.data} for split {config.split!r}")
    decoded = [model.decode_video(e.frames, fps=e.fps, batch_size=config.batch_size).numpy() for e in episodes]
    truth = [episode.actions for episode in episodes]
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": config.checkpoint, "episodes": len(episodes), "config": asdict(config),
        "accuracy": accuracy(decoded, truth, embodiment.gripper_mask(), config),
        "median_reward_ground_truth_actions": float(np.median(
            [eva_reward(t, e.fps, reward_config).reward for t, e in zip(truth, episodes, strict=True)])),
        "separation": separation(model, episodes, reward_config, config.seed, config.batch_size),
        "calibration": start_offset_calibration(decoded, truth, embodiment, config),
    }
    for episode, decode in list(zip(episodes, decoded, strict=True))[: config.plot_episodes]:
        reward = eva_reward(decode, episode.fps, reward_config).reward
        series = [Series.at_fps("IDM decode", decode, episode.fps),
                  Series.at_fps("ground truth", episode.actions, episode.fps)]
        plot_arm_trajectories(
            series, embodiment, f"{episode.episode_id}: EVA reward of the decode {reward:.2f}",
            output / f"decode_{episode.episode_id.replace('/', '_')}.png")
    (output / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    if config.calibrate:
        (Path(config.checkpoint) / CALIBRATION_FILE).write_text(json.dumps(report["calibration"], indent=1) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``eva eval idm`` flags, one per :class:`IDMEvalConfig` field."""
    from eva_training.config import add_config_arguments

    add_config_arguments(parser, IDMEvalConfig)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the headline numbers."""
    from eva_training.config import load_config

    report = evaluate(load_config(IDMEvalConfig, args))
    accuracy_report, separation_report = report["accuracy"], report["separation"]
    print(json.dumps({
        "episodes": report["episodes"],
        "mae_arm_joints": accuracy_report["mae_arm_joints"], "mae_grippers": accuracy_report["mae_grippers"],
        "frames_all_within_tolerance": accuracy_report["frames_all_within_tolerance"],
        "artifact_auc": separation_report["auc"], "median_reward_clean": separation_report["median_reward_clean"],
    }, indent=1))
    return 0
