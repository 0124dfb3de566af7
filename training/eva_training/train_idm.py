"""Train the resnet_plus IDM on RoboTwin-layout episodes (``eva train idm``).

The recipe follows EVA's IDM trainer (eva_method.md section 2.4): SmoothL1 (beta 0.1) on
normalised targets, AdamW (lr 1e-3, weight decay 1e-2), cosine schedule with 10 % linear
warm-up, gradient-norm clip 1.0, colour jitter and the horizontal flip with arm swap. Training
runs through accelerate, so the same command uses one CPU, one GPU or many GPUs
(``accelerate launch -m eva_training.cli train idm ...``).

A run directory holds:
  checkpoint/       the trained IDM (config.json + model.safetensors), loadable by the IDM node
  state/            accelerate's full training state, for ``--resume true``
  metrics.csv       step, loss, learning rate, samples/s and validation MAE
  train_config.yaml the resolved config; command.txt the exact command line
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from eva_training.config import save_config

SUPPORTED_PRECISIONS = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class IDMTrainConfig:
    """Everything that defines an IDM training run; see the module docstring for the recipe."""

    data: str = field(default="", metadata={"help": "root directory of RoboTwin-layout episodes"})
    output_dir: str = field(default="runs/idm", metadata={"help": "run directory"})
    embodiment: str = field(default="aloha_agilex", metadata={"help": "embodiment name or YAML path"})
    backbone_depth: int = field(default=18, metadata={"help": "ResNet depth: 18, 34 or 50"})
    output_stride: int = field(default=16, metadata={"help": "32, or 16/8 to dilate layer4 for small inputs"})
    input_size: tuple[int, ...] = field(default=(96, 128), metadata={"help": "IDM input height width [px]"})
    window_s: float = field(default=1 / 16, metadata={"help": "frame window half-width [s]"})
    batch_size: int = field(default=32, metadata={"help": "samples per step (per process)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "share of steps with linear warm-up"})
    max_steps: int = field(default=2000, metadata={"help": "optimiser steps (the cosine schedule's length)"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop early after this wall time; 0 = no limit"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip"})
    smooth_l1_beta: float = field(default=0.1, metadata={"help": "SmoothL1 beta on normalised targets"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of episodes held out for validation"})
    eval_every: int = field(default=250, metadata={"help": "validate every N steps"})
    save_every: int = field(default=500, metadata={"help": "save resumable state every N steps"})
    seed: int = field(default=0, metadata={"help": "seed for split, order, augmentation and init"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default"})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16"})
    flip_probability: float = field(default=0.5, metadata={"help": "horizontal flip with arm swap"})
    color_jitter: bool = field(default=True, metadata={"help": "colour jitter augmentation"})
    max_bad_fraction: float = field(default=0.05, metadata={"help": "fail when more episodes are corrupt"})
    resume: bool = field(default=False, metadata={"help": "continue from output_dir/state"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: give the root directory of the training episodes (--data DIR)")
        if len(self.input_size) != 2 or min(self.input_size) < 16:
            raise ValueError(f"input_size: expected height width of at least 16 px, got {self.input_size}")
        for name in ("batch_size", "max_steps", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction: must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.mixed_precision not in SUPPORTED_PRECISIONS:
            raise ValueError(f"mixed_precision: use one of {SUPPORTED_PRECISIONS}, got {self.mixed_precision!r}")


class MetricsLog:
    """Appends one CSV row per logged step (header written once, resumed runs append)."""

    COLUMNS = ("step", "loss", "learning_rate", "samples_per_s", "val_mae_arm", "val_mae_gripper", "elapsed_s")

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            with path.open("w", newline="") as stream:
                csv.writer(stream).writerow(self.COLUMNS)

    def write(self, **row: float | int | None) -> None:
        """Append a row; missing columns stay empty."""
        with self.path.open("a", newline="") as stream:
            csv.writer(stream).writerow(["" if row.get(name) is None else row[name] for name in self.COLUMNS])


def validation_mae(model, episodes, embodiment, max_episodes: int = 8) -> tuple[float, float]:
    """Mean absolute error of whole-episode decodes on arm joints and grippers (raw units)."""
    import numpy as np

    errors = []
    for episode in episodes[:max_episodes]:
        decoded = model.decode_video(episode.frames, fps=episode.fps).numpy()
        errors.append(np.abs(decoded - episode.actions))
    error = np.concatenate(errors)
    grippers = embodiment.gripper_mask()
    return float(error[:, ~grippers].mean()), float(error[:, grippers].mean())


def cosine_schedule(optimizer, config: IDMTrainConfig):
    """Linear warm-up then cosine decay to zero over ``max_steps`` (transformers' schedule)."""
    from transformers import get_cosine_schedule_with_warmup

    warmup = int(round(config.warmup_fraction * config.max_steps))
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=config.max_steps)


