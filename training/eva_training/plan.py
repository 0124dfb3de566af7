r"""``eva plan``: imagine a video plan from a head-camera image and an instruction, without ROS.

Examples::

    eva plan head.png "pick up the red block" --out plans/red
    eva plan head.png "pick up the red block" --out plans/red4 --best-of 4 --idm runs/idm/checkpoint
    eva plan head.png "stack the cups" --out plans/cups --model weights/Wan2.1-I2V-14B-480P-Diffusers \
        --transformer weights/eva-transformer --idm weights/idm --best-of 4

``--model tiny`` (the default) is the random tiny world model: its plans are noise, made in a second
on a CPU, to try the plumbing. ``--model DIR`` loads a local diffusers-format Wan2.1 I2V directory;
``--transformer`` swaps in EVA's weights converted by ``eva convert world-model``.

With ``--idm``, every candidate is decoded by the IDM, scored with EVA's reward and judged by the
plan-to-motion gate against the robot's pose at image time (``--start-pose``; by default the IDM's
decode of the conditioning image, i.e. "the robot is where the image shows it"), exactly as the
planner node scores them (:mod:`eva_planner.best_of_n`). ``--best-of N`` samples N seeds and keeps
the best executable plan.

``--out DIR`` (new or empty) receives the chosen plan as ``plan.mp4`` (H.264), ``plan.gif`` and
``frames/frame_NNN.png`` (the PNG bytes a ``VisualPlan`` would carry), and ``plan.json``: the
settings, the chosen candidate and every candidate's score. A table of the candidates is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

OUTPUT_FORMATS = ("mp4", "gif", "png")
SUMMARY_FILE = "plan.json"
FRAMES_FOLDER = "frames"
# SamplerConfig field -> the flag that sets it (its argparse dest is the flag without dashes).
SAMPLER_FLAGS = {
    "steps": "--steps",
    "num_frames": "--frames",
    "height": "--height",
    "width": "--width",
    "seed": "--seed",
    "guidance_history": "--guidance-history",
    "guidance_language": "--guidance-language",
    "device": "--device",
    "dtype": "--dtype",
    "num_threads": "--threads",
    "cpu_offload": "--cpu-offload",
    "vae_decode": "--vae-decode",
    "vae_tile_size": "--vae-tile-size",
    "vae_tile_stride": "--vae-tile-stride",
    "attention_backend": "--attention-backend",
    "candidate_batch": "--candidate-batch",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``eva plan``'s arguments."""
    parser.add_argument("image", type=Path, metavar="IMAGE", help="conditioning head-camera image (PNG/JPEG)")
    parser.add_argument("instruction", metavar="INSTRUCTION", help="the task, e.g. 'pick up the red block'")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="new or empty output folder")
    parser.add_argument("--model", default="tiny", metavar="tiny|DIR",
                        help="'tiny' (random, CPU, default) or a local diffusers-format Wan2.1 I2V directory")
    parser.add_argument("--transformer", type=Path, metavar="DIR",
                        help="transformer directory used instead of DIR/transformer (EVA's converted weights)")
    parser.add_argument("--best-of", type=int, default=1, metavar="N", help="candidates to sample (default: 1)")
    parser.add_argument("--idm", type=Path, metavar="CHECKPOINT", help="IDM checkpoint that scores the candidates")
    parser.add_argument("--start-pose", type=Path, metavar="NPY",
                        help="measured joint positions (14,) at image time (default: the IDM's decode of IMAGE)")
    parser.add_argument("--embodiment", default="aloha_agilex",
                        help="embodiment name (config/embodiments/<name>.yaml) or a YAML path (default: aloha_agilex)")
    parser.add_argument("--formats", nargs="+", choices=OUTPUT_FORMATS, default=list(OUTPUT_FORMATS),
                        help="what to write besides plan.json (default: all)")
    sampler = parser.add_argument_group(
        "sampler", "defaults come from the model: tiny 9 frames of 64x64, 4 steps, float32 on the CPU; "
        "DIR EVA's 49 frames of 480x640, 40 steps, bfloat16 on CUDA when available")
    sampler.add_argument("--steps", metavar="N", type=int, help="denoising steps")
    sampler.add_argument("--frames", metavar="N", type=int, help="frames per plan, 4k+1")
    sampler.add_argument("--height", metavar="PX", type=int, help="plan height in pixels, a multiple of 16")
    sampler.add_argument("--width", metavar="PX", type=int, help="plan width in pixels, a multiple of 16")
    sampler.add_argument("--seed", metavar="N", type=int,
                         help="seed of the first candidate; candidate i uses seed + i (default: 0)")
    sampler.add_argument("--guidance-history", metavar="W", type=float, help="history guidance weight (EVA: 1.5)")
    sampler.add_argument("--guidance-language", metavar="W", type=float, help="language guidance weight (EVA: 2.5)")
    sampler.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu")
    sampler.add_argument("--dtype", help="transformer dtype: bfloat16, float16 or float32")
    sampler.add_argument("--threads", metavar="N", type=int, help="torch CPU threads while planning (default: torch's)")
    options = parser.add_argument_group(
        "memory and speed", "what each option saves and costs: docs/world_model_options.md (defaults: none, full, "
        "256, 192, native)")
    options.add_argument("--cpu-offload", metavar="none|text_encoder|model",
                         help="components kept on the CPU until their stage runs")
    options.add_argument("--vae-decode", metavar="full|tiled", help="VAE decode; tiled needs less memory, is slower")
    options.add_argument("--vae-tile-size", metavar="PX", type=int, help="tiled decode: tile side, multiple of 8")
    options.add_argument("--vae-tile-stride", metavar="PX", type=int,
                         help="tiled decode: distance between tiles, multiple of 8, at most the tile size")
    options.add_argument("--attention-backend", metavar="NAME",
                         help="diffusers attention backend, e.g. native, _native_cudnn, flash, _flash_3, sage")
    options.add_argument("--candidate-batch", metavar="K", type=int,
                         help="best-of-N candidates denoised together (faster on a GPU, K x the activation memory)")


