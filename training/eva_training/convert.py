r"""``eva convert``: turn the authors' released pickle checkpoints into safetensors directories, once.

Examples::

    eva convert world-model eva_i2v_14B.ckpt weights/eva-transformer \
        --transformer-config weights/Wan2.1-I2V-14B-480P-Diffusers/transformer
    eva convert idm IDM_singleview.pt weights/idm --backbone-depth 50 --input-size 512 512
    eva convert original-wan weights/Wan2.1-I2V-14B-480P weights/Wan2.1-I2V-14B-480P-Diffusers

Unpickling can run code, so the pickles are opened with ``torch.load(weights_only=True)`` and nothing
else; robots and training jobs then load only the safetensors directories written here:

* ``world-model``: EVA's Lightning checkpoint -> a diffusers transformer directory (``config.json`` +
  safetensors shards), for ``eva plan --model WAN_DIR --transformer OUT_DIR`` and the planner node.
  ``--transformer-config`` is the base model's ``transformer/config.json`` (or its folder); by default
  the Wan2.1-I2V-14B architecture. Every key must map to a parameter of that shape.
* ``idm``: ``IDM_singleview.pt`` -> an IDM checkpoint directory (``config.json`` + ``model.safetensors``)
  for ``--idm``. The flags describe the network the file holds (defaults: the released ResNet-50 at
  512x512, frames t-1, t, t+1 at 16 fps); the file's normalisation statistics are kept.
* ``original-wan``: the original ``Wan2.1-I2V-14B-480P`` directory (``config.json``, DiT shards, the
  VAE, T5 and CLIP ``.pth`` pickles, the tokenizer) -> a diffusers-format directory (``model_index.json``
  + component folders of safetensors) for ``--model``. The planner also reads the original directory
  directly, but then unpickles on every start.

An existing ``OUT_DIR`` is refused, and the output appears only once complete, so an interrupted
conversion never leaves a directory that looks loadable.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path

# IDMConfig field -> the flag that sets it (its argparse dest is the flag without dashes).
IDM_FLAGS = {
    "backbone_depth": "--backbone-depth",
    "output_stride": "--output-stride",
    "input_size": "--input-size",
    "num_frames": "--num-frames",
    "window_s": "--window-s",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``eva convert world-model`` and ``eva convert idm``."""
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    world_help = "EVA's eva_i2v_14B.ckpt -> a diffusers transformer directory (safetensors)"
    world = kinds.add_parser("world-model", help=world_help, description=world_help)
    world.add_argument("checkpoint", type=Path, metavar="EVA.ckpt", help="EVA's Lightning checkpoint")
    world.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new directory to write")
    world.add_argument("--transformer-config", type=Path, metavar="DIR",
                       help="base model's transformer/config.json or its folder (default: Wan2.1-I2V-14B)")
    wan_help = "the original Wan2.1-I2V-14B-480P directory -> a diffusers-format directory (safetensors)"
    wan = kinds.add_parser("original-wan", help=wan_help, description=wan_help)
    wan.add_argument("checkpoint", type=Path, metavar="WAN_DIR", help="the original Wan2.1 I2V directory")
    wan.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new directory to write")
    idm_help = "the released IDM_singleview.pt -> an IDM checkpoint directory (safetensors)"
    idm = kinds.add_parser("idm", help=idm_help, description=idm_help)
    idm.add_argument("checkpoint", type=Path, metavar="IDM.pt", help="the released IDM pickle")
    idm.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new directory to write")
    idm.add_argument("--backbone-depth", metavar="N", type=int, help="ResNet depth: 18, 34 or 50 (default: 50)")
    idm.add_argument("--output-stride", metavar="N", type=int, help="backbone output stride: 32, 16 or 8 (default: 32)")
    idm.add_argument("--input-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                     help="IDM input size in pixels (default: 512 512)")
    idm.add_argument("--num-frames", metavar="N", type=int, help="frames per window, odd (default: 3)")
    idm.add_argument("--window-s", metavar="S", type=float, help="seconds between window frames (default: 0.0625)")


def run(args: argparse.Namespace) -> int:
    """Convert, then say what was written and how to use it."""
    if args.out_dir.exists():
        raise ValueError(f"OUT_DIR: {args.out_dir} already exists; conversion never overwrites, choose a new folder")
    out_dir, usage = CONVERTERS[args.kind](args)
    files = sorted(path.name for path in out_dir.iterdir())
    size_mb = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file()) / 1e6
    print(f"wrote {out_dir} ({', '.join(files)}; {size_mb:.1f} MB); use it with {usage}")
    return 0


def convert_world_model(args: argparse.Namespace) -> tuple[Path, str]:
    """EVA's checkpoint -> a diffusers transformer directory."""
    from eva_planner.loading import convert_checkpoint

    out_dir = convert_checkpoint(args.checkpoint, args.out_dir, args.transformer_config)
    return out_dir, f"eva plan ... --model WAN_DIR --transformer {out_dir}"


def convert_original_wan(args: argparse.Namespace) -> tuple[Path, str]:
    """The original Wan2.1 I2V directory -> a diffusers-format model directory."""
    from eva_planner.original_wan import convert_original_wan as convert

    out_dir = convert(args.checkpoint, args.out_dir)
    return out_dir, f"eva plan ... --model {out_dir} (or the planner's model parameter)"


def convert_idm(args: argparse.Namespace) -> tuple[Path, str]:
    """The released IDM pickle -> an IDM checkpoint directory, written under a temporary name first."""
    from eva_idm.idm import convert_released_checkpoint

    config = idm_config(args)
    partial = args.out_dir.with_name(f".{args.out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    convert_released_checkpoint(args.checkpoint, partial, config)
    os.replace(partial, args.out_dir)
    return args.out_dir, f"--idm {args.out_dir}"


def idm_config(args: argparse.Namespace):
    """The released architecture (:class:`~eva_idm.idm.IDMConfig` defaults) with the flags given on top."""
    from eva_idm.idm import IDMConfig
    from eva_training.plan import replace_from_flags

    if args.input_size is not None:
        args = argparse.Namespace(**{**vars(args), "input_size": tuple(args.input_size)})
    return replace_from_flags(IDMConfig(), args, IDM_FLAGS)


# KIND -> converter returning (the directory written, how to use it).
CONVERTERS: dict[str, Callable[[argparse.Namespace], tuple[Path, str]]] = {
    "world-model": convert_world_model,
    "idm": convert_idm,
    "original-wan": convert_original_wan,
}
