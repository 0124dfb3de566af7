"""The IDM node's core without ROS: its settings, loading the IDM and the gate, and the verdict on a plan."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from idm_checkpoints import random_idm_checkpoint, still_idm_checkpoint

from eva_idm.embodiment import load_embodiment, resolve_embodiment_path
from eva_idm.frames import FrameError
from eva_idm.idm.checkpoint import CALIBRATION_FILE, CheckpointError, read_calibration
from eva_idm.motion import Verdict, validate_trajectory
from eva_idm.node_parameters import config_from_parameters
from eva_idm.plan_gate import (
    FROM_CALIBRATION,
    FROM_EMBODIMENT,
    FROM_PARAMETER,
    CappedTolerance,
    IDMNodeConfig,
    PlanGate,
    frame_error_verdict,
    gate_id,
)
from eva_sim.test_patterns import moving_pattern

torch.set_num_threads(1)  # a 2-core machine shared with other test runs

EMBODIMENT = load_embodiment("aloha_agilex")
JOINTS = EMBODIMENT.joint_names
# Mid-range arm joints, half-open grippers: clear of every stop.
POSE = np.array([0.1, 0.5, 0.6, -0.2, 0.1, 0.0, 0.5, -0.1, 0.4, 0.7, 0.2, -0.1, 0.05, 0.8])
FRAMES = moving_pattern(17, 64, 64, seed=1)
FPS = 16.0


@pytest.fixture(scope="module")
def still_checkpoint(tmp_path_factory):
    return still_idm_checkpoint(tmp_path_factory.mktemp("still"), POSE)


@pytest.fixture(scope="module")
def still_gate(still_checkpoint) -> PlanGate:
    return PlanGate.load(IDMNodeConfig(checkpoint=str(still_checkpoint), device="cpu"))


def with_calibration(checkpoint, tmp_path, max_start_offset, joint_names=JOINTS):
    """A copy of ``checkpoint`` with the calibration.json `eva eval idm` writes (its keys)."""
    copy = shutil.copytree(checkpoint, tmp_path / "calibrated")
    calibration = {"joint_names": list(joint_names), "max_start_offset": [float(value) for value in max_start_offset],
                   "first_frame_error_quantile": [0.01] * len(joint_names), "quantile": 0.99, "margin": 1.5,
                   "episodes": 5}
    (copy / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=1) + "\n")
    return copy


def test_a_still_plan_at_the_measured_pose_is_accepted_with_the_best_reward(still_gate, still_checkpoint):
    judgement = still_gate.judge(FRAMES, FPS, JOINTS, POSE)

    assert judgement.verdict is Verdict.ACCEPTED and judgement.executable, judgement.reason
    motion = judgement.motion
    assert motion.reward.reward == pytest.approx(10.0)  # r_max: no motion, no penalty
    np.testing.assert_allclose(motion.start_offset, 0.0, atol=1e-6)  # the pose in float32
    assert (judgement.num_frames, judgement.fps, judgement.joint_names) == (17, FPS, JOINTS)
    assert judgement.time_scale == EMBODIMENT.gate.time_scale
    assert set(judgement.timings) == {"idm_decode", "gate"} and all(t >= 0 for t in judgement.timings.values())
    trajectory = motion.trajectory
    np.testing.assert_array_equal(trajectory.positions[0], POSE)
    assert trajectory.accelerations is None
    assert validate_trajectory(trajectory, EMBODIMENT, 100.0, start_positions=POSE) == []
    weights, thresholds = still_gate.model_id.split("+gate:")
    assert weights.startswith(f"{still_checkpoint.name}@") and len(weights.split("@")[1]) == 12
    assert thresholds == gate_id(EMBODIMENT, still_gate.gate_config) and thresholds.startswith("aloha_agilex@")
    assert still_gate.max_start_offset_source == FROM_EMBODIMENT and not still_gate.capped_start_offsets


def test_joint_state_is_read_by_name_and_extra_joints_are_ignored(still_gate):
    order = list(range(14))[::-1]
    names = [JOINTS[i] for i in order] + ["head_pan"]
    judgement = still_gate.judge(FRAMES, FPS, names, [POSE[i] for i in order] + [9.0])
    assert judgement.executable, judgement.reason


def test_a_random_idm_decodes_noise_and_the_report_says_why(tmp_path):
    gate = PlanGate.load(IDMNodeConfig(checkpoint=str(random_idm_checkpoint(tmp_path / "random")), device="cpu"))
    judgement = gate.judge(FRAMES, FPS, JOINTS, POSE)

    assert not judgement.executable
    assert judgement.verdict in {Verdict.POSITION_LIMIT, Verdict.GRIPPER_RANGE, Verdict.LOW_REWARD,
                                 Verdict.START_OFFSET, Verdict.SMOOTHING_DEVIATION, Verdict.DYNAMIC_LIMITS}
    assert judgement.motion.reward is not None  # the reward of the raw decode is always reported
    assert any(name in judgement.reason for name in JOINTS) or "EVA reward" in judgement.reason, judgement.reason
    assert judgement.motion.trajectory is None


def load_gate(checkpoint, **parameters) -> PlanGate:
    return PlanGate.load(IDMNodeConfig(checkpoint=str(checkpoint), device="cpu", **parameters))


CEILING = np.array(EMBODIMENT.gate.max_start_offset)


def test_a_tighter_calibration_is_used_and_a_looser_one_is_capped_at_the_embodiment(still_checkpoint, tmp_path):
    """The still IDM decodes POSE; the robot stood 0.07 rad away on fl_joint1 (embodiment tolerance 0.1)."""
    measured = POSE.copy()
    measured[0] -= 0.07
    assert load_gate(still_checkpoint).judge(FRAMES, FPS, JOINTS, measured).executable
    calibration = CEILING.copy()
    calibration[0] = 0.05  # tighter than the embodiment: used
    calibration[[5, 12]] = 4.28  # a worse IDM's j6, as a benchmark checkpoint measured: capped at 0.1
    calibration[6] = 0.3  # left_gripper, embodiment 0.25: capped

    gate = load_gate(with_calibration(still_checkpoint, tmp_path, calibration))
    assert gate.max_start_offset_source == FROM_CALIBRATION
    assert gate.gate_config.max_start_offset == tuple(np.minimum(calibration, CEILING))
    assert gate.gate_config.max_start_offset[5] == EMBODIMENT.gate.max_start_offset[5] == 0.1
    assert gate.capped_start_offsets == (CappedTolerance("fl_joint6", 4.28, 0.1),
                                         CappedTolerance("left_gripper", 0.3, 0.25),
                                         CappedTolerance("fr_joint6", 4.28, 0.1))
    assert "fl_joint6 4.28 capped at the embodiment's 0.1" in gate.max_start_offset_origin()
    rejected = gate.judge(FRAMES, FPS, JOINTS, measured)
    assert rejected.verdict is Verdict.START_OFFSET and "fl_joint1 0.07 (limit 0.05)" in rejected.reason
    assert "capped" not in rejected.reason, "fl_joint1's tolerance was not capped"


def test_a_plan_rejected_on_a_capped_joint_says_the_calibration_was_capped(still_checkpoint, tmp_path):
    measured = POSE.copy()
    measured[5] -= 0.15  # fl_joint6: beyond the embodiment's 0.1, within the calibration's 4.28
    calibration = CEILING.copy()
    calibration[5] = 4.28
    gate = load_gate(with_calibration(still_checkpoint, tmp_path, calibration))
    assert gate.gate_config.max_start_offset == EMBODIMENT.gate.max_start_offset

    rejected = gate.judge(FRAMES, FPS, JOINTS, measured)
    assert rejected.verdict is Verdict.START_OFFSET and rejected.motion.offending_joints == ("fl_joint6",)
    assert "fl_joint6 0.15 (limit 0.1)" in rejected.reason
    assert "calibration.json: fl_joint6 4.28 capped at the embodiment's 0.1" in rejected.reason


def test_the_parameter_beats_the_calibration_and_may_only_tighten(still_checkpoint, tmp_path):
    """An operator's max_start_offset is used as given when at most the embodiment's, refused above it."""
    measured = POSE.copy()
    measured[0] -= 0.07
    calibrated = with_calibration(still_checkpoint, tmp_path, [0.05] * 14)
    from_parameter = load_gate(calibrated, max_start_offset=list(CEILING))
    assert from_parameter.max_start_offset_source == FROM_PARAMETER
    assert from_parameter.judge(FRAMES, FPS, JOINTS, measured).executable
    tighter = load_gate(still_checkpoint, max_start_offset=list(CEILING / 2))
    assert "fl_joint1 0.07 (limit 0.05)" in tighter.judge(FRAMES, FPS, JOINTS, measured).reason
    with pytest.raises(ValueError, match=r"max_start_offset: above the embodiment aloha_agilex's gate.max_start_offset "
                                         r"at fl_joint1 0.12 > 0.1, right_gripper 0.3 > 0.25; the parameter may only "
                                         r"tighten the gate"):
        load_gate(still_checkpoint, max_start_offset=[0.12, *CEILING[1:13], 0.3])


def test_the_model_id_names_the_weights_and_the_thresholds_that_judge(still_checkpoint, tmp_path):
    """The gate part changes with the calibration in force and with the embodiment, and with nothing else."""
    weights_hash = load_gate(still_checkpoint).model_id.split("+gate:")[0].split("@")[1]

    def thresholds_id(checkpoint, **parameters) -> str:
        weights, thresholds = load_gate(checkpoint, **parameters).model_id.split("+gate:")
        assert weights.endswith(f"@{weights_hash}"), "the same weights whatever judges them"
        return thresholds

    uncalibrated = thresholds_id(still_checkpoint)
    assert thresholds_id(still_checkpoint, batch_size=3, num_threads=1, diagnostics_period=5.0) == uncalibrated
    tight = thresholds_id(with_calibration(still_checkpoint, tmp_path / "tight", CEILING / 2))
    tighter = thresholds_id(with_calibration(still_checkpoint, tmp_path / "tighter", CEILING / 3))
    assert len({uncalibrated, tight, tighter}) == 3
    # A calibration capped everywhere leaves the embodiment's thresholds in force: they judge, so the id is theirs.
    assert thresholds_id(with_calibration(still_checkpoint, tmp_path / "capped", CEILING * 40)) == uncalibrated

    yaml_text = resolve_embodiment_path("aloha_agilex").read_text()
    assert "  min_reward: 6.0\n" in yaml_text
    stricter_robot = tmp_path / "aloha_agilex_strict.yaml"
    stricter_robot.write_text(yaml_text.replace("  min_reward: 6.0\n", "  min_reward: 6.5\n"))
    strict = thresholds_id(still_checkpoint, embodiment=str(stricter_robot))
    assert strict.startswith("aloha_agilex@") and strict != uncalibrated
    assert thresholds_id(still_checkpoint, min_reward=6.5) not in (uncalibrated, strict)


def test_gate_parameters_override_the_embodiment_only_when_set(still_checkpoint):
    default = PlanGate.load(IDMNodeConfig(checkpoint=str(still_checkpoint), device="cpu")).gate_config
    assert (default.min_reward, default.time_scale) == (EMBODIMENT.gate.min_reward, EMBODIMENT.gate.time_scale)
    assert not default.emit_accelerations
    gate = PlanGate.load(IDMNodeConfig(checkpoint=str(still_checkpoint), device="cpu", min_reward=8.5,
                                       time_scale=0.25, emit_accelerations=True))
    assert (gate.gate_config.min_reward, gate.gate_config.time_scale) == (8.5, 0.25)
    judgement = gate.judge(FRAMES, FPS, JOINTS, POSE)
    assert judgement.executable and judgement.time_scale == 0.25
    assert judgement.motion.trajectory.accelerations is not None
    assert judgement.motion.trajectory.duration == pytest.approx(16 / FPS / 0.25)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"checkpoint": ""}, "checkpoint: required"),
        ({"device": "gpu0"}, "device: not a torch device, got 'gpu0'"),
        ({"num_threads": -1}, "num_threads: must be >= 0"),
        ({"batch_size": 0}, "batch_size: must be >= 1, got 0"),
        ({"min_reward": 11.0}, "min_reward: must lie in \\[0, 10\\] or be -1"),
        ({"min_reward": math.nan}, "min_reward: must lie in \\[0, 10\\]"),
        ({"time_scale": 0.0}, "time_scale: must lie in \\[0.1, 1\\] or be -1"),
        ({"time_scale": 1.5}, "time_scale: must lie in \\[0.1, 1\\]"),
        ({"max_start_offset": [0.1, -0.1]}, "max_start_offset: every value must be a finite number > 0"),
        ({"max_start_offset": [0.1, math.inf]}, "max_start_offset: every value must be a finite number > 0"),
        ({"diagnostics_period": 0.0}, "diagnostics_period: must be a finite number > 0"),
        ({"batch_size": 2.5}, "batch_size: expected an integer, got 2.5"),
        ({"emit_accelerations": "yes"}, "emit_accelerations: expected a boolean"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(parameters, message):
    with pytest.raises(ValueError, match=message):
        IDMNodeConfig(**{"checkpoint": "idm", **parameters})


def test_an_unknown_parameter_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) 'min_rewrad' \\(did you mean 'min_reward'\\?\\)"):
        config_from_parameters(IDMNodeConfig, {"checkpoint": "idm", "min_rewrad": 7.0}, "config/idm_node.yaml")


def test_loading_errors_name_the_parameter_and_the_file(still_checkpoint, tmp_path):
    def load(**parameters) -> None:
        PlanGate.load(IDMNodeConfig(**{"checkpoint": str(still_checkpoint), "device": "cpu", **parameters}))

    with pytest.raises(ValueError, match="checkpoint: .*missing.*config.json: IDM checkpoint config not found"):
        load(checkpoint=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="embodiment: embodiment 'aloha_agilx': not found"):
        load(embodiment="aloha_agilx")
    with pytest.raises(ValueError, match="max_start_offset: expected 14 values, one per joint of embodiment "
                                         "aloha_agilex"):
        load(max_start_offset=[0.1, 0.1, 0.1])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda', but this torch sees no CUDA device"):
            load(device="cuda")
    other_robot = with_calibration(still_checkpoint, tmp_path, [0.2] * 14, [f"joint{i}" for i in range(14)])
    with pytest.raises(ValueError, match="checkpoint: .*calibration.json: joint_names .* differ from the embodiment"):
        load(checkpoint=str(other_robot))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"max_start_offset": [0.1]}', "joint_names must be a non-empty list of names"),
        ('{"joint_names": ["a", "b"], "max_start_offset": [0.1]}', "max_start_offset must be a list of 2 numbers"),
        ('{"joint_names": ["a"], "max_start_offset": [0]}', "max_start_offset of a must be a finite number > 0"),
        ('{"joint_names": ["a"], "max_start_offset": [true]}', "max_start_offset of a must be a finite number > 0"),
    ],
)
def test_a_malformed_calibration_is_an_error_naming_the_file(tmp_path, content, message):
    (tmp_path / CALIBRATION_FILE).write_text(content)
    with pytest.raises(CheckpointError, match=f"{CALIBRATION_FILE}: {message}"):
        read_calibration(tmp_path)


def test_a_checkpoint_without_calibration_has_none(still_checkpoint):
    assert read_calibration(still_checkpoint, JOINTS) is None


@pytest.mark.parametrize("fps", [0.0, -16.0, math.nan, math.inf, -math.inf, 1e30, 0.5, 1001.0, True, "16", None])
def test_a_plan_rate_outside_the_plausible_range_is_malformed(still_gate, fps):
    judgement = still_gate.judge(FRAMES, fps, JOINTS, POSE)
    assert judgement.verdict is Verdict.MALFORMED_PLAN and judgement.reason.startswith("fps: must lie in [1, 1000] Hz")
    assert judgement.motion is None and judgement.timings == {}


@pytest.mark.parametrize(("num_frames", "fps", "needed"), [(0, 16.0, 4), (1, 16.0, 4), (3, 16.0, 4), (20, 160.0, 21)])
def test_too_few_frames_for_the_reward_or_the_idm_window(still_gate, num_frames, fps, needed):
    frames = moving_pattern(max(num_frames, 1), 64, 64)[:num_frames]
    judgement = still_gate.judge(frames, fps, JOINTS, POSE)
    assert judgement.verdict is Verdict.TOO_FEW_FRAMES
    assert judgement.reason.startswith(f"frames: the plan has {num_frames};")
    assert f"need at least {needed} at {fps:g} fps" in judgement.reason
    assert still_gate.min_frames(fps) == needed


def test_frames_that_are_not_rgb_video_are_malformed(still_gate):
    for frames in (FRAMES[..., 0], FRAMES.astype(np.float32), [FRAMES[0]]):
        judgement = still_gate.judge(frames, FPS, JOINTS, POSE)
        assert judgement.verdict is Verdict.MALFORMED_PLAN and judgement.reason.startswith("frames: expected")


@pytest.mark.parametrize(
    ("names", "positions", "message"),
    [
        ([], [], "joint_state_at_image.name: empty"),
        (JOINTS, list(POSE[:13]), "joint_state_at_image.position: 13 values for 14 names"),
        ((*JOINTS[:13], JOINTS[0]), list(POSE), "joint_state_at_image.name: repeated \\['fl_joint1'\\]"),
        (JOINTS[:13], list(POSE[:13]), "joint_state_at_image.name: lacks \\['right_gripper'\\]"),
        (tuple(name.upper() for name in JOINTS), list(POSE), "joint_state_at_image.name: lacks \\['fl_joint1', "),
        (JOINTS, [*POSE[:3], math.nan, *POSE[4:]], "joint_state_at_image.position: nan at fl_joint4 is not finite"),
        (JOINTS, [*POSE[:13], -math.inf], "joint_state_at_image.position: -inf at right_gripper is not finite"),
    ],
)
def test_an_unusable_joint_state_at_image_time_is_no_joint_state(still_gate, names, positions, message):
    judgement = still_gate.judge(FRAMES, FPS, names, positions)
    assert judgement.verdict is Verdict.NO_JOINT_STATE
    assert re.match(message, judgement.reason), judgement.reason


def test_frame_errors_about_the_hash_are_hash_mismatches():
    assert frame_error_verdict(FrameError("frames_sha256: declared 'x' but ...")) is Verdict.HASH_MISMATCH
    assert frame_error_verdict(FrameError("frames[2].data: 3 bytes are not a decodable PNG")) is Verdict.MALFORMED_PLAN
