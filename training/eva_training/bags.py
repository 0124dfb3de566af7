"""ROS-free rosbag2 writing and reading with the pure-Python ``rosbags`` library (no rclpy, no rosbag2).

``eva bag from-episodes`` turns RoboTwin-layout HDF5 episodes into one bag that ``eva replay`` (or
``ros2 bag play`` on a robot) plays into the stack; ``eva replay --record`` writes the run with the
same writer. The topics follow the stack's contract (DESIGN.md §3), written with absolute names as
rosbag2 records them:

======================== ============================ =====================================================
topic                    type                         per episode
======================== ============================ =====================================================
/eva/episode             std_msgs/String              the episode id (``<task>/<config>/episode{i}``), once
                                                      at the episode's first frame: where episodes split
/eva/instruction         std_msgs/String              the episode's instruction, once at its first frame
/head_camera/image_raw   sensor_msgs/Image ``rgb8``   every decoded JPEG frame, stamped at its frame time
/joint_states            sensor_msgs/JointState       ``joint_action/vector`` per frame, velocities by
                                                      finite differences
/clock                   rosgraph_msgs/Clock          the frame times
======================== ============================ =====================================================

Episodes follow one another in bag time with a gap. ``joint_action/vector`` holds RoboTwin's drive
targets, not measured positions; on a still or slowly moving arm they agree closely, which is all a
stop-and-go replay needs.

A path ending in ``.mcap`` is written as one MCAP file (what Foxglove opens; ``rosbags`` reads it
back); any other path is a rosbag2 directory (``metadata.yaml`` + storage file) for ``ros2 bag``.
Message definitions are embedded either way, and eva_msgs' definitions come from the package's
``.msg`` files, so their type hashes equal the ones rosidl generates (a test checks this).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore
from tqdm.auto import tqdm

if TYPE_CHECKING:  # the episode reader pulls in torch (through eva_idm): imported where used, so `eva --help` is fast
    from eva_idm.data.robotwin import EpisodeFiles, EpisodeRecord, QuarantinedEpisode, ScanConfig

EPISODE_TOPIC = "/eva/episode"
INSTRUCTION_TOPIC = "/eva/instruction"
CAMERA_TOPIC = "/head_camera/image_raw"
JOINT_STATES_TOPIC = "/joint_states"
CLOCK_TOPIC = "/clock"
CAMERA_FRAME_ID = "head_camera"
STORAGES = ("mcap", "sqlite3")
MCAP_SUFFIX = ".mcap"
EVA_MSGS_PACKAGE = "eva_msgs"
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class TopicQos:
    """The QoS a topic is published with (the stack's contract); recorded in bags and used by ``eva replay``."""

    reliable: bool = True
    transient_local: bool = False
    depth: int = 10

    def to_rosbags(self) -> Qos:
        """The same profile as rosbags writes it into bag metadata (offered QoS, for ``ros2 bag play``)."""
        unspecified = QosTime(0, 0)
        return Qos(
            history=QosHistory.KEEP_LAST,
            depth=self.depth,
            reliability=QosReliability.RELIABLE if self.reliable else QosReliability.BEST_EFFORT,
            durability=QosDurability.TRANSIENT_LOCAL if self.transient_local else QosDurability.VOLATILE,
            deadline=unspecified,
            lifespan=unspecified,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=unspecified,
            avoid_ros_namespace_conventions=False,
        )


SENSOR_DATA = TopicQos(reliable=False, depth=5)
RELIABLE = TopicQos()
LATCHED = TopicQos(transient_local=True)


@dataclass(frozen=True)
class TopicSpec:
    """A topic of the contract: its message type and QoS."""

    msgtype: str
    qos: TopicQos = RELIABLE


# Every topic eva writes into bags or records; names are absolute, as rosbag2 stores them.
TOPICS: dict[str, TopicSpec] = {
    # Inputs of the stack (what a bag made from episodes holds and eva replay publishes).
    EPISODE_TOPIC: TopicSpec("std_msgs/msg/String", LATCHED),
    INSTRUCTION_TOPIC: TopicSpec("std_msgs/msg/String"),
    CAMERA_TOPIC: TopicSpec("sensor_msgs/msg/Image", SENSOR_DATA),
    JOINT_STATES_TOPIC: TopicSpec("sensor_msgs/msg/JointState", SENSOR_DATA),
    CLOCK_TOPIC: TopicSpec("rosgraph_msgs/msg/Clock"),
    # Outputs of the stack (what eva replay records).
    "/eva/plan": TopicSpec("eva_msgs/msg/VisualPlan"),
    "/eva/plan/image/compressed": TopicSpec("sensor_msgs/msg/CompressedImage", TopicQos(depth=100)),
    "/eva/executability": TopicSpec("eva_msgs/msg/ExecutabilityReport", LATCHED),
    "/eva/gated_plan": TopicSpec("eva_msgs/msg/GatedPlan"),
    "/eva/execution_status": TopicSpec("eva_msgs/msg/ExecutionStatus", LATCHED),
    "/left_arm_controller/joint_trajectory": TopicSpec("trajectory_msgs/msg/JointTrajectory"),
    "/right_arm_controller/joint_trajectory": TopicSpec("trajectory_msgs/msg/JointTrajectory"),
    "/bimanual_controller/joint_trajectory": TopicSpec("trajectory_msgs/msg/JointTrajectory"),
    "/diagnostics": TopicSpec("diagnostic_msgs/msg/DiagnosticArray"),
}


class BagError(ValueError):
    """A bag that cannot be written or read as asked; the message names the path, topic or field."""


# ----------------------------------------------------------------------------------------------
# Types


def eva_msgs_dir() -> Path:
    """The directory holding eva_msgs' ``.msg`` files: the installed share directory, else the source tree.

    Raises:
        BagError: neither exists (a pip-only install without the repository).
    """
    candidates = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # a GPU server without ROS: fall back to the source tree
        pass
    else:
        try:
            candidates.append(Path(get_package_share_directory(EVA_MSGS_PACKAGE)) / "msg")
        except PackageNotFoundError:
            pass
    candidates.append(Path(__file__).resolve().parents[2] / "src" / EVA_MSGS_PACKAGE / "msg")
    for directory in candidates:
        if any(directory.glob("*.msg")):
            return directory
    raise BagError(f"eva_msgs: no .msg files in {[str(path) for path in candidates]}; source scripts/env.sh "
                   "or run from the repository")


@functools.cache
def typestore(eva_msgs: bool = True) -> Typestore:
    """A rosbags typestore for ROS 2 Jazzy, with eva_msgs' message types when ``eva_msgs`` is true.

    Shared and cached: treat it as read-only.
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    if eva_msgs:
        types: dict[str, Any] = {}
        for path in sorted(eva_msgs_dir().glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{EVA_MSGS_PACKAGE}/msg/{path.stem}"))
        store.register(types)
    return store


def _standard_types() -> Typestore:
    """The Jazzy types alone: enough for the standard messages, and needs no eva_msgs files."""
    return typestore(eva_msgs=False)


def constant_names(msgtype: str, constant_type: str, store: Typestore | None = None) -> dict[int, str]:
    """``{value: name}`` of a message's constants of one type, e.g. ExecutionStatus's ``uint8`` states.

    The eva messages keep states and reason codes apart by type (``uint8`` vs ``uint16``), so the
    type selects one enumeration.
    """
    constants = (store or typestore()).fielddefs[msgtype][0]
    return {value: name for name, kind, value in constants if kind == constant_type}


# ----------------------------------------------------------------------------------------------
# Messages (rosbags objects, serialised as CDR exactly like rclpy's)


def time_message(stamp_ns: int, store: Typestore | None = None) -> Any:
    """``builtin_interfaces/Time`` of a time in nanoseconds."""
    store = store or _standard_types()
    seconds, nanoseconds = divmod(int(stamp_ns), NS_PER_S)
    return store.types["builtin_interfaces/msg/Time"](sec=seconds, nanosec=nanoseconds)


def header_message(stamp_ns: int, frame_id: str = "", store: Typestore | None = None) -> Any:
    """``std_msgs/Header``."""
    store = store or _standard_types()
    return store.types["std_msgs/msg/Header"](stamp=time_message(stamp_ns, store), frame_id=frame_id)


def image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str = CAMERA_FRAME_ID,
                  store: Typestore | None = None) -> Any:
    """``sensor_msgs/Image`` ``rgb8`` of an ``(H, W, 3)`` uint8 RGB array (rows unpadded)."""
    store = store or _standard_types()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BagError(f"rgb: expected an (H, W, 3) uint8 image, got shape {rgb.shape} dtype {rgb.dtype}")
    height, width = rgb.shape[:2]
    return store.types["sensor_msgs/msg/Image"](
        header=header_message(stamp_ns, frame_id, store), height=height, width=width, encoding="rgb8",
        is_bigendian=0, step=width * 3, data=np.ascontiguousarray(rgb).reshape(-1))


def joint_state_message(names: Sequence[str], positions: np.ndarray, velocities: np.ndarray, stamp_ns: int,
                        store: Typestore | None = None) -> Any:
    """``sensor_msgs/JointState`` with positions and velocities (no efforts)."""
    store = store or _standard_types()
    if len(positions) != len(names) or len(velocities) != len(names):
        raise BagError(f"joint state: {len(names)} names but {len(positions)} positions and "
                       f"{len(velocities)} velocities")
    return store.types["sensor_msgs/msg/JointState"](
        header=header_message(stamp_ns, "", store), name=list(names),
        position=np.asarray(positions, np.float64), velocity=np.asarray(velocities, np.float64),
        effort=np.zeros(0, np.float64))


def string_message(text: str, store: Typestore | None = None) -> Any:
    """``std_msgs/String``."""
    return (store or _standard_types()).types["std_msgs/msg/String"](data=text)


def clock_message(stamp_ns: int, store: Typestore | None = None) -> Any:
    """``rosgraph_msgs/Clock``."""
    store = store or _standard_types()
    return store.types["rosgraph_msgs/msg/Clock"](clock=time_message(stamp_ns, store))


def stamp_ns(stamp: Any) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time`` (rosbags' or rclpy's: both have sec and nanosec)."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def header_stamp_ns(data: bytes | memoryview) -> int:
    """The header stamp [ns] of a serialised message whose first field is a ``std_msgs/Header``.

    Read straight from the CDR bytes (the stamp is the first thing after the encapsulation), so a
    camera frame need not be decoded to learn its time.
    """
    order = _cdr_byte_order(data)
    sec, nanosec = struct.unpack_from(f"{order}iI", data, 4)
    return sec * NS_PER_S + nanosec


def restamp(data: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of a serialised message (first field ``std_msgs/Header``) with its header stamp set to ``stamp_ns``.

    The rest of the bytes stay as they are: no re-serialisation, so pixels cannot change and the
    copy reads back wherever the original did.
    """
    order = _cdr_byte_order(data)
    seconds, nanoseconds = divmod(int(stamp_ns), NS_PER_S)
    copy = bytearray(data)
    struct.pack_into(f"{order}iI", copy, 4, seconds, nanoseconds)
    return bytes(copy)


def _cdr_byte_order(data: bytes | memoryview) -> str:
    if len(data) < 12 or bytes(data[:2]) not in (b"\0\0", b"\0\1"):
        raise BagError(f"data: {len(data)} bytes are not a plain CDR message with a header")
    return "<" if data[1] else ">"


def finite_difference_velocities(positions: np.ndarray, dt: float) -> np.ndarray:
    """Per-frame velocities of ``(T, D)`` positions ``dt`` s apart: central differences, one-sided at the ends.

    A single frame has zero velocity (a still robot, which is what one frame can say).
    """
    positions = np.asarray(positions, np.float64)
    if positions.ndim != 2:
        raise BagError(f"positions: expected (T, D), got shape {positions.shape}")
    if len(positions) < 2:
        return np.zeros_like(positions)
    return np.gradient(positions, dt, axis=0)


# ----------------------------------------------------------------------------------------------
# Writing


class BagWriter:
    """A bag being written: connections are added on first use with the contract's type and QoS.

    Written under a temporary name next to ``path`` and moved into place on close, so a failed run
    leaves nothing that looks like a bag. ``path`` ending in ``.mcap`` gives one MCAP file,
    otherwise a rosbag2 directory (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], storage: str = "mcap", store: Typestore | None = None):
        self.path = Path(path)
        if storage not in STORAGES:
            raise BagError(f"storage: expected one of {list(STORAGES)}, got {storage!r}")
        self.single_file = self.path.suffix == MCAP_SUFFIX
        if self.single_file and storage != "mcap":
            raise BagError(f"output: {self.path} ends in .mcap but storage is {storage!r}; "
                           "name a directory for sqlite3 bags")
        if self.path.exists():
            raise BagError(f"output: {self.path} already exists; choose another path (bags are never overwritten)")
        if not self.path.parent.is_dir():
            raise BagError(f"output: the directory {self.path.parent} does not exist")
        self.store = store or typestore()
        self.counts: dict[str, int] = {}
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._bag_dir = self._staging / (self.path.stem if self.single_file else self.path.name)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._bag_dir, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}
        self._writer.open()

    def _connection(self, topic: str, msgtype: str | None) -> Any:
        connection = self._connections.get(topic)
        spec = TOPICS.get(topic)
        msgtype = msgtype or (spec.msgtype if spec else None)
        if msgtype is None:
            raise BagError(f"topic {topic!r}: not in the contract's topic table; give its message type")
        if connection is None:
            qos = spec.qos if spec else RELIABLE
            connection = self._writer.add_connection(topic, msgtype, typestore=self.store,
                                                     offered_qos_profiles=[qos.to_rosbags()])
            self._connections[topic] = connection
            self.counts[topic] = 0
        elif connection.msgtype != msgtype:
            raise BagError(f"topic {topic!r}: already written as {connection.msgtype}, not {msgtype}")
        return connection

    def write(self, topic: str, message: Any, timestamp_ns: int) -> None:
        """Serialise a rosbags message and write it at ``timestamp_ns`` (its type is the message's own)."""
        data = self.store.serialize_cdr(message, message.__msgtype__)
        self.write_raw(topic, data, timestamp_ns, message.__msgtype__)

    def write_raw(self, topic: str, data: bytes | memoryview, timestamp_ns: int, msgtype: str | None = None) -> None:
        """Write an already serialised (CDR, as rclpy serialises) message; the type defaults to the contract's."""
        self._writer.write(self._connection(topic, msgtype), int(timestamp_ns), data)
        self.counts[topic] += 1

    def close(self) -> Path:
        """Finish the bag and move it to ``path``; returns ``path``."""
        self._writer.close()
        source = self._bag_dir / f"{self._bag_dir.name}{MCAP_SUFFIX}" if self.single_file else self._bag_dir
        if self.path.exists():
            raise BagError(f"output: {self.path} appeared while the bag was written; it stays in {source}")
        source.rename(self.path)
        shutil.rmtree(self._staging)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        self._writer.abort()
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ----------------------------------------------------------------------------------------------
# Episodes -> bag


@dataclass(frozen=True)
class EpisodeBagConfig:
    """How ``eva bag from-episodes`` lays episodes out in a bag; every field is checked.

    Attributes:
        output: the bag to write (``.mcap`` file or rosbag2 directory); must not exist.
        storage: ``mcap`` or ``sqlite3``.
        limit: write at most this many usable episodes (None: all).
        gap_s: bag time between one episode's last frame and the next one's first [s].
        start_time_s: bag time of the first frame [s]; not 0, which ROS reads as "no time yet".
        embodiment: embodiment name or YAML path; its joint names name the joint states.
        max_bad_fraction: largest share of quarantined episodes before the conversion fails.
    """

    output: Path
    storage: str = "mcap"
    limit: int | None = None
    gap_s: float = 1.0
    start_time_s: float = 1.0
    embodiment: str = "aloha_agilex"
    max_bad_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f"storage: expected one of {list(STORAGES)}, got {self.storage!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ValueError(f"limit: must be a whole number >= 1, got {self.limit!r}")
        if not (isinstance(self.gap_s, int | float) and math.isfinite(self.gap_s) and self.gap_s >= 0):
            raise ValueError(f"gap_s: must be a finite number of seconds >= 0, got {self.gap_s!r}")
        if not (isinstance(self.start_time_s, int | float) and math.isfinite(self.start_time_s)
                and self.start_time_s > 0):
            raise ValueError(f"start_time_s: must be a finite number of seconds > 0, got {self.start_time_s!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction: must lie in [0, 1], got {self.max_bad_fraction!r}")


@dataclass(frozen=True)
class BagEpisode:
    """Where one episode lies in a bag.

    Attributes:
        episode_id: ``<task>/<config>/episode{i}``.
        instruction: the instruction published at its start ('' when the bag has none there).
        start_ns: bag time of its first frame (and of its ``/eva/episode`` message) [ns].
        end_ns: bag time of its last message before the next episode [ns].
        num_frames: camera frames in the episode.
    """

    episode_id: str
    instruction: str
    start_ns: int
    end_ns: int
    num_frames: int


@dataclass(frozen=True)
class EpisodeBagReport:
    """What ``episodes_to_bag`` wrote: the episodes, the quarantined ones with reasons, message counts."""

    output: Path
    episodes: tuple[BagEpisode, ...]
    quarantined: tuple[QuarantinedEpisode, ...]
    message_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for people: counts and the quarantine."""
        faults = ""
        if self.quarantined:
            reasons = "; ".join(f"{entry.files.episode_id}: {entry.reason}" for entry in self.quarantined)
            faults = f"; quarantined {len(self.quarantined)}: {reasons}"
        frames = self.message_counts.get(CAMERA_TOPIC, 0)
        return f"wrote {len(self.episodes)} episodes ({frames} frames) to {self.output}{faults}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the episodes' places in the bag and the quarantine."""
        return {
            "output": str(self.output),
            "episodes": [vars(episode) for episode in self.episodes],
            "quarantined": [{"episode": entry.files.episode_id, "path": str(entry.files.hdf5_path),
                             "fault": entry.fault.value, "reason": entry.reason} for entry in self.quarantined],
            "message_counts": dict(self.message_counts),
        }


def find_episode_files(inputs: Sequence[str | os.PathLike[str]]) -> list[EpisodeFiles]:
    """The episodes named by ``inputs``: data roots or ``<task>/<config>`` directories, or ``.hdf5`` files.

    Order is kept (directories in natural episode order); an episode named twice counts once.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no inputs, or a directory without episodes.
    """
    from eva_idm.data.robotwin import discover_episodes, episode_files

    if not inputs:
        raise ValueError("episodes: give at least one data directory or episode .hdf5 file")
    found: dict[Path, EpisodeFiles] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            files = discover_episodes(item)
            if not files:
                raise ValueError(f"episodes: no <task>/<config>/data/episode{{i}}.hdf5 under {item}")
        elif item.is_file():
            files = [episode_files(item)]
        else:
            raise FileNotFoundError(f"episodes: {item} does not exist")
        for entry in files:
            found.setdefault(entry.hdf5_path.resolve(), entry)
    return list(found.values())


def episode_instruction(record: EpisodeRecord) -> str:
    """The instruction a bag carries for an episode: its first "seen" one, else its first "unseen" one.

    Raises:
        EpisodeError: the episode has no instruction (``BAD_INSTRUCTIONS``).
    """
    from eva_idm.data.robotwin import EpisodeError, EpisodeFault

    for text in (*record.instructions.seen, *record.instructions.unseen):
        if text.strip():
            return text
    raise EpisodeError(EpisodeFault.BAD_INSTRUCTIONS,
                       f"{record.files.instructions_path}: no non-empty instruction in 'seen' or 'unseen'")


def select_episodes(files: Sequence[EpisodeFiles], scan: ScanConfig, limit: int | None = None,
                    progress: bool = False) -> tuple[list[EpisodeRecord], list[QuarantinedEpisode]]:
    """Validate episodes in order until ``limit`` usable ones are found; faulty ones are quarantined.

    Raises:
        ValueError: more than ``scan.max_bad_fraction`` of the inspected episodes are faulty, or none is usable.
    """
    from eva_idm.data.robotwin import DatasetIndex, EpisodeError, QuarantinedEpisode, inspect_episode

    records: list[EpisodeRecord] = []
    quarantined: list[QuarantinedEpisode] = []
    for entry in tqdm(files, desc="check episodes", unit="episode", disable=not progress):
        if limit is not None and len(records) >= limit:
            break
        try:
            record = inspect_episode(entry, scan)
            episode_instruction(record)
            records.append(record)
        except EpisodeError as error:
            quarantined.append(QuarantinedEpisode(entry, error.fault, str(error)))
    root = Path(os.path.commonpath([str(entry.hdf5_path.parent) for entry in files]))
    index = DatasetIndex(root, tuple(records), tuple(quarantined))
    index.check_bad_fraction(scan.max_bad_fraction)
    if not records:
        raise ValueError(f"episodes: none of the {len(quarantined)} episodes is usable; {index.summary()}")
    return records, quarantined


def episodes_to_bag(inputs: Sequence[str | os.PathLike[str]], config: EpisodeBagConfig,
                    progress: bool = True) -> EpisodeBagReport:
    """Write the episodes named by ``inputs`` into one bag (see the module docstring for the layout).

    Every episode is validated first (every JPEG decoded), so a faulty one is quarantined and
    reported before anything is written, and a failed conversion leaves no bag behind.

    Raises:
        FileNotFoundError, ValueError: bad inputs, too many faulty episodes, or an existing output.
    """
    from eva_idm.data.robotwin import ScanConfig
    from eva_idm.embodiment import load_embodiment

    joint_names = load_embodiment(config.embodiment).joint_names
    scan = ScanConfig(joint_names=joint_names, max_bad_fraction=config.max_bad_fraction, require_instructions=True)
    records, quarantined = select_episodes(find_episode_files(inputs), scan, config.limit, progress)
    store = typestore(eva_msgs=False)  # standard types only: works without eva_msgs' files
    placed: list[BagEpisode] = []
    start_ns = round(config.start_time_s * NS_PER_S)
    with BagWriter(config.output, config.storage, store) as writer:
        for record in tqdm(records, desc="write bag", unit="episode", disable=not progress):
            episode = _write_episode(writer, record, joint_names, start_ns, store)
            placed.append(episode)
            start_ns = episode.end_ns + round(config.gap_s * NS_PER_S)
        counts = dict(writer.counts)
    return EpisodeBagReport(Path(config.output), tuple(placed), tuple(quarantined), counts)


def _write_episode(writer: BagWriter, record: EpisodeRecord, joint_names: Sequence[str], start_ns: int,
                   store: Typestore) -> BagEpisode:
    from eva_idm.data.robotwin import decode_frames

    frames = decode_frames(record)
    interval_ns = round(record.frame_interval_s * NS_PER_S)
    stamps = [start_ns + index * interval_ns for index in range(record.num_frames)]
    velocities = finite_difference_velocities(record.actions, record.frame_interval_s)
    instruction = episode_instruction(record)
    writer.write(EPISODE_TOPIC, string_message(record.episode_id, store), start_ns)
    writer.write(INSTRUCTION_TOPIC, string_message(instruction, store), start_ns)
    for index, stamp in enumerate(stamps):
        writer.write(CLOCK_TOPIC, clock_message(stamp, store), stamp)
        writer.write(JOINT_STATES_TOPIC, joint_state_message(joint_names, record.actions[index], velocities[index],
                                                             stamp, store), stamp)
        writer.write(CAMERA_TOPIC, image_message(frames[index], stamp, CAMERA_FRAME_ID, store), stamp)
    return BagEpisode(record.episode_id, instruction, start_ns, stamps[-1], record.num_frames)


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class BagMessage:
    """One serialised message of a bag, in bag-time order."""

    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes


class BagReader:
    """A bag opened for reading (MCAP file, or rosbag2 directory of either storage).

    Types the bag declares with a different hash than this workspace's definitions (an older
    eva_msgs, say) are refused when deserialised, naming the topic and both hashes, instead of
    being decoded into garbage.
    """

    def __init__(self, path: str | os.PathLike[str], store: Typestore | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"bag: {self.path} does not exist")
        self.store = store or typestore()
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as error:  # noqa: BLE001 (rosbags raises several types; the message says what)
            raise BagError(f"bag: cannot open {self.path}: {error}") from None
        self._mismatched: dict[str, str] = {}
        for connection in self._reader.connections:
            if connection.msgtype in self.store.fielddefs and connection.digest.startswith("RIHS01_"):
                ours = self.store.hash_rihs01(connection.msgtype)
                if connection.digest != ours:
                    self._mismatched[connection.topic] = (
                        f"topic {connection.topic}: the bag's {connection.msgtype} has type hash {connection.digest}, "
                        f"this workspace's has {ours} (a different message definition)")

    @property
    def topics(self) -> dict[str, tuple[str, int]]:
        """``{topic: (message type, count)}``."""
        return {topic: (info.msgtype or "", info.msgcount) for topic, info in self._reader.topics.items()}

    @property
    def start_ns(self) -> int:
        """Bag time of the first message [ns]."""
        return self._reader.start_time

    @property
    def end_ns(self) -> int:
        """Bag time just after the last message [ns]."""
        return self._reader.end_time

    def messages(self, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
        """The messages of ``topics`` (all when None) in bag-time order (ties in storage order)."""
        connections = [connection for connection in self._reader.connections
                       if topics is None or connection.topic in topics]
        if not connections:
            return
        for connection, timestamp, data in self._reader.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, timestamp, bytes(data))

    def deserialize(self, message: BagMessage) -> Any:
        """The rosbags message object of a serialised message.

        Raises:
            BagError: the bag's definition of the type differs from this workspace's.
        """
        if message.topic in self._mismatched:
            raise BagError(self._mismatched[message.topic])
        return self.store.deserialize_cdr(message.data, message.msgtype)

    def close(self) -> None:
        """Close the bag."""
        self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_episode_index(path: str | os.PathLike[str]) -> list[BagEpisode]:
    """Split a bag into episodes by its ``/eva/episode`` messages (empty when it has none).

    An episode runs from its ``/eva/episode`` message to the last camera frame before the next
    one; its instruction is the first ``/eva/instruction`` in that span.
    """
    with BagReader(path, typestore(eva_msgs=False)) as bag:
        starts: list[tuple[int, str]] = []
        instructions: list[tuple[int, str]] = []
        frames: list[int] = []
        for message in bag.messages([EPISODE_TOPIC, INSTRUCTION_TOPIC, CAMERA_TOPIC]):
            if message.topic == CAMERA_TOPIC:
                frames.append(message.timestamp_ns)
            else:
                entry = (message.timestamp_ns, bag.deserialize(message).data)
                (starts if message.topic == EPISODE_TOPIC else instructions).append(entry)
    episodes = []
    for index, (start, episode_id) in enumerate(starts):
        stop = starts[index + 1][0] if index + 1 < len(starts) else math.inf
        in_span = [stamp for stamp in frames if start <= stamp < stop]
        instruction = next((text for stamp, text in instructions if start <= stamp < stop), "")
        episodes.append(BagEpisode(episode_id, instruction, start, max(in_span, default=start), len(in_span)))
    return episodes


# ----------------------------------------------------------------------------------------------
# eva bag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``eva bag``'s actions and their arguments."""
    actions = parser.add_subparsers(dest="bag_action", metavar="ACTION", required=True)
    episodes_help = "write RoboTwin-layout HDF5 episodes into one bag (camera, joint states, instruction, clock)"
    episodes = actions.add_parser("from-episodes", help=episodes_help, description=episodes_help)
    episodes.add_argument("episodes", nargs="+", type=Path, metavar="EPISODE_DIR_OR_FILE",
                          help="data roots, <task>/<config> directories or episode .hdf5 files")
    episodes.add_argument("--output", type=Path, required=True,
                          help="bag to write: OUT.mcap gives one MCAP file, any other name a rosbag2 directory")
    episodes.add_argument("--storage", choices=STORAGES, default="mcap", help="storage of a bag directory "
                          "(default: mcap)")
    episodes.add_argument("--limit", type=int, default=None, help="write at most N usable episodes (default: all)")
    episodes.add_argument("--gap", type=float, default=1.0, help="bag time between episodes in s (default: 1.0)")
    episodes.add_argument("--start-time", type=float, default=1.0, help="bag time of the first frame in s "
                          "(default: 1.0)")
    episodes.add_argument("--embodiment", default="aloha_agilex",
                          help="embodiment name or YAML path whose joint names the joint states carry "
                               "(default: aloha_agilex)")
    episodes.add_argument("--max-bad-fraction", type=float, default=0.05,
                          help="fail when a larger share of the episodes is quarantined (default: 0.05)")
    episodes.add_argument("--report", type=Path, default=None,
                          help="also write the episodes' places and the quarantine as JSON here")
    info_help = "list a bag's topics and episodes"
    info = actions.add_parser("info", help=info_help, description=info_help)
    info.add_argument("bag", type=Path, help="an MCAP file or a rosbag2 directory")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    return {"from-episodes": _run_from_episodes, "info": _run_info}[args.bag_action](args)


def _run_from_episodes(args: argparse.Namespace) -> int:
    config = EpisodeBagConfig(output=args.output, storage=args.storage, limit=args.limit, gap_s=args.gap,
                              start_time_s=args.start_time, embodiment=args.embodiment,
                              max_bad_fraction=args.max_bad_fraction)
    report = episodes_to_bag(args.episodes, config)
    if args.report is not None:
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(report.summary())
    return 0


def _run_info(args: argparse.Namespace) -> int:
    with BagReader(args.bag, _standard_types()) as bag:
        print(f"{args.bag}: {(bag.end_ns - bag.start_ns) / NS_PER_S:.3f} s of bag time")
        for topic, (msgtype, count) in sorted(bag.topics.items()):
            print(f"  {topic:40s} {msgtype:40s} {count:8d}")
    for episode in read_episode_index(args.bag):
        print(f"  episode {episode.episode_id}: {episode.num_frames} frames from "
              f"{episode.start_ns / NS_PER_S:.3f} s, instruction {episode.instruction!r}")
    return 0
