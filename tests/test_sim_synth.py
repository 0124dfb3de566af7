"""Synthetic aloha-agilex episodes: MuJoCo rendering, limit-respecting motions, RoboTwin layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from eva_idm.data import ScanConfig, scan_episodes
from eva_idm.data.robotwin import decode_jpeg
from eva_idm.embodiment import load_embodiment
from eva_sim.motions import MotionConfig, arm_limits, move_duration, random_bimanual_motion
from eva_sim.scene import AgilexScene
from eva_sim.synth import SynthConfig, encode_jpeg, synthesize
from eva_training.cli import main as eva


@pytest.fixture(scope="module")
def scene():
    with AgilexScene(height=48, width=64) as agilex:
        yield agilex


def test_rendering_is_deterministic_and_follows_the_joints(scene):
    motion = random_bimanual_motion(load_embodiment("aloha_agilex"), scene, np.random.default_rng(3), duration_s=3.0)
    start, end = motion.positions(np.array([0.0, 3.0]))
    first, again, other = scene.render_joints(start), scene.render_joints(start), scene.render_joints(end)
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    changed = np.abs(first.astype(int) - other.astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.02


def test_gripper_opening_changes_the_picture(scene):
    raised = np.zeros(14)
    raised[[1, 2, 8, 9]] = [1.2, 1.0, 1.2, 1.0]  # lift both grippers into the head camera's view
    closed, opened = raised.copy(), raised.copy()
    opened[[6, 13]] = 1.0
    assert not np.array_equal(scene.render_joints(closed), scene.render_joints(opened))


def test_motions_respect_the_embodiment_limits_for_many_seeds(scene):
    embodiment = load_embodiment("aloha_agilex")
    dt = 0.005
    velocity_limit = embodiment.per_joint("velocity_limit")
    acceleration_limit = embodiment.per_joint("acceleration_limit")
    lower, upper = embodiment.position_bounds(with_tolerance=False)
    for seed in range(40):
        motion = random_bimanual_motion(embodiment, scene, np.random.default_rng(seed), duration_s=3.0)
        positions = motion.positions(np.arange(0.0, 3.0, dt))
        velocity = np.diff(positions, axis=0) / dt
        acceleration = np.diff(velocity, axis=0) / dt
        assert (positions >= lower - 1e-9).all() and (positions <= upper + 1e-9).all(), seed
        assert (np.abs(velocity) <= velocity_limit * 1.001).all(), seed
        assert (np.abs(acceleration) <= acceleration_limit * 1.01).all(), seed


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(out_dir=root, episodes=3, frames=12, height=48, width=64, seed=7), progress=False)
    return root


def test_episodes_follow_the_robotwin_layout_and_read_back(synthesized):
    episode_dir = synthesized / "synth_reach" / "demo_clean"
    assert sorted(path.name for path in (episode_dir / "data").iterdir()) == [f"episode{i}.hdf5" for i in range(3)]
    assert sorted(path.name for path in (episode_dir / "instructions").iterdir()) == [
        f"episode{i}.json" for i in range(3)]
    with h5py.File(episode_dir / "data" / "episode0.hdf5") as episode:
        actions = episode["joint_action/vector"][()]
        frame = decode_jpeg(bytes(episode["observation/head_camera/rgb"][0]))
    assert actions.shape == (12, 14) and actions.dtype == np.float64
    assert frame.shape == (48, 64, 3)
    index = scan_episodes(synthesized, ScanConfig(require_instructions=True))
    assert len(index.episodes) == 3 and not index.quarantined
    assert index.episodes[0].fps == pytest.approx(1 / 0.06)


def test_jpeg_frames_keep_the_rendered_colours(synthesized, scene):
    """Like RoboTwin's, the stored JPEG decodes with plain cv2.imdecode to the rendered RGB frame."""
    with h5py.File(synthesized / "synth_reach" / "demo_clean" / "data" / "episode1.hdf5") as episode:
        actions = episode["joint_action/vector"][()]
        stored = decode_jpeg(bytes(episode["observation/head_camera/rgb"][5]))
    rendered = scene.render_joints(actions[5]).astype(int)
    stored = stored.astype(int)
    assert np.abs(stored - rendered).mean() < 6.0
    assert np.abs(stored[..., ::-1] - rendered).mean() > 3 * np.abs(stored - rendered).mean()