def run(args: argparse.Namespace) -> int:
    """Check the arguments, load the models, plan (best-of-N when scoring), write the files, print the table."""
    check_arguments(args)
    config = sampler_config(args)
    from eva_idm.embodiment import load_embodiment
    from eva_planner.world_model import bounded_threads
    from eva_training.score import read_start_pose

    image = read_image(args.image)
    embodiment = load_embodiment(args.embodiment)
    start_pose = None if args.start_pose is None else read_start_pose(args.start_pose, embodiment)
    with bounded_threads(config.num_threads):
        scorer = None if args.idm is None else load_scorer(args.idm, embodiment, config.device)
        if scorer is not None and start_pose is None:
            start_pose = still_pose(scorer.idm, image, config)
        world_model = load_planner_model(args, config)
        with flag_errors(SAMPLER_FLAGS):
            world_model.check_attention_backend(config)
        plan, candidates, best_index = make_plan(args, config, world_model, image, scorer, start_pose)
    files = write_outputs(plan.frames, plan.fps, args.out, args.formats)
    summary = {
        "image": str(args.image),
        "instruction": args.instruction,
        "model": world_model.model_id,
        "embodiment": embodiment.name,
        "idm": None if args.idm is None else str(args.idm),
        "sampler": dataclasses.asdict(config),
        "best_of": args.best_of,
        "best_index": best_index,
        "seed": plan.seed,
        "executable": None if not candidates else candidates[best_index].executable,
        "start_pose": None if start_pose is None else start_pose.tolist(),
        "frames": len(plan.frames),
        "fps": plan.fps,
        "timings": plan.timings,
        "files": files,
        "candidates": [candidate.to_dict() for candidate in candidates],
    }
    (args.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_candidates(candidates, best_index, plan.seed)
    print(f"wrote {', '.join([*files.values(), SUMMARY_FILE])} to {args.out}")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """Cheap checks before any model is loaded, so a typo costs seconds, not a 14B load."""
    if not args.image.is_file():
        raise FileNotFoundError(f"IMAGE: {args.image}: no such file")
    if args.best_of < 1:
        raise ValueError(f"--best-of: must be at least 1, got {args.best_of}")
    if args.idm is None and args.best_of > 1:
        raise ValueError(f"--best-of {args.best_of}: choosing among candidates needs --idm CHECKPOINT to score them")
    if args.idm is None and args.start_pose is not None:
        raise ValueError(f"--start-pose {args.start_pose}: the pose gates plans scored with --idm CHECKPOINT")
    if args.idm is not None and not args.idm.is_dir():
        raise FileNotFoundError(f"--idm: {args.idm}: no such checkpoint directory")
    if args.model != "tiny" and not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model: {args.model}: no such model directory (or use --model tiny)")
    if args.model == "tiny" and args.transformer is not None:
        raise ValueError(f"--transformer {args.transformer}: only with --model DIR, not with --model tiny")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise ValueError(f"--out: {args.out} exists and is not an empty folder; choose a new one")


def sampler_config(args: argparse.Namespace):
    """The model's preset :class:`~eva_planner.world_model.SamplerConfig` with the flags given on top."""
    import torch

    from eva_planner.tiny import TINY_SAMPLER_CONFIG
    from eva_planner.world_model import SamplerConfig

    if args.model == "tiny":
        if args.dtype not in (None, "float32"):
            raise ValueError(f"--dtype: the tiny model is built in float32, got {args.dtype!r}")
        preset = TINY_SAMPLER_CONFIG
    else:
        preset = SamplerConfig(device="cuda" if torch.cuda.is_available() else "cpu")
    return replace_from_flags(preset, args, SAMPLER_FLAGS)


def replace_from_flags(preset, args: argparse.Namespace, flags: dict[str, str]):
    """``dataclasses.replace(preset, ...)`` with the ``flags`` (field -> flag) given on the command line.

    The dataclass validates; its error names the field, which is reworded to name the flag the user typed.
    """
    dests = {field: flag.removeprefix("--").replace("-", "_") for field, flag in flags.items()}
    overrides = {field: getattr(args, dest) for field, dest in dests.items() if getattr(args, dest) is not None}
    with flag_errors(flags):
        return dataclasses.replace(preset, **overrides)


@contextlib.contextmanager
def flag_errors(flags: dict[str, str]) -> Iterator[None]:
    """A ValueError that starts with a field name of ``flags`` (field -> flag) is re-raised naming the flag instead."""
    try:
        yield
    except ValueError as error:
        message = str(error)
        field = re.match(r"\w+", message)
        if field and field[0] in flags:
            message = flags[field[0]] + message[field.end() :]
        raise ValueError(message) from None


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image; OpenCV reads BGR, so the channels are swapped here once."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"IMAGE: {path}: not a readable image (PNG or JPEG expected)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_planner_model(args: argparse.Namespace, config):
    """The tiny random world model, or the one in ``--model DIR`` (with ``--transformer`` if given)."""
    if args.model == "tiny":
        from eva_planner.tiny import build_tiny_world_model

        return build_tiny_world_model(seed=0)
    from eva_planner.loading import load_world_model

    return load_world_model(
        args.model,
        transformer_directory=args.transformer,
        dtype=config.dtype,
        device=config.device,
        cpu_offload=config.cpu_offload,
    )


def load_scorer(idm_path: Path, embodiment, device: str):
    """The IDM (loaded before the world model: it is small, so a wrong checkpoint fails fast) in a PlanScorer."""
    from eva_idm.idm import load_checkpoint
    from eva_planner.best_of_n import PlanScorer

    return PlanScorer(load_checkpoint(idm_path, embodiment.name, embodiment.joint_names, device=device), embodiment)


def still_pose(idm, image: np.ndarray, config) -> np.ndarray:
    """The IDM's decode of the conditioning image framed like the plan: the default measured pose.

    A one-frame video decodes as a still robot, which is what EVA assumes of the conditioning image.
    """
    from eva_planner.world_model import prepare_image

    still = prepare_image(image, config.height, config.width)[None]
    return idm.decode_video(still, config.fps)[0].numpy().astype(np.float64)


def make_plan(args: argparse.Namespace, config, world_model, image: np.ndarray, scorer, start_pose):
    """``(plan, candidate scores, index of the chosen one)``; one unscored plan without a scorer."""
    from tqdm.auto import tqdm

    from eva_planner.best_of_n import best_of_n

    with tqdm(total=args.best_of * config.steps, desc=f"plan ({args.best_of} x {config.steps} steps)",
              unit="step") as bar:  # fmt: skip

        def on_step(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        if scorer is None:
            return world_model.generate(image, args.instruction, config, on_step=on_step), (), 0
        result = best_of_n(
            world_model, image, args.instruction, config, args.best_of, scorer, start_pose, on_step=on_step
        )
    return result.best, result.candidates, result.best_index


def write_outputs(frames: np.ndarray, fps: float, out: Path, formats: list[str]) -> dict[str, str]:
    """Write the plan in ``formats``; returns format -> path relative to ``out``."""
    import imageio.v3 as iio

    from eva_idm.frames import encode_frames

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if "mp4" in formats:
        iio.imwrite(out / "plan.mp4", frames, plugin="FFMPEG", fps=fps, codec="libx264")
        files["mp4"] = "plan.mp4"
    if "gif" in formats:
        iio.imwrite(out / "plan.gif", frames, extension=".gif", duration=1000.0 / fps, loop=0)
        files["gif"] = "plan.gif"
    if "png" in formats:
        (out / FRAMES_FOLDER).mkdir()
        for index, encoded in enumerate(encode_frames(frames, "png")):
            (out / FRAMES_FOLDER / f"frame_{index:03d}.png").write_bytes(encoded.data)
        files["png"] = f"{FRAMES_FOLDER}/"
    return files


def print_candidates(candidates, best_index: int, seed: int) -> None:
    """The score table of every candidate (the chosen one starred), or why there is none."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not candidates:
        console.print(f"plan with seed {seed}: not scored (give --idm CHECKPOINT to decode and gate it)")
        return
    chosen = candidates[best_index]
    verdict = "executable" if chosen.executable else "NOT executable: no candidate passed the gate"
    table = Table(title=f"best of {len(candidates)}", caption=f"* chosen: seed {chosen.seed}, {verdict}")
    for column in ("#", "seed", "reward", "verdict"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for index, score in enumerate(candidates):
        marker = f"{index}*" if index == best_index else str(index)
        table.add_row(marker, str(score.seed), f"{score.reward:.3f}", score.verdict, Text(score.reason))
    console.print(table)