def train(config: IDMTrainConfig, command: str = "") -> Path:
    """Run (or resume) training; returns the directory of the trained checkpoint."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from eva_idm.embodiment import load_embodiment
    from eva_idm.idm import IDMConfig, ResNetPlusIDM, save_checkpoint

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(config.seed)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    embodiment = load_embodiment(config.embodiment)
    train_episodes, val_episodes = load_split(config, embodiment)

    model = ResNetPlusIDM(IDMConfig(
        embodiment=embodiment.name, joint_names=embodiment.joint_names, backbone_depth=config.backbone_depth,
        output_stride=config.output_stride, input_size=tuple(config.input_size), window_s=config.window_s,
        action_dim=embodiment.num_joints))
    dataset = training_dataset(train_episodes, model.config, config)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=len(dataset) > config.batch_size,
                        num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = cosine_schedule(optimizer, config)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step = resume_step(accelerator, output) if config.resume else 0
    if accelerator.is_main_process:
        save_config(config, output / "train_config.yaml")
        (output / "command.txt").write_text(command + "\n")
    metrics = MetricsLog(output / "metrics.csv")
    started = time.monotonic()
    progress = tqdm(total=config.max_steps, initial=step, desc="train idm", disable=not accelerator.is_main_process)
    epoch = 0
    while step < config.max_steps and not out_of_time(started, config):
        dataset.set_epoch(epoch)
        epoch += 1
        for windows, targets in loader:
            window_started = time.monotonic()
            predicted = model.forward_normalized(windows)
            loss = torch.nn.functional.smooth_l1_loss(
                predicted, accelerator.unwrap_model(model).normalize_actions(targets), beta=config.smooth_l1_beta)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
            row = {"step": step, "loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0],
                   "samples_per_s": len(targets) / (time.monotonic() - window_started),
                   "elapsed_s": time.monotonic() - started}
            if step % config.eval_every == 0 or step == config.max_steps:
                row["val_mae_arm"], row["val_mae_gripper"] = validation_mae(
                    accelerator.unwrap_model(model), val_episodes, embodiment)
                model.train()
            metrics.write(**row)
            if step % config.save_every == 0:
                save_state(accelerator, output, step)
            if step >= config.max_steps or out_of_time(started, config):
                break
    progress.close()
    save_state(accelerator, output, step)
    checkpoint = output / "checkpoint"
    if accelerator.is_main_process:
        save_checkpoint(accelerator.unwrap_model(model), checkpoint)
    return checkpoint


def out_of_time(started: float, config: IDMTrainConfig) -> bool:
    """True once the run has used its ``max_minutes`` budget."""
    return config.max_minutes > 0 and time.monotonic() - started > 60.0 * config.max_minutes


def save_state(accelerator, output: Path, step: int) -> None:
    """Save accelerate's state (model, optimiser, scheduler, RNGs) and the step to resume from."""
    accelerator.save_state(str(output / "state"))
    if accelerator.is_main_process:
        (output / "state" / "progress.json").write_text(json.dumps({"step": step}))


def resume_step(accelerator, output: Path) -> int:
    """Restore the state saved in ``output/state``; returns the step it was saved at."""
    state = output / "state"
    if not (state / "progress.json").is_file():
        raise FileNotFoundError(f"resume: no saved state in {state}; train without --resume true first")
    accelerator.load_state(str(state))
    return int(json.loads((state / "progress.json").read_text())["step"])


def load_split(config: IDMTrainConfig, embodiment):
    """Scan the episodes (quarantining corrupt ones), then split whole episodes into train and val."""
    from eva_idm.data import ScanConfig, load_episode, scan_episodes

    index = scan_episodes(config.data, ScanConfig(joint_names=embodiment.joint_names,
                                                  max_bad_fraction=config.max_bad_fraction), progress=True)
    print(index.summary(), flush=True)
    index.check_bad_fraction(config.max_bad_fraction)
    train_records, val_records = index.split(config.val_fraction, config.seed)
    return train_records, [load_episode(record) for record in val_records]


def training_dataset(records, idm_config, config: IDMTrainConfig):
    """Windowed, augmented samples with every episode's frames decoded once into memory."""
    from eva_idm.data import ArmMirror, AugmentConfig, IDMWindowDataset, WindowAugmentation
    from eva_idm.embodiment import load_embodiment

    augmentation = WindowAugmentation(
        AugmentConfig(color_jitter=config.color_jitter, flip_probability=config.flip_probability),
        ArmMirror.from_embodiment(load_embodiment(config.embodiment)))
    dataset = IDMWindowDataset(records, idm_config, augmentation, seed=config.seed)
    dataset.preload(progress=True)
    return dataset