def test_same_seed_same_episodes_other_seed_differs(synthesized, tmp_path):
    synthesize(SynthConfig(out_dir=tmp_path / "a", episodes=1, frames=12, height=48, width=64, seed=7), progress=False)
    synthesize(SynthConfig(out_dir=tmp_path / "b", episodes=1, frames=12, height=48, width=64, seed=8), progress=False)

    def actions(root):
        with h5py.File(root / "synth_reach" / "demo_clean" / "data" / "episode0.hdf5") as episode:
            return episode["joint_action/vector"][()]

    np.testing.assert_array_equal(actions(tmp_path / "a"), actions(synthesized))
    assert not np.array_equal(actions(tmp_path / "b"), actions(synthesized))


def test_ground_truth_passes_the_reward_it_will_be_judged_by(synthesized):
    from eva_idm.reward import RewardConfig, eva_reward

    embodiment = load_embodiment("aloha_agilex")
    for record in scan_episodes(synthesized).episodes:
        breakdown = eva_reward(record.actions, record.fps, RewardConfig.from_embodiment(embodiment))
        assert breakdown.reward > 9.0 and breakdown.velocity_limit_penalty == 0.0


def test_eva_data_synth_end_to_end_and_errors(tmp_path, capsys):
    assert eva(["data", "synth", "--out", str(tmp_path), "--episodes", "1", "--frames", "4", "--height", "32",
                "--width", "32"]) == 0
    assert (tmp_path / "synth_reach" / "demo_clean" / "data" / "episode0.hdf5").is_file()
    assert eva(["data", "synth", "--out", str(tmp_path / "x"), "--episodes", "0"]) == 2
    assert "episodes" in capsys.readouterr().err
    assert eva(["data", "synth", "--out", str(tmp_path / "y"), "--height", "8"]) == 2
    assert "height" in capsys.readouterr().err


def test_joint_vector_maps_to_the_mjcf_joints_and_grippers_to_finger_travel(scene):
    joint_at = {int(scene.model.jnt_qposadr[index]): scene.model.joint(index).name for index in range(scene.model.njnt)}
    assert [joint_at[adr] for adr in scene.arms["left"].qpos_addresses] == [f"fl_joint{i}" for i in range(1, 8)]
    assert [joint_at[adr] for adr in scene.arms["right"].qpos_addresses] == [f"fr_joint{i}" for i in range(1, 8)]
    for opening, metres in [(0.0, 0.0), (0.5, 0.02375), (1.0, 0.0475)]:
        pose = np.zeros(14)
        pose[[6, 13]] = opening
        scene.set_joints(pose)
        for finger, mimic in [("fl_joint7", "fl_joint8"), ("fr_joint7", "fr_joint8")]:
            assert scene.data.qpos[scene.model.joint(finger).qposadr[0]] == pytest.approx(metres)
            assert scene.data.qpos[scene.model.joint(mimic).qposadr[0]] == pytest.approx(metres)


def test_scene_rejects_a_wrong_joint_vector(scene):
    with pytest.raises(ValueError, match="joints: expected 14 finite values"):
        scene.set_joints(np.zeros(13))
    with pytest.raises(ValueError, match="joints"):
        scene.set_joints(np.full(14, np.nan))


