"""``eva score``: EVA's executability reward of a decoded joint trajectory, as JSON and a picture.

Example::

    eva score plan.npy --fps 16 --plot plan.png --json-out plan.json

The input is a ``T x 14`` array of absolute joint positions (rad; grippers 0..1) in the
embodiment's joint order, stored as ``.npy`` or ``.csv`` (optionally with a header row of joint
names, which must then match the embodiment's). Each input type is one entry of
:data:`TRAJECTORY_READERS`; plan videos decoded by an IDM checkpoint will be another input type.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from eva_idm.embodiment import Embodiment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``eva score``'s arguments."""
    parser.add_argument("path", type=Path, metavar="TRAJECTORY", help="decoded trajectory, T x 14, as .npy or .csv")
    parser.add_argument("--fps", type=float, default=16.0, help="frame rate of the trajectory in Hz (default: 16)")
    parser.add_argument(
        "--embodiment",
        default="aloha_agilex",
        help="embodiment name (config/embodiments/<name>.yaml) or a YAML path (default: aloha_agilex)",
    )
    parser.add_argument("--json-out", type=Path, metavar="JSON", help="write the report here instead of stdout")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw the joints of each arm over time to this image")


def run(args: argparse.Namespace) -> int:
    """Score the trajectory, print or write the JSON report, and draw it if asked."""
    from eva_idm.embodiment import load_embodiment
    from eva_idm.reward import RewardConfig, eva_reward

    embodiment = load_embodiment(args.embodiment)
    trajectory = read_trajectory(args.path, embodiment.joint_names)
    breakdown = eva_reward(trajectory, args.fps, RewardConfig.from_embodiment(embodiment))
    report = {
        "file": str(args.path),
        "embodiment": embodiment.name,
        "fps": args.fps,
        "frames": len(trajectory),
        **breakdown.to_dict(),
    }
    if args.plot is not None:
        if breakdown.valid:
            title = f"{args.path.name}: EVA reward {breakdown.reward:.3f} (penalty {breakdown.penalty:.1f})"
        else:
            title = f"{args.path.name}: EVA reward 0 ({breakdown.reason})"
        plot_trajectory(trajectory, args.fps, embodiment, title, args.plot)
    text = json.dumps(report, indent=2)
    if args.json_out is None:
        print(text)
    else:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


def read_trajectory(path: Path, joint_names: Sequence[str]) -> np.ndarray:
    """Read a ``(T, len(joint_names))`` float64 trajectory from a file of a known type.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: unknown file type, unreadable content or wrong shape; the message names the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    reader = TRAJECTORY_READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(TRAJECTORY_READERS)}")
    trajectory = reader(path, joint_names)
    if trajectory.ndim != 2 or trajectory.shape[1] != len(joint_names):
        raise ValueError(f"{path}: expected shape (T, {len(joint_names)}), got {trajectory.shape}")
    return trajectory


def plot_trajectory(trajectory: np.ndarray, fps: float, embodiment: Embodiment, title: str, path: Path) -> None:
    """Draw each arm's joints over time in its own subplot (like EVA's Figure 2)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = embodiment.arm_slices()
    grippers = embodiment.gripper_mask()
    times = np.arange(len(trajectory)) / fps
    figure = Figure(figsize=(10, 3 * len(arms)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(arms), 1, sharex=True, squeeze=False)[:, 0]
    for axis, (arm, joints) in zip(axes, arms.items(), strict=True):
        for index in range(joints.start, joints.stop):
            style = "--" if grippers[index] else "-"
            axis.plot(times, trajectory[:, index], style, label=embodiment.joint_names[index])
        axis.set_title(f"{arm} arm")
        axis.set_ylabel("position (rad; gripper 0..1)")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes[-1].set_xlabel("time (s)")
    figure.suptitle(title)
    figure.savefig(path, dpi=120)


def _read_npy(path: Path, joint_names: Sequence[str]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array: {error}") from None
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{path}: expected a real-valued numeric array, got dtype {array.dtype}")
    return array.astype(np.float64)


def _read_csv(path: Path, joint_names: Sequence[str]) -> np.ndarray:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    header = [cell.strip() for cell in lines[0].split(",")] if lines else []
    has_header = bool(header) and not all(_is_number(cell) for cell in header)
    if has_header and header != list(joint_names):
        raise ValueError(f"{path}: header {header} does not match the embodiment's joint names {list(joint_names)}")
    rows = lines[1:] if has_header else lines
    if not rows:
        raise ValueError(f"{path}: no data rows")
    try:
        return np.loadtxt(rows, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{path}: not a numeric CSV: {error}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# File suffix -> reader of a (T, D) array; read_trajectory checks the shape.
TRAJECTORY_READERS: dict[str, Callable[[Path, Sequence[str]], np.ndarray]] = {
    ".npy": _read_npy,
    ".csv": _read_csv,
}
