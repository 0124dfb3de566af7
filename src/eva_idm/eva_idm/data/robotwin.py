"""Read and validate RoboTwin 2.0 episodes (the classic HDF5 layout of ``notes/robotwin_hdf5.md`` §4.2).

Layout under a data root::

    <root>/<task>/<task_config>/data/episode{i}.hdf5
    <root>/<task>/<task_config>/instructions/episode{i}.json    {"seen": [...], "unseen": [...]}
    <root>/<task>/<task_config>/scene_info.json                  optional; {"episode_{i}": {"dt": seconds, ...}}

Only two datasets matter for the IDM: ``observation/head_camera/rgb`` (one JPEG per frame) and
``joint_action/vector`` (``(T, 14)`` float64 drive targets). RoboTwin hands RGB arrays straight to
``cv2.imencode``, which takes them for BGR, so ``cv2.imdecode`` gives RGB back; PIL would swap red
and blue. Frames are 0.06 s apart (``save_freq`` 15 at a 1/250 s step) unless the episode's
``scene_info.json`` entry records a ``dt`` (our synthetic episodes do).

Every episode is validated in full when scanned, every JPEG included. A faulty episode is
*quarantined* with its reason, never silently skipped, and a scan fails when more than
``max_bad_fraction`` of the episodes are faulty: a few corrupt files in a large download are
expected, many mean the data or the reader is wrong.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
from tqdm.auto import tqdm

from eva_idm.idm.model import ALOHA_AGILEX_JOINT_NAMES
from eva_idm.reward import non_finite_reason

RGB_DATASET = "observation/head_camera/rgb"
ACTION_DATASET = "joint_action/vector"
ROBOTWIN_FRAME_INTERVAL_S = 0.06
JPEG_START = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
EPISODE_FILE_PATTERN = re.compile(r"episode(\d+)\.hdf5")
REASONS_IN_ERROR = 5

logger = logging.getLogger(__name__)


class EpisodeFault(str, Enum):
    """Why an episode was quarantined; the values are what reports and counts show."""

    UNREADABLE_FILE = "unreadable_file"
    BAD_FILE_NAME = "bad_file_name"
    MISSING_DATASET = "missing_dataset"
    BAD_SHAPE = "bad_shape"
    LENGTH_MISMATCH = "length_mismatch"
    NON_FINITE_ACTION = "non_finite_action"
    BAD_JPEG = "bad_jpeg"
    BAD_INSTRUCTIONS = "bad_instructions"
    BAD_METADATA = "bad_metadata"


class EpisodeError(ValueError):
    """An episode that cannot be used; ``fault`` classifies it, the message names the field and value."""

    def __init__(self, fault: EpisodeFault, message: str):
        super().__init__(message)
        self.fault = fault


@dataclass(frozen=True)
class EpisodeFiles:
    """Where one episode lives: its HDF5 file and its (possibly absent) instruction file."""

    task: str
    task_config: str
    index: int
    hdf5_path: Path
    instructions_path: Path
    scene_info_path: Path

    @property
    def episode_id(self) -> str:
        """``<task>/<task_config>/episode{i}``: unique within a data root, stable across machines."""
        return f"{self.task}/{self.task_config}/episode{self.index}"


@dataclass(frozen=True)
class Instructions:
    """The episode's language instructions as RoboTwin generates them (seen and unseen templates)."""

    seen: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class EpisodeRecord:
    """A validated episode without its pixels: small enough to keep for thousands of episodes.

    Attributes:
        files: where the episode lives.
        actions: ``(T, D)`` float64 absolute joint commands (``joint_action/vector``).
        frame_interval_s: time between frames, in seconds.
        image_size: ``(height, width)`` of the head-camera frames.
        instructions: the episode's instructions (empty when the file is absent and not required).
    """

    files: EpisodeFiles
    actions: np.ndarray
    frame_interval_s: float
    image_size: tuple[int, int]
    instructions: Instructions

    @property
    def episode_id(self) -> str:
        """See :attr:`EpisodeFiles.episode_id`."""
        return self.files.episode_id

    @property
    def num_frames(self) -> int:
        """Number of frames (and actions)."""
        return len(self.actions)

    @property
    def fps(self) -> float:
        """Frame rate in Hz (about 16.7 for RoboTwin)."""
        return 1.0 / self.frame_interval_s