def test_camera_matrices_project_the_fingertips_into_the_image(scene):
    config = MotionConfig(home_probability=0.0)  # start at a sampled target: both fingertips in view
    motion = random_bimanual_motion(load_embodiment("aloha_agilex"), scene, np.random.default_rng(0), 1.0, config)
    scene.set_joints(motion.sample(1)[0])
    camera = scene.camera_matrices()
    for arm in ("left", "right"):
        point = camera.extrinsic_cv @ np.append(scene.fingertip(arm), 1.0)
        pixel = camera.intrinsic_cv @ point / point[2]
        assert point[2] > 0 and 0 <= pixel[0] < 64 and 0 <= pixel[1] < 48
    np.testing.assert_allclose(camera.cam2world_gl[:3, 3], [-0.032, -0.45, 1.35], atol=1e-6)


def test_move_durations_keep_minimum_jerk_peaks_within_the_limits():
    limits = arm_limits(load_embodiment("aloha_agilex"))["left"]
    rng = np.random.default_rng(0)
    for _ in range(100):
        delta = rng.uniform(-2.5, 2.5, size=7)
        duration = move_duration(delta, limits, margin=1.0)
        assert (1.875 * np.abs(delta) / duration <= limits.velocity + 1e-9).all()
        assert (5.7735 * np.abs(delta) / duration**2 <= limits.acceleration + 1e-9).all()
    gripper_toggle = np.zeros(7)
    gripper_toggle[limits.gripper_index] = 1.0
    assert move_duration(gripper_toggle, limits, margin=1.0) >= 0.9


def test_motions_are_deterministic_for_a_seed(scene):
    embodiment = load_embodiment("aloha_agilex")

    def frames(seed: int) -> np.ndarray:
        return random_bimanual_motion(embodiment, scene, np.random.default_rng(seed), 2.94).sample(50)

    np.testing.assert_array_equal(frames(3), frames(3))
    assert not np.array_equal(frames(3), frames(4))


def test_a_sampling_box_outside_the_position_limits_is_refused(scene):
    config = MotionConfig(sample_upper=(1.2, 2.2, 2.4, 1.6, 1.5, 4.0))
    with pytest.raises(ValueError, match="sample_lower/sample_upper"):
        random_bimanual_motion(load_embodiment("aloha_agilex"), scene, np.random.default_rng(0), 1.0, config)


def test_a_pure_red_frame_decodes_red_with_plain_cv2():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    decoded = decode_jpeg(encode_jpeg(red, 95))
    assert decoded[..., 0].min() > 240 and decoded[..., 2].max() < 15


def test_same_seed_writes_byte_identical_files(tmp_path):
    for name in ("a", "b"):
        config = SynthConfig(out_dir=tmp_path / name, episodes=1, frames=6, height=32, width=32, seed=5)
        synthesize(config, progress=False)
    episode = "synth_reach/demo_clean/data/episode0.hdf5"
    assert (tmp_path / "a" / episode).read_bytes() == (tmp_path / "b" / episode).read_bytes()


def test_synth_refuses_to_overwrite_episodes(synthesized):
    with pytest.raises(ValueError, match="already holds files"):
        synthesize(SynthConfig(out_dir=synthesized, episodes=1, frames=4, height=32, width=32), progress=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [("episodes", 0), ("frames", 1), ("height", 0), ("width", 100_000), ("jpeg_quality", 101), ("task", "a/b")],
)
def test_synth_config_names_the_bad_field_and_value(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"{field}: .*got {value!r}"):
        SynthConfig(out_dir=tmp_path, **{field: value})


def test_without_gripper_toggles_the_grippers_keep_their_start(tmp_path):
    root = synthesize(SynthConfig(out_dir=tmp_path, episodes=2, frames=40, height=48, width=64, seed=1,
                                  gripper_toggle_probability=0.0), progress=False)
    grippers = load_embodiment("aloha_agilex").gripper_mask()
    for path in sorted((root / "data").iterdir()):
        with h5py.File(path) as episode:
            actions = episode["joint_action/vector"][()]
        assert (actions[:, grippers] == actions[0, grippers]).all(), path.name
    with pytest.raises(ValueError, match="gripper_toggle_probability: must lie in \\[0, 1\\], got 1.5"):
        SynthConfig(out_dir=tmp_path / "other", gripper_toggle_probability=1.5)
