"""Read plan videos for scoring: MP4/GIF files, folders of frames, RoboTwin HDF5 episodes.

Every reader returns RGB uint8 frames ``(T, H, W, 3)``, the frame rate when the source records
it, and, for HDF5 episodes, the ground-truth joint commands the video was recorded with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
EPISODE_SUFFIXES = (".hdf5", ".h5")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Video:
    """Frames with what the source says about them."""

    frames: np.ndarray
    fps: float | None
    ground_truth: np.ndarray | None = None


def is_video(path: Path) -> bool:
    """True for inputs :func:`read_video` understands (a folder counts as a frame folder)."""
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES + EPISODE_SUFFIXES


def read_video(path: Path) -> Video:
    """Read any supported video input; errors name the file and what is wrong with it."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_frame_folder(path)
    suffix = path.suffix.lower()
    if suffix in EPISODE_SUFFIXES:
        return _read_episode(path)
    if suffix in VIDEO_SUFFIXES:
        return _read_video_file(path)
    raise ValueError(f"{path}: unsupported video type {suffix!r}; use {VIDEO_SUFFIXES + EPISODE_SUFFIXES} or a folder")


def _read_video_file(path: Path) -> Video:
    import imageio.v3 as iio

    try:
        frames = np.asarray(iio.imread(path))
        metadata = iio.immeta(path)
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: not a readable video: {error}") from None
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"{path}: expected colour frames (T, H, W, 3), got shape {frames.shape}")
    fps = metadata.get("fps")
    if fps is None and metadata.get("duration"):  # GIF: duration per frame in ms
        fps = 1000.0 / float(metadata["duration"])
    return Video(np.ascontiguousarray(frames[..., :3]).astype(np.uint8), float(fps) if fps else None)


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _read_frame_folder(path: Path) -> Video:
    files = sorted((item for item in path.iterdir() if item.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
    if not files:
        raise ValueError(f"{path}: no {FRAME_SUFFIXES} frames in this folder")
    frames = []
    for file in files:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{file}: not a readable image")
        if frames and image.shape != frames[0].shape:
            raise ValueError(f"{file}: frame size {image.shape[:2]} differs from the first frame's "
                             f"{frames[0].shape[:2]}")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return Video(np.stack(frames), None)


def _read_episode(path: Path) -> Video:
    from eva_idm.data import ScanConfig, episode_files, inspect_episode, load_episode

    episode = load_episode(inspect_episode(episode_files(path), ScanConfig()))
    return Video(episode.frames, episode.fps, episode.actions)
