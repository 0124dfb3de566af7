"""``eva data``: make and inspect training data in RoboTwin 2.0's HDF5 layout.

Example::

    eva data synth --out data --episodes 100 --frames 50 --height 96 --width 128 --seed 0

``synth`` renders synthetic episodes of the aloha-agilex arms with MuJoCo (no GPU needed); see
:mod:`eva_sim.synth` for the layout. Each action is one entry of :data:`ACTIONS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``eva data``'s actions and their arguments."""
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    synth_help = "render synthetic aloha-agilex episodes (MuJoCo) in RoboTwin's HDF5 layout"
    synth = actions.add_parser("synth", help=synth_help, description=synth_help)
    synth.add_argument("--out", type=Path, required=True, help="root directory; episodes go to OUT/<task>/<config>/")
    synth.add_argument("--episodes", type=int, default=10, help="number of episodes (default: 10)")
    synth.add_argument("--frames", type=int, default=50, help="frames per episode, 0.06 s apart (default: 50)")
    synth.add_argument("--height", type=int, default=96, help="image height in pixels (default: 96)")
    synth.add_argument("--width", type=int, default=128, help="image width in pixels (default: 128)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the run; same seed, same episodes (default: 0)")
    synth.add_argument("--task", default="synth_reach", help="task name, a directory level (default: synth_reach)")
    synth.add_argument(
        "--config", default="demo_clean", help="task-config name, a directory level (default: demo_clean)"
    )
    synth.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the frames, 1..100 (default: 90)")
    synth.add_argument("--gripper-toggle-probability", type=float, default=0.6,
                       help="chance of a gripper toggle after each arm move; 0 keeps the grippers still (default: 0.6)")
    synth.add_argument(
        "--embodiment",
        default="aloha_agilex",
        help="embodiment name (config/embodiments/<name>.yaml) or a YAML path (default: aloha_agilex)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    return ACTIONS[args.data_action](args)


def run_synth(args: argparse.Namespace) -> int:
    """Validate the arguments, render the episodes with a progress bar, and say where they went."""
    from eva_sim.synth import SynthConfig, synthesize

    config = SynthConfig(
        out_dir=args.out,
        episodes=args.episodes,
        frames=args.frames,
        height=args.height,
        width=args.width,
        seed=args.seed,
        task=args.task,
        task_config=args.config,
        jpeg_quality=args.jpeg_quality,
        embodiment=args.embodiment,
        gripper_toggle_probability=args.gripper_toggle_probability,
    )
    episode_dir = synthesize(config)
    print(f"wrote {config.episodes} episodes of {config.frames} frames to {episode_dir}")
    return 0


# action name -> function that runs it.
ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {"synth": run_synth}
