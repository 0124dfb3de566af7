"""RoboTwin episode reading, quarantine, episode split, IDM windows and augmentations.

Episodes are written here in RoboTwin 2.0's classic layout with h5py and cv2, the way RoboTwin's
collector writes them (RGB arrays handed straight to ``cv2.imencode``), then read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from eva_idm.data import (
    ArmMirror,
    AugmentConfig,
    DatasetIndex,
    EpisodeFault,
    EpisodeFiles,
    EpisodeRecord,
    IDMWindowDataset,
    Instructions,
    ScanConfig,
    WindowAugmentation,
    adjust_hue,
    decode_frames,
    flip_with_arm_swap,
    load_episode,
    random_color_jitter,
    scan_episodes,
)
from eva_idm.embodiment import load_embodiment
from eva_idm.idm.model import IMAGENET_MEAN, IMAGENET_STD, IDMConfig

JOINTS = 14
HEIGHT, WIDTH = 16, 16
INSTRUCTIONS = {"seen": ["Lift the cup."], "unseen": ["Raise the mug."]}


def jpeg(rgb: np.ndarray) -> bytes:
    """Encode as RoboTwin does: the RGB array goes to cv2 as if it were BGR."""
    ok, encoded = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()


def grey_frames(levels: list[int]) -> np.ndarray:
    """Flat grey frames: JPEG keeps a flat block's level almost exactly, so a frame's level names it."""
    return np.stack([np.full((HEIGHT, WIDTH, 3), level, dtype=np.uint8) for level in levels])


def make_actions(num_frames: int) -> np.ndarray:
    """Distinct, finite actions: row i, joint j holds i + j / 100."""
    return np.arange(num_frames)[:, None] + np.arange(JOINTS)[None, :] / 100.0


def write_episode(
    root: Path,
    index: int,
    frames: np.ndarray | None = None,
    actions: np.ndarray | None = None,
    jpegs: list[bytes] | None = None,
    task: str = "lift_cup",
    config: str = "demo_clean",
    skip: str = "",
) -> Path:
    """One episode in the classic layout; ``skip`` leaves that dataset out."""
    frames = grey_frames([40, 80, 120, 160]) if frames is None else frames
    actions = make_actions(len(frames)) if actions is None else actions
    jpegs = [jpeg(frame) for frame in frames] if jpegs is None else jpegs
    config_dir = root / task / config
    (config_dir / "data").mkdir(parents=True, exist_ok=True)
    (config_dir / "instructions").mkdir(exist_ok=True)
    path = config_dir / "data" / f"episode{index}.hdf5"
    with h5py.File(path, "w") as file:
        if skip != "observation/head_camera/rgb":
            file.create_dataset("observation/head_camera/rgb", data=np.array(jpegs, dtype=np.bytes_))
        file.create_dataset("observation/head_camera/intrinsic_cv", data=np.zeros((len(frames), 3, 3)))
        file.create_dataset("joint_action/left_arm", data=actions[:, :6])
        file.create_dataset("joint_action/left_gripper", data=actions[:, 6])
        if skip != "joint_action/vector":
            file.create_dataset("joint_action/vector", data=actions)
    (config_dir / "instructions" / f"episode{index}.json").write_text(json.dumps(INSTRUCTIONS))
    return path


def unnormalize(windows: torch.Tensor) -> torch.Tensor:
    """Model input (K, 3, h, w) back to 0..255 pixels."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (windows * std + mean) * 255.0


def test_episode_reads_back_with_rgb_order_actions_fps_and_instructions(tmp_path):
    red, blue = np.zeros((HEIGHT, WIDTH, 3), np.uint8), np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    actions = make_actions(2)
    write_episode(tmp_path, 0, frames=np.stack([red, blue]), actions=actions)

    index = scan_episodes(tmp_path)

    assert index.num_scanned == 1 and not index.quarantined
    record = index.episodes[0]
    assert record.episode_id == "lift_cup/demo_clean/episode0"
    assert record.image_size == (HEIGHT, WIDTH) and record.num_frames == 2
    assert record.fps == pytest.approx(1 / 0.06)
    assert record.instructions == Instructions(seen=("Lift the cup.",), unseen=("Raise the mug.",))
    np.testing.assert_array_equal(record.actions, actions)
    frames = load_episode(record).frames.astype(int)
    assert frames.shape == (2, HEIGHT, WIDTH, 3)
    assert frames[0, ..., 0].min() > 240 and frames[0, ..., 2].max() < 15  # red stayed red
    assert frames[1, ..., 2].min() > 240 and frames[1, ..., 0].max() < 15  # blue stayed blue