@dataclass(frozen=True, eq=False)
class Episode:
    """A validated episode with its decoded frames, ``(T, H, W, 3)`` uint8 RGB."""

    record: EpisodeRecord
    frames: np.ndarray

    @property
    def episode_id(self) -> str:
        """See :attr:`EpisodeFiles.episode_id`."""
        return self.record.episode_id

    @property
    def actions(self) -> np.ndarray:
        """``(T, D)`` float64 absolute joint commands."""
        return self.record.actions

    @property
    def fps(self) -> float:
        """Frame rate in Hz."""
        return self.record.fps


@dataclass(frozen=True)
class QuarantinedEpisode:
    """An episode left out of training, with the fault and a message that names the field and value."""

    files: EpisodeFiles
    fault: EpisodeFault
    reason: str


@dataclass(frozen=True)
class ScanConfig:
    """How episodes are read and how many faulty ones a run tolerates.

    Attributes:
        joint_names: names of the action dimensions, in order; fixes the expected action width.
        frame_interval_s: time between frames when ``scene_info.json`` does not say (RoboTwin: 0.06 s).
        max_bad_fraction: largest share of quarantined episodes before the scan fails.
        require_instructions: quarantine episodes without an instruction file (world-model
            training needs them; the IDM does not).
    """

    joint_names: tuple[str, ...] = ALOHA_AGILEX_JOINT_NAMES
    frame_interval_s: float = ROBOTWIN_FRAME_INTERVAL_S
    max_bad_fraction: float = 0.05
    require_instructions: bool = False

    def __post_init__(self) -> None:
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"joint_names: must be non-empty and unique, got {self.joint_names!r}")
        if not _is_positive_seconds(self.frame_interval_s):
            raise ValueError(f"frame_interval_s: must be a finite number of seconds > 0, got {self.frame_interval_s!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction: must lie in [0, 1], got {self.max_bad_fraction!r}")


