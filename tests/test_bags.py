"""``eva bag from-episodes`` and the ROS-free bag layer: layout, stamps, exact pixels, quarantine, type hashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from eva_idm.data.robotwin import ScanConfig, decode_frames, discover_episodes, inspect_episode
from eva_idm.embodiment import load_embodiment
from eva_sim.synth import SynthConfig, synthesize
from eva_training.bags import (
    CAMERA_TOPIC,
    CLOCK_TOPIC,
    EPISODE_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    BagError,
    BagMessage,
    BagReader,
    BagWriter,
    eva_msgs_dir,
    header_stamp_ns,
    read_episode_index,
    restamp,
    stamp_ns,
    string_message,
    typestore,
)
from eva_training.cli import main as eva

FRAMES, DT_NS, GAP_NS, START_NS = 6, 60_000_000, 500_000_000, 2_000_000_000
JOINTS = load_embodiment("aloha_agilex").joint_names
EXPECTED_TYPES = {
    CAMERA_TOPIC: "sensor_msgs/msg/Image",
    JOINT_STATES_TOPIC: "sensor_msgs/msg/JointState",
    INSTRUCTION_TOPIC: "std_msgs/msg/String",
    EPISODE_TOPIC: "std_msgs/msg/String",
    CLOCK_TOPIC: "rosgraph_msgs/msg/Clock",
}


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    """Three synthetic 48x64 episodes of 6 frames; episode 1 gets its own instruction."""
    root = tmp_path_factory.mktemp("episodes")
    episode_dir = synthesize(SynthConfig(out_dir=root, episodes=3, frames=FRAMES, height=48, width=64, seed=5),
                             progress=False)
    (episode_dir / "instructions" / "episode1.json").write_text(
        json.dumps({"seen": ["Raise the left gripper."], "unseen": []}), encoding="utf-8")
    return root


def records(root: Path) -> list:
    return [inspect_episode(files, ScanConfig()) for files in discover_episodes(root)]


def read_all(bag_path: Path) -> dict[str, list[tuple[int, object]]]:
    messages: dict[str, list[tuple[int, object]]] = {}
    with BagReader(bag_path) as bag:
        for message in bag.messages():
            messages.setdefault(message.topic, []).append((message.timestamp_ns, bag.deserialize(message)))
    return messages


@pytest.mark.parametrize("name, storage", [("episodes.mcap", "mcap"), ("episodes_bag", "sqlite3")])
def test_episodes_become_one_bag_with_exact_pixels_joints_and_stamps(episodes, tmp_path, name, storage):
    output = tmp_path / name
    assert eva(["bag", "from-episodes", str(episodes), "--output", str(output), "--storage", storage,
                "--start-time", "2.0", "--gap", "0.5"]) == 0
    assert output.is_file() if storage == "mcap" else (output / "metadata.yaml").is_file()
    assert [entry.name for entry in tmp_path.iterdir()] == [name]  # no staging directory left behind

    with BagReader(output) as bag:
        assert bag.topics == {topic: (msgtype, 3 * FRAMES if topic in (CAMERA_TOPIC, JOINT_STATES_TOPIC, CLOCK_TOPIC)
                                      else 3) for topic, msgtype in EXPECTED_TYPES.items()}
    messages = read_all(output)
    for index, record in enumerate(records(episodes)):
        start = START_NS + index * ((FRAMES - 1) * DT_NS + GAP_NS)
        stamps = [start + frame * DT_NS for frame in range(FRAMES)]
        assert [(time, message.data) for time, message in messages[EPISODE_TOPIC]][index] == (start, record.episode_id)
        assert messages[INSTRUCTION_TOPIC][index][0] == start
        assert messages[INSTRUCTION_TOPIC][index][1].data == record.instructions.seen[0]

        images = messages[CAMERA_TOPIC][index * FRAMES:(index + 1) * FRAMES]
        assert [time for time, _ in images] == stamps == [stamp_ns(image.header.stamp) for _, image in images]
        assert {(image.encoding, image.height, image.width, image.step, image.header.frame_id)
                for _, image in images} == {("rgb8", 48, 64, 64 * 3, "head_camera")}
        pixels = np.stack([np.asarray(image.data).reshape(48, 64, 3) for _, image in images])
        np.testing.assert_array_equal(pixels, decode_frames(record))

        joints = messages[JOINT_STATES_TOPIC][index * FRAMES:(index + 1) * FRAMES]
        assert [stamp_ns(state.header.stamp) for _, state in joints] == stamps
        assert all(list(state.name) == list(JOINTS) for _, state in joints)
        positions = np.stack([state.position for _, state in joints])
        np.testing.assert_array_equal(positions, record.actions)
        velocities = np.stack([state.velocity for _, state in joints])
        np.testing.assert_allclose(velocities[1:-1], (record.actions[2:] - record.actions[:-2]) / 0.12, atol=1e-9)
        np.testing.assert_allclose(velocities[0], (record.actions[1] - record.actions[0]) / 0.06, atol=1e-9)

        clock = messages[CLOCK_TOPIC][index * FRAMES:(index + 1) * FRAMES]
        assert [stamp_ns(message.clock) for _, message in clock] == stamps

    index = read_episode_index(output)
    assert [(episode.episode_id, episode.num_frames) for episode in index] == [
        (f"synth_reach/demo_clean/episode{i}", FRAMES) for i in range(3)]
    assert index[1].instruction == "Raise the left gripper."
    assert index[1].end_ns == index[1].start_ns + (FRAMES - 1) * DT_NS


def test_rosbags_reads_the_bag_from_its_embedded_definitions_alone(episodes, tmp_path):
    output = tmp_path / "one.mcap"
    assert eva(["bag", "from-episodes", str(episodes), "--output", str(output), "--limit", "1"]) == 0
    with AnyReader([output]) as reader:  # no typestore given: the schemas in the file must suffice
        topics = {connection.topic for connection in reader.connections}
        instruction = [reader.deserialize(data, connection.msgtype)
                       for connection, _, data in reader.messages() if connection.topic == INSTRUCTION_TOPIC]
    assert topics == set(EXPECTED_TYPES)
    assert [message.data for message in instruction] == ["Move both arms to new poses above the table."]


def test_a_corrupt_episode_is_quarantined_and_reported_never_skipped(episodes, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(episodes, data)
    broken = data / "synth_reach" / "demo_clean" / "data" / "episode1.hdf5"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    output = tmp_path / "bag.mcap"

    assert eva(["bag", "from-episodes", str(data), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "1 of 3 episodes quarantined" in error and "unreadable_file" in error and "episode1.hdf5" in error
    assert not output.exists() and [entry.name for entry in tmp_path.iterdir()] == ["data"]

    report_path = tmp_path / "report.json"
    assert eva(["bag", "from-episodes", str(data), "--output", str(output), "--max-bad-fraction", "0.5",
                "--report", str(report_path)]) == 0
    assert "quarantined 1: synth_reach/demo_clean/episode1" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert [entry["fault"] for entry in report["quarantined"]] == ["unreadable_file"]
    assert [episode["episode_id"] for episode in report["episodes"]] == [
        "synth_reach/demo_clean/episode0", "synth_reach/demo_clean/episode2"]
    assert [episode.episode_id for episode in read_episode_index(output)] == [
        "synth_reach/demo_clean/episode0", "synth_reach/demo_clean/episode2"]


def test_episode_files_limit_and_missing_instructions(episodes, tmp_path, capsys):
    first, second = sorted((episodes / "synth_reach" / "demo_clean" / "data").glob("episode*.hdf5"))[:2]
    output = tmp_path / "files.mcap"
    assert eva(["bag", "from-episodes", str(second), str(first), str(second), "--output", str(output),
                "--limit", "1"]) == 0
    assert [episode.episode_id for episode in read_episode_index(output)] == ["synth_reach/demo_clean/episode1"]

    no_instructions = tmp_path / "bare"
    shutil.copytree(episodes, no_instructions)
    shutil.rmtree(no_instructions / "synth_reach" / "demo_clean" / "instructions")
    assert eva(["bag", "from-episodes", str(no_instructions), "--output", str(tmp_path / "bare.mcap")]) == 2
    assert "bad_instructions" in capsys.readouterr().err


def test_bad_arguments_are_refused_naming_the_field(episodes, tmp_path, capsys):
    existing = tmp_path / "taken.mcap"
    existing.write_bytes(b"")
    for argv, message in [
        (["--output", str(existing)], "already exists"),
        (["--output", str(tmp_path / "x.mcap"), "--storage", "sqlite3"], "ends in .mcap but storage is 'sqlite3'"),
        (["--output", str(tmp_path / "y.mcap"), "--limit", "0"], "limit: must be a whole number >= 1"),
        (["--output", str(tmp_path / "z.mcap"), "--start-time", "0"], "start_time_s: must be a finite number"),
    ]:
        assert eva(["bag", "from-episodes", str(episodes), *argv]) == 2
        assert message in capsys.readouterr().err
    assert eva(["bag", "from-episodes", str(tmp_path / "nowhere"), "--output", str(tmp_path / "a.mcap")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_restamping_changes_the_header_stamp_and_nothing_else(episodes, tmp_path):
    output = tmp_path / "stamps.mcap"
    assert eva(["bag", "from-episodes", str(episodes), "--output", str(output), "--limit", "1"]) == 0
    with BagReader(output) as bag:
        frame = next(bag.messages([CAMERA_TOPIC]))
        original = bag.deserialize(frame)
        assert header_stamp_ns(frame.data) == stamp_ns(original.header.stamp) == frame.timestamp_ns
        moved = bag.deserialize(BagMessage(frame.topic, frame.msgtype, 0, restamp(frame.data, 12_345_000_000_007)))
    assert (moved.header.stamp.sec, moved.header.stamp.nanosec) == (12_345, 7)
    assert moved.header.frame_id == "head_camera" and bytes(moved.data) == bytes(original.data)
    with pytest.raises(BagError, match="data: 3 bytes are not a plain CDR message with a header"):
        restamp(b"abc", 0)


def test_eva_msgs_types_hash_as_rosidl_generates_them():
    store = typestore()
    for path in sorted(eva_msgs_dir().glob("*.msg")):
        name = f"eva_msgs/msg/{path.stem}"
        generated = json.loads(path.with_suffix(".json").read_text())  # rosidl's type description, installed beside
        expected = next(entry["hash_string"] for entry in generated["type_hashes"] if entry["type_name"] == name)
        assert store.hash_rihs01(name) == expected, name


def test_a_bag_with_another_definition_of_our_type_is_refused_naming_topic_and_hashes(tmp_path):
    path = tmp_path / "old"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        stale = writer.add_connection("/timing", "eva_msgs/msg/StageTiming", msgdef="string stage\n",
                                      rihs01="RIHS01_" + "0" * 64)
        writer.write(stale, 1, typestore().serialize_cdr(string_message("denoise"), "std_msgs/msg/String"))
    with BagReader(path) as bag:
        message = next(bag.messages())
        with pytest.raises(BagError, match="topic /timing: the bag's eva_msgs/msg/StageTiming has type hash RIHS01_0+"
                                           ", this workspace's has RIHS01_[0-9a-f]{64}"):
            bag.deserialize(message)


def test_a_failed_write_leaves_no_bag(tmp_path):
    output = tmp_path / "partial.mcap"
    with pytest.raises(BagError, match="topic '/unknown': not in the contract's topic table"):
        with BagWriter(output) as writer:
            writer.write(CLOCK_TOPIC, typestore().types["rosgraph_msgs/msg/Clock"](
                clock=typestore().types["builtin_interfaces/msg/Time"](sec=1, nanosec=0)), 1)
            writer.write_raw("/unknown", b"\0\1\0\0", 2)
    assert list(tmp_path.iterdir()) == []


def test_bag_info_lists_topics_and_episodes(episodes, tmp_path, capsys):
    output = tmp_path / "info.mcap"
    assert eva(["bag", "from-episodes", str(episodes), "--output", str(output), "--limit", "2"]) == 0
    capsys.readouterr()
    assert eva(["bag", "info", str(output)]) == 0
    out = capsys.readouterr().out
    assert "/head_camera/image_raw" in out and "sensor_msgs/msg/Image" in out
    assert "episode synth_reach/demo_clean/episode1: 6 frames" in out and "'Raise the left gripper.'" in out