def test_scene_info_dt_sets_the_frame_rate_and_frames_decode_in_any_order(tmp_path):
    write_episode(tmp_path, 3, frames=grey_frames([0, 100, 200]))
    (tmp_path / "lift_cup" / "demo_clean" / "scene_info.json").write_text(json.dumps({"episode_3": {"dt": 0.05}}))

    record = scan_episodes(tmp_path / "lift_cup" / "demo_clean").episodes[0]  # a single config dir works too

    assert record.fps == pytest.approx(20.0)
    levels = decode_frames(record, [2, 0, 2]).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(levels, [200, 0, 200], atol=2)


def test_corrupt_episodes_are_quarantined_with_their_reason_and_counted(tmp_path):
    good = write_episode(tmp_path, 0)
    truncated_file = write_episode(tmp_path, 1)
    truncated_file.write_bytes(truncated_file.read_bytes()[: truncated_file.stat().st_size // 2])
    write_episode(tmp_path, 2, skip="joint_action/vector")
    write_episode(tmp_path, 3, actions=make_actions(3))
    nan_actions = make_actions(4)
    nan_actions[2, 5] = np.nan
    write_episode(tmp_path, 4, actions=nan_actions)
    frames = grey_frames([40, 80, 120, 160])
    write_episode(tmp_path, 5, jpegs=[jpeg(frames[0]), b"garbage, not a JPEG", jpeg(frames[2]), jpeg(frames[3])])
    cut = jpeg(frames[1])
    write_episode(tmp_path, 6, jpegs=[jpeg(frames[0]), jpeg(frames[1]), cut[: len(cut) // 2], jpeg(frames[3])])
    write_episode(tmp_path, 7, actions=make_actions(4)[:, :12])
    (tmp_path / "lift_cup" / "demo_clean" / "data" / "episode_final.hdf5").write_bytes(good.read_bytes())

    index = scan_episodes(tmp_path, ScanConfig(max_bad_fraction=1.0))

    assert [record.files.index for record in index.episodes] == [0]
    faults = {entry.files.hdf5_path.name: (entry.fault, entry.reason) for entry in index.quarantined}
    expected = {
        "episode1.hdf5": (EpisodeFault.UNREADABLE_FILE, "truncated"),
        "episode2.hdf5": (EpisodeFault.MISSING_DATASET, "joint_action/vector"),
        "episode3.hdf5": (EpisodeFault.LENGTH_MISMATCH, "4 frames but joint_action/vector has 3"),
        "episode4.hdf5": (EpisodeFault.NON_FINITE_ACTION, "nan at frame 2, joint fl_joint6"),
        "episode5.hdf5": (EpisodeFault.BAD_JPEG, "rgb[1]: not a JPEG"),
        "episode6.hdf5": (EpisodeFault.BAD_JPEG, "rgb[2]: truncated JPEG"),
        "episode7.hdf5": (EpisodeFault.BAD_SHAPE, "(4, 12)"),
        "episode_final.hdf5": (EpisodeFault.BAD_FILE_NAME, "episode12.hdf5"),
    }
    assert set(faults) == set(expected)
    for name, (fault, fragment) in expected.items():
        assert faults[name][0] == fault, faults[name]
        assert fragment in faults[name][1], faults[name]
    assert index.num_scanned == 9 and index.bad_fraction == pytest.approx(8 / 9)
    assert index.fault_counts()["bad_jpeg"] == 2 and sum(index.fault_counts().values()) == 8
    report = index.to_dict()
    assert report["usable"] == 1 and len(report["quarantined"]) == 8


def test_joint_names_name_the_non_finite_joint(tmp_path):
    actions = make_actions(4)
    actions[1, 8] = np.inf
    write_episode(tmp_path, 0, actions=actions)
    names = load_embodiment("aloha_agilex").joint_names

    index = scan_episodes(tmp_path, ScanConfig(joint_names=names, max_bad_fraction=1.0))

    assert "inf at frame 1, joint fr_joint2" in index.quarantined[0].reason


def test_too_many_quarantined_episodes_fail_the_scan_naming_share_limit_and_reason(tmp_path):
    write_episode(tmp_path, 0)
    write_episode(tmp_path, 1)
    write_episode(tmp_path, 2, skip="observation/head_camera/rgb")

    share_and_limit = r"1 of 3 episodes quarantined \(share 0\.333\).*max_bad_fraction=0\.05"
    with pytest.raises(ValueError, match=share_and_limit) as error:
        scan_episodes(tmp_path)
    assert "episode2.hdf5: " in str(error.value) and "missing dataset observation/head_camera/rgb" in str(error.value)

    tolerant = scan_episodes(tmp_path, ScanConfig(max_bad_fraction=0.5))
    assert len(tolerant.episodes) == 2 and tolerant.fault_counts() == {"missing_dataset": 1}


def test_scan_without_episodes_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no episodes found"):
        scan_episodes(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_episodes(tmp_path / "absent")


def fake_records(count: int) -> list[EpisodeRecord]:
    """Records for split tests; the split looks only at episode ids."""
    records = []
    for index in range(count):
        path = Path(f"/nowhere/task/cfg/data/episode{index}.hdf5")
        files = EpisodeFiles("task", "cfg", index, path, path, path)
        records.append(EpisodeRecord(files, make_actions(3), 0.06, (HEIGHT, WIDTH), Instructions()))
    return records


def ids(episodes: tuple[EpisodeRecord, ...] | list[EpisodeRecord]) -> list[str]:
    return [record.episode_id for record in episodes]


def test_split_is_by_episode_deterministic_and_disjoint():
    records = fake_records(10)
    index = DatasetIndex(Path("/nowhere"), tuple(records))

    train, val = index.split(val_fraction=0.3, seed=7)

    assert len(val) == 3 and len(train) == 7
    assert not set(ids(train)) & set(ids(val))
    assert set(ids(train)) | set(ids(val)) == set(ids(records))
    shuffled = DatasetIndex(Path("/nowhere"), tuple(reversed(records)))
    assert [ids(part) for part in shuffled.split(0.3, seed=7)] == [ids(train), ids(val)]
    other_seeds = {tuple(ids(index.split(0.3, seed=seed)[1])) for seed in range(8)}
    assert len(other_seeds) > 1
    with pytest.raises(ValueError, match="val_fraction"):
        index.split(1.0, seed=0)


def test_dataset_windows_clamp_at_the_ends_and_target_the_centre_frame(tmp_path):
    levels = [0, 50, 100, 150, 200]
    actions = make_actions(len(levels))
    write_episode(tmp_path, 0, frames=grey_frames(levels), actions=actions)
    record = scan_episodes(tmp_path).episodes[0]
    # window_s 0.12 s at 1 / 0.06 s per frame: offsets (-2, 0, 2).
    config = IDMConfig(input_size=(8, 8), window_s=0.12, backbone_depth=18, output_stride=16)

    for cache_frames in (True, False):
        dataset = IDMWindowDataset([record], config, cache_frames=cache_frames)
        assert len(dataset) == 5
        expected_windows = [[0, 0, 2], [0, 1, 3], [0, 2, 4], [1, 3, 4], [2, 4, 4]]
        for frame, window in enumerate(expected_windows):
            inputs, target = dataset[frame]
            assert inputs.shape == (3, 3, 8, 8) and inputs.dtype == torch.float32
            seen = unnormalize(inputs).mean(dim=(1, 2, 3)).numpy()
            np.testing.assert_allclose(seen, [levels[i] for i in window], atol=2.5)
            np.testing.assert_allclose(target.numpy(), actions[frame], rtol=1e-6)
    assert dataset.cache_nbytes() == 5 * 8 * 8 * 3


def test_dataset_spans_episodes_and_checks_the_action_width(tmp_path):
    write_episode(tmp_path, 0, frames=grey_frames([10, 20]))
    write_episode(tmp_path, 1, frames=grey_frames([30, 40, 50]))
    episodes = scan_episodes(tmp_path).episodes
    config = IDMConfig(input_size=(8, 8), backbone_depth=18, output_stride=16)
    dataset = IDMWindowDataset(episodes, config)

    assert len(dataset) == 5 and dataset.locate(2) == (1, 0) and dataset.locate(4) == (1, 2)
    with pytest.raises(IndexError):
        dataset[5]
    narrow = IDMConfig(
        input_size=(8, 8),
        backbone_depth=18,
        output_stride=16,
        action_dim=12,
        joint_names=tuple(f"j{i}" for i in range(12)),
        action_mean=(0.0,) * 12,
        action_std=(1.0,) * 12,
    )
    with pytest.raises(ValueError, match="episode0: actions have 14 joints.*action_dim=12"):
        IDMWindowDataset(episodes, narrow)


def aloha_mirror() -> ArmMirror:
    return ArmMirror.from_embodiment(load_embodiment("aloha_agilex"))


def test_flip_with_arm_swap_swaps_arms_negates_mirrored_joints_and_is_its_own_inverse():
    frames = torch.rand(3, 4, 5, 3)
    action = torch.arange(1.0, 15.0)
    mirror = aloha_mirror()

    flipped_frames, flipped_action = flip_with_arm_swap(frames, action, mirror)

    expected = [-8, 9, 10, 11, -12, -13, 14, -1, 2, 3, 4, -5, -6, 7]
    assert flipped_action.tolist() == expected
    assert set(mirror.negated) == {0, 4, 5, 7, 11, 12}
    torch.testing.assert_close(flipped_frames[:, :, 0], frames[:, :, -1])  # left-right, not up-down
    torch.testing.assert_close(flipped_frames[:, 0], frames[:, 0].flip(dims=(1,)))
    twice_frames, twice_action = flip_with_arm_swap(flipped_frames, flipped_action, mirror)
    torch.testing.assert_close(twice_frames, frames)
    torch.testing.assert_close(twice_action, action)
    with pytest.raises(ValueError, match="own inverse"):
        ArmMirror(permutation=(1, 2, 0), negated=())


def test_color_jitter_keeps_shape_and_range_and_treats_a_window_alike():
    same = torch.rand(1, 6, 7, 3).expand(3, 6, 7, 3).contiguous()
    strong = AugmentConfig(brightness=(0.2, 3.0), contrast=(0.0, 3.0), saturation=(0.0, 3.0), hue=0.5)

    for seed in range(10):
        jittered = random_color_jitter(same, strong, torch.Generator().manual_seed(seed))
        assert jittered.shape == same.shape
        assert 0.0 <= jittered.min() and jittered.max() <= 1.0
        torch.testing.assert_close(jittered[0], jittered[2])  # one draw for the whole window
    default = AugmentConfig()
    first = random_color_jitter(same, default, torch.Generator().manual_seed(3))
    again = random_color_jitter(same, default, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)


def test_hue_rotation_moves_red_to_green_and_a_full_turn_changes_nothing():
    pixels = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.6, 0.9], [0.5, 0.5, 0.5]])

    torch.testing.assert_close(adjust_hue(pixels[:1], 1 / 3), torch.tensor([[0.0, 1.0, 0.0]]))
    torch.testing.assert_close(adjust_hue(pixels, 0.0), pixels)
    torch.testing.assert_close(adjust_hue(adjust_hue(pixels, 0.25), 0.75), pixels)


def test_augmented_samples_are_reproducible_and_flip_targets_with_the_images(tmp_path):
    write_episode(tmp_path, 0, frames=grey_frames([20, 60, 100, 140, 180, 220]))
    config = IDMConfig(input_size=(8, 8), backbone_depth=18, output_stride=16)
    augmentation = WindowAugmentation(AugmentConfig(flip_probability=0.5), aloha_mirror())
    dataset = IDMWindowDataset(scan_episodes(tmp_path).episodes, config, augmentation, seed=5)
    plain = IDMWindowDataset(dataset.episodes, config)

    first = [dataset[index] for index in range(len(dataset))]
    second = [dataset[index] for index in range(len(dataset))]
    dataset.set_epoch(1)
    next_epoch = [dataset[index] for index in range(len(dataset))]

    for (inputs, target), (inputs_again, target_again) in zip(first, second, strict=True):
        torch.testing.assert_close(inputs, inputs_again)
        torch.testing.assert_close(target, target_again)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, next_epoch, strict=True))
    targets = [target for _, target in first + next_epoch]
    plain_targets = [plain[index][1] for index in range(len(plain))] * 2
    flipped = [not torch.equal(target, plain_targets[position]) for position, target in enumerate(targets)]
    assert any(flipped) and not all(flipped)
    for target, plain_target, was_flipped in zip(targets, plain_targets, flipped, strict=True):
        if was_flipped:
            torch.testing.assert_close(target, aloha_mirror().apply(plain_target))
