"""``eva score``: EVA's executability reward and the gate's verdict, as JSON and a picture.

Examples::

    eva score plan.npy --fps 16 --plot plan.png --json-out plan.json
    eva score plan.mp4 --idm runs/idm/checkpoint --plot plan.png
    eva score data/synth_reach/demo_clean/data/episode0.hdf5 --idm runs/idm/checkpoint

A trajectory is a ``T x 14`` array of absolute joint positions (rad; grippers 0..1) in the
embodiment's joint order, stored as ``.npy`` or ``.csv`` (optionally with a header row of joint
names, which must then match the embodiment's). A video (MP4/GIF, a folder of PNG/JPEG frames,
or a RoboTwin HDF5 episode) is first decoded by the IDM checkpoint given with ``--idm``.

The report holds the reward breakdown of the decoded trajectory and the plan-to-motion verdict
(DESIGN.md section 3) against a start pose: the ground truth's first pose for HDF5 episodes,
``--start-pose FILE.npy`` when given, else the trajectory's own first pose.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

DEFAULT_FPS = 16.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``eva score``'s arguments."""
    parser.add_argument("path", type=Path, metavar="INPUT",
                        help="trajectory (.npy/.csv, T x 14) or video (.mp4/.gif, frame folder, .hdf5 episode)")
    parser.add_argument("--fps", type=float, help="frame rate in Hz (default: the video's own, else 16)")
    parser.add_argument("--idm", type=Path, metavar="CHECKPOINT", help="IDM checkpoint directory (videos only)")
    parser.add_argument("--start-pose", type=Path, metavar="NPY", help="measured joint positions (14,) at image time")
    parser.add_argument(
        "--embodiment",
        default="aloha_agilex",
        help="embodiment name (config/embodiments/<name>.yaml) or a YAML path (default: aloha_agilex)",
    )
    parser.add_argument("--json-out", type=Path, metavar="JSON", help="write the report here instead of stdout")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw the joints of each arm over time to this image")


def run(args: argparse.Namespace) -> int:
    """Decode if needed, score, judge, print or write the JSON report, and draw it if asked."""
    from eva_idm.embodiment import load_embodiment
    from eva_idm.motion import GateConfig, plan_to_motion
    from eva_idm.reward import RewardConfig, eva_reward

    embodiment = load_embodiment(args.embodiment)
    trajectory, fps, truth = load_input(args, embodiment)
    breakdown = eva_reward(trajectory, fps, RewardConfig.from_embodiment(embodiment))
    start = read_start_pose(args.start_pose, embodiment) if args.start_pose else (
        truth[0] if truth is not None else trajectory[0])
    motion = plan_to_motion(trajectory, fps, start, embodiment, GateConfig.from_embodiment(embodiment))
    report = {"file": str(args.path), "embodiment": embodiment.name, "fps": fps, "frames": len(trajectory),
              **breakdown.to_dict(), "verdict": verdict_report(motion)}
    if args.plot is not None:
        plot(args, trajectory, fps, truth, breakdown, motion, embodiment)
    text = json.dumps(report, indent=2)
    if args.json_out is None:
        print(text)
    else:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


def load_input(args: argparse.Namespace, embodiment) -> tuple[np.ndarray, float, np.ndarray | None]:
    """``(trajectory, fps, ground truth or None)`` from a trajectory file or an IDM-decoded video."""
    from eva_training.videos import is_video, read_video

    if not is_video(args.path):
        return read_trajectory(args.path, embodiment.joint_names), _first_given(args.fps, DEFAULT_FPS), None
    if args.idm is None:
        raise ValueError(f"--idm: scoring the video {args.path} needs an IDM checkpoint directory")
    from eva_idm.idm import load_checkpoint

    video = read_video(args.path)
    model = load_checkpoint(args.idm, embodiment.name, embodiment.joint_names)
    fps = _first_given(args.fps, video.fps, DEFAULT_FPS)
    return model.decode_video(video.frames, fps=fps).numpy().astype(np.float64), fps, video.ground_truth


def _first_given(*values: float | None) -> float:
    """The first value that is not None (an explicit 0 stays 0 and is rejected downstream)."""
    return next(value for value in values if value is not None)


def read_start_pose(path: Path, embodiment) -> np.ndarray:
    """A ``(D,)`` measured pose from ``.npy``; the shape is checked against the embodiment."""
    pose = read_trajectory(path, embodiment.joint_names) if path.suffix == ".csv" else None
    if pose is None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        pose = np.load(path, allow_pickle=False)
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    if pose.shape != (embodiment.num_joints,):
        raise ValueError(f"--start-pose: {path} holds {pose.size} values, expected {embodiment.num_joints}")
    return pose


def verdict_report(motion) -> dict:
    """The gate's verdict as JSON: the fields an ExecutabilityReport carries."""
    return {
        "executable": motion.executable,
        "code": motion.verdict.name,
        "reason": motion.reason,
        "start_offset": None if motion.start_offset is None else [float(v) for v in motion.start_offset],
        "max_smoothing_deviation": None if np.isnan(motion.max_smoothing_deviation)
        else float(motion.max_smoothing_deviation),
        "time_scale": float(motion.time_scale),
        "position_violations": motion.position_violations,
        "velocity_violations": motion.velocity_violations,
        "acceleration_violations": motion.acceleration_violations,
        "jerk_violations": motion.jerk_violations,
        "offending_joints": list(motion.offending_joints),
        "duration_s": None if motion.trajectory is None else float(motion.trajectory.duration),
    }


def plot(args, trajectory, fps, truth, breakdown, motion, embodiment) -> None:
    """Decode (and ground truth, and the executed spline when accepted) per arm, verdict in the title."""
    from eva_idm.trajectory import sample_uniform
    from eva_training.plots import Series, plot_arm_trajectories

    series = [Series.at_fps("decoded", trajectory, fps)]
    if truth is not None:
        series.append(Series.at_fps("ground truth", truth, fps))
    if motion.trajectory is not None:
        times, positions, _, _ = sample_uniform(motion.trajectory, 50.0)
        series.append(Series(f"executed (time scale {motion.time_scale:.2f})", times, positions))
    reward = f"EVA reward {breakdown.reward:.3f}" if breakdown.valid else f"EVA reward 0 ({breakdown.reason})"
    verdict = "accepted" if motion.executable else f"rejected: {motion.verdict.name}"
    plot_arm_trajectories(series, embodiment, f"{args.path.name}: {reward}, {verdict}", args.plot)


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