@dataclass(frozen=True)
class DatasetIndex:
    """The result of a scan: usable episodes, quarantined ones with reasons, and their counts."""

    root: Path
    episodes: tuple[EpisodeRecord, ...]
    quarantined: tuple[QuarantinedEpisode, ...] = field(default=())

    @property
    def num_scanned(self) -> int:
        """Episodes found under the root, good and quarantined."""
        return len(self.episodes) + len(self.quarantined)

    @property
    def bad_fraction(self) -> float:
        """Share of scanned episodes that were quarantined (0 when nothing was scanned)."""
        return len(self.quarantined) / self.num_scanned if self.num_scanned else 0.0

    @property
    def num_frames(self) -> int:
        """Frames in the usable episodes: the number of IDM training samples."""
        return sum(record.num_frames for record in self.episodes)

    def fault_counts(self) -> dict[str, int]:
        """Quarantined episodes per fault, e.g. ``{"bad_jpeg": 2}``."""
        return dict(Counter(entry.fault.value for entry in self.quarantined))

    def check_bad_fraction(self, max_bad_fraction: float) -> None:
        """Raise ValueError naming the share, the limit and the first reasons when too many episodes are bad."""
        if self.bad_fraction <= max_bad_fraction:
            return
        reasons = "; ".join(entry.reason for entry in self.quarantined[:REASONS_IN_ERROR])
        raise ValueError(
            f"{self.root}: {len(self.quarantined)} of {self.num_scanned} episodes quarantined "
            f"(share {self.bad_fraction:.3f}), more than max_bad_fraction={max_bad_fraction}; "
            f"faults {self.fault_counts()}; first reasons: {reasons}"
        )

    def split(self, val_fraction: float, seed: int) -> tuple[tuple[EpisodeRecord, ...], tuple[EpisodeRecord, ...]]:
        """Split whole episodes into ``(train, val)``; frames of one episode never land on both sides.

        Episodes are ranked by a hash of ``(seed, episode_id)`` and the lowest
        ``round(val_fraction * n)`` (at least one) go to validation. The split depends only on the
        seed, the fraction and the episode ids: not on file-system order, and adding or
        quarantining one episode moves at most one other across the boundary.
        """
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction: must lie in (0, 1), got {val_fraction!r}")
        if len(self.episodes) < 2:
            raise ValueError(f"{self.root}: need at least 2 usable episodes to split, got {len(self.episodes)}")
        ranked = sorted(self.episodes, key=lambda record: _split_rank(seed, record.episode_id))
        num_val = min(max(1, round(val_fraction * len(ranked))), len(ranked) - 1)
        train = tuple(sorted(ranked[num_val:], key=_natural_order))
        val = tuple(sorted(ranked[:num_val], key=_natural_order))
        return train, val

    def summary(self) -> str:
        """One line for logs: counts, frames and faults."""
        faults = f"; quarantined {self.fault_counts()}" if self.quarantined else ""
        return (
            f"{self.root}: {len(self.episodes)} usable episodes ({self.num_frames} frames), "
            f"{len(self.quarantined)} of {self.num_scanned} quarantined{faults}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready report: counts and every quarantined episode with its reason."""
        return {
            "root": str(self.root),
            "scanned": self.num_scanned,
            "usable": len(self.episodes),
            "frames": self.num_frames,
            "bad_fraction": self.bad_fraction,
            "fault_counts": self.fault_counts(),
            "quarantined": [
                {
                    "episode": entry.files.episode_id,
                    "path": str(entry.files.hdf5_path),
                    "fault": entry.fault.value,
                    "reason": entry.reason,
                }
                for entry in self.quarantined
            ],
        }


def discover_episodes(root: str | Path) -> list[EpisodeFiles]:
    """Every ``episode*.hdf5`` under ``root/<task>/<config>/data/``, in natural order.

    ``root`` may also be a single ``<task>/<config>`` directory. Files whose name has no episode
    number are returned with index -1, so the scan quarantines them instead of skipping them.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory")
    paths = sorted(root.glob("data/episode*.hdf5")) or sorted(root.glob("*/*/data/episode*.hdf5"))
    return sorted((episode_files(path) for path in paths), key=_natural_order)


def scan_episodes(root: str | Path, config: ScanConfig | None = None, progress: bool = False) -> DatasetIndex:
    """Validate every episode under ``root`` and index the usable ones (see the module docstring).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no episodes were found, or more than ``config.max_bad_fraction`` are quarantined.
    """
    config = config or ScanConfig()
    all_files = discover_episodes(root)
    if not all_files:
        raise ValueError(f"{root}: no episodes found (expected <task>/<config>/data/episode{{i}}.hdf5)")
    episodes, quarantined = [], []
    for files in tqdm(all_files, desc="scan episodes", unit="episode", disable=not progress):
        try:
            episodes.append(inspect_episode(files, config))
        except EpisodeError as error:
            quarantined.append(QuarantinedEpisode(files, error.fault, str(error)))
    index = DatasetIndex(Path(root), tuple(episodes), tuple(quarantined))
    if quarantined:
        logger.warning("%s", index.summary())
    index.check_bad_fraction(config.max_bad_fraction)
    return index


def inspect_episode(files: EpisodeFiles, config: ScanConfig) -> EpisodeRecord:
    """Validate one episode in full (every JPEG is decoded) and return its record without pixels.

    Raises:
        EpisodeError: the episode is faulty; the message names the file, the field and the value.
    """
    if files.index < 0:
        raise EpisodeError(EpisodeFault.BAD_FILE_NAME, f"{files.hdf5_path}: expected a name like episode12.hdf5")
    frame_interval_s = _frame_interval(files, config.frame_interval_s)
    instructions = _read_instructions(files, config.require_instructions)
    with _open_episode(files.hdf5_path) as file:
        jpegs = _read_jpegs(file, files.hdf5_path)
        actions = _read_actions(file, files.hdf5_path, config.joint_names)
    if len(jpegs) != len(actions):
        raise EpisodeError(
            EpisodeFault.LENGTH_MISMATCH,
            f"{files.hdf5_path}: {RGB_DATASET} has {len(jpegs)} frames but {ACTION_DATASET} has {len(actions)} rows",
        )
    image_size = _check_frames(jpegs, files.hdf5_path)
    return EpisodeRecord(files, actions, frame_interval_s, image_size, instructions)


def load_episode(record: EpisodeRecord) -> Episode:
    """Decode all frames of a scanned episode into memory (``T * H * W * 3`` bytes)."""
    return Episode(record, decode_frames(record))


def decode_frames(record: EpisodeRecord, frame_indices: Sequence[int] | None = None) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB of the given frames (all by default), in the order asked for.

    Only the requested JPEGs are read from the file, so a few frames of a long episode are cheap.

    Raises:
        EpisodeError: the file no longer matches its scan (changed or truncated since).
    """
    frame_indices = range(record.num_frames) if frame_indices is None else frame_indices
    path = record.files.hdf5_path
    with _open_episode(path) as file:
        dataset = file.get(RGB_DATASET)
        if not isinstance(dataset, h5py.Dataset) or dataset.shape != (record.num_frames,):
            raise EpisodeError(EpisodeFault.BAD_SHAPE, f"{path}: {RGB_DATASET} changed since the scan")
        unique, positions = np.unique(np.asarray(frame_indices, dtype=np.int64), return_inverse=True)
        values = dataset[unique]  # h5py reads increasing, unique indices only
    frames = []
    for frame, position in zip(frame_indices, positions.reshape(-1), strict=True):
        try:
            frames.append(decode_jpeg(_as_bytes(values[position])))
        except ValueError as error:
            raise EpisodeError(EpisodeFault.BAD_JPEG, f"{path}: {RGB_DATASET}[{frame}]: {error}") from None
    return np.stack(frames)


def decode_jpeg(data: bytes) -> np.ndarray:
    """RoboTwin JPEG bytes -> ``(H, W, 3)`` uint8 RGB (``cv2.imdecode`` without a channel swap; see above).

    Raises:
        ValueError: the bytes are not a complete JPEG (no start or end marker) or do not decode.
    """
    if not data.startswith(JPEG_START):
        raise ValueError(f"not a JPEG: {len(data)} bytes starting with {data[:4]!r}, expected {JPEG_START!r}")
    # libjpeg decodes a truncated file with grey fill and only a warning, so check the end marker.
    if not data.rstrip(b"\0").endswith(JPEG_END):
        raise ValueError(f"truncated JPEG: {len(data)} bytes without the end-of-image marker {JPEG_END!r}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"undecodable JPEG: cv2.imdecode rejected {len(data)} bytes")
    return image


def episode_files(hdf5_path: Path) -> EpisodeFiles:
    """The :class:`EpisodeFiles` of one ``.../<task>/<config>/data/episode{i}.hdf5`` file."""
    match = EPISODE_FILE_PATTERN.fullmatch(hdf5_path.name)
    config_dir = hdf5_path.parent.parent
    index = int(match.group(1)) if match else -1
    return EpisodeFiles(
        task=config_dir.parent.name,
        task_config=config_dir.name,
        index=index,
        hdf5_path=hdf5_path,
        instructions_path=config_dir / "instructions" / f"episode{index}.json",
        scene_info_path=config_dir / "scene_info.json",
    )


def _natural_order(item: EpisodeFiles | EpisodeRecord) -> tuple[str, str, int, str]:
    files = item.files if isinstance(item, EpisodeRecord) else item
    return files.task, files.task_config, files.index, files.hdf5_path.name


def _split_rank(seed: int, episode_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{episode_id}".encode(), digest_size=8).digest()


def _open_episode(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as error:  # truncated, not HDF5, unreadable
        raise EpisodeError(EpisodeFault.UNREADABLE_FILE, f"{path}: cannot open as HDF5: {error}") from None


def _read_dataset(file: h5py.File, key: str, path: Path) -> np.ndarray:
    dataset = file.get(key)
    if not isinstance(dataset, h5py.Dataset):
        raise EpisodeError(EpisodeFault.MISSING_DATASET, f"{path}: missing dataset {key}")
    try:
        return dataset[()]
    except (OSError, RuntimeError, ValueError) as error:  # corrupt chunks inside a file that opened
        raise EpisodeError(EpisodeFault.UNREADABLE_FILE, f"{path}: cannot read {key}: {error}") from None


def _read_jpegs(file: h5py.File, path: Path) -> list[bytes]:
    values = _read_dataset(file, RGB_DATASET, path)
    if values.ndim != 1 or values.dtype.kind not in "SO":
        raise EpisodeError(
            EpisodeFault.BAD_SHAPE,
            f"{path}: {RGB_DATASET} must be (T,) JPEG byte strings, got shape {values.shape} dtype {values.dtype}",
        )
    if len(values) == 0:
        raise EpisodeError(EpisodeFault.BAD_SHAPE, f"{path}: {RGB_DATASET} holds no frames")
    return [_as_bytes(value) for value in values]


def _as_bytes(value: object) -> bytes:
    # Fixed-length "S" strings come back as bytes; variable-length uint8 data as arrays.
    return value.tobytes() if isinstance(value, np.ndarray) else bytes(value)


def _read_actions(file: h5py.File, path: Path, joint_names: Sequence[str]) -> np.ndarray:
    actions = _read_dataset(file, ACTION_DATASET, path)
    if actions.ndim != 2 or actions.shape[1] != len(joint_names) or actions.dtype.kind not in "fiu":
        raise EpisodeError(
            EpisodeFault.BAD_SHAPE,
            f"{path}: {ACTION_DATASET} must be (T, {len(joint_names)}) numbers, "
            f"got shape {actions.shape} dtype {actions.dtype}",
        )
    actions = actions.astype(np.float64)
    reason = non_finite_reason(actions, joint_names)
    if reason:
        raise EpisodeError(EpisodeFault.NON_FINITE_ACTION, f"{path}: {ACTION_DATASET} has {reason}")
    return actions


def _check_frames(jpegs: Sequence[bytes], path: Path) -> tuple[int, int]:
    """Decode every frame; all must decode to the same size, which is returned as ``(height, width)``."""
    image_size = None
    for frame, data in enumerate(jpegs):
        try:
            size = decode_jpeg(data).shape[:2]
        except ValueError as error:
            raise EpisodeError(EpisodeFault.BAD_JPEG, f"{path}: {RGB_DATASET}[{frame}]: {error}") from None
        if image_size is not None and size != image_size:
            raise EpisodeError(
                EpisodeFault.BAD_JPEG, f"{path}: {RGB_DATASET}[{frame}] is {size}, frame 0 is {image_size} (H, W)"
            )
        image_size = size
    return image_size


def _read_instructions(files: EpisodeFiles, required: bool) -> Instructions:
    path = files.instructions_path
    if not path.is_file():
        if required:
            raise EpisodeError(EpisodeFault.BAD_INSTRUCTIONS, f"{path}: instruction file missing")
        return Instructions()
    content = _read_json(path, EpisodeFault.BAD_INSTRUCTIONS)
    lists = {key: content.get(key) if isinstance(content, dict) else None for key in ("seen", "unseen")}
    for key, values in lists.items():
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise EpisodeError(
                EpisodeFault.BAD_INSTRUCTIONS, f"{path}: {key!r} must be a list of strings, got {values!r}"
            )
    return Instructions(seen=tuple(lists["seen"]), unseen=tuple(lists["unseen"]))


def _frame_interval(files: EpisodeFiles, default_s: float) -> float:
    """``scene_info.json``'s ``episode_{i}.dt`` when present, else ``default_s``."""
    path = files.scene_info_path
    if not path.is_file():
        return default_s
    scene_info = _read_scene_info(path, path.stat().st_mtime_ns)
    entry = scene_info.get(f"episode_{files.index}") if isinstance(scene_info, dict) else None
    if not isinstance(entry, dict) or "dt" not in entry:
        return default_s
    if not _is_positive_seconds(entry["dt"]):
        raise EpisodeError(
            EpisodeFault.BAD_METADATA,
            f"{files.scene_info_path}: episode_{files.index}.dt must be seconds > 0, got {entry['dt']!r}",
        )
    return float(entry["dt"])


@functools.lru_cache(maxsize=16)
def _read_scene_info(path: Path, modified_ns: int) -> object:
    """One parse per directory, not per episode; the modification time keeps the cache honest."""
    return _read_json(path, EpisodeFault.BAD_METADATA)


def _read_json(path: Path, fault: EpisodeFault) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EpisodeError(fault, f"{path}: not readable JSON: {error}") from None


def _is_positive_seconds(value: object) -> bool:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value > 0
