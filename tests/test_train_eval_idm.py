"""`eva train idm` and `eva eval idm` end to end on tiny synthetic episodes, plus their parts."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

from eva_training.artifacts import ARTIFACTS, separation_auc
from eva_training.cli import main as eva
from eva_training.config import add_config_arguments, load_config
from eva_training.train_idm import IDMTrainConfig

TINY = ["--backbone-depth", "18", "--input-size", "32", "48", "--batch-size", "8", "--num-threads", "1"]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    assert eva(["data", "synth", "--out", str(root), "--episodes", "6", "--frames", "20", "--height", "48",
                "--width", "64", "--seed", "5"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(episodes, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert eva(["train", "idm", "--data", str(episodes), "--output-dir", str(run), "--max-steps", "4",
                "--eval-every", "2", "--save-every", "2", "--val-fraction", "0.3", *TINY]) == 0
    return run


def test_training_writes_a_loadable_checkpoint_metrics_and_its_config(trained):
    from eva_idm.embodiment import load_embodiment
    from eva_idm.idm import load_checkpoint

    embodiment = load_embodiment("aloha_agilex")
    model = load_checkpoint(trained / "checkpoint", embodiment.name, embodiment.joint_names)
    assert model.config.input_size == (32, 48) and model.config.backbone_depth == 18
    decoded = model.decode_video(np.zeros((5, 48, 64, 3), np.uint8), fps=16.0)
    assert decoded.shape == (5, 14) and bool(np.isfinite(decoded.numpy()).all())
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert rows[1]["val_mae_arm"] and not rows[0]["val_mae_arm"]
    assert all(np.isfinite(float(row["loss"])) for row in rows)
    assert "max_steps: 4" in (trained / "train_config.yaml").read_text()
    assert (trained / "command.txt").read_text().startswith("eva ")


def test_training_resumes_from_its_saved_state(trained, episodes):
    assert eva(["train", "idm", "--data", str(episodes), "--output-dir", str(trained), "--max-steps", "6",
                "--eval-every", "100", "--save-every", "100", "--val-fraction", "0.3", "--resume", "true", *TINY]) == 0
    steps = [int(row["step"]) for row in csv.DictReader((trained / "metrics.csv").open())]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_without_saved_state_is_a_clear_error(episodes, tmp_path, capsys):
    assert eva(["train", "idm", "--data", str(episodes), "--output-dir", str(tmp_path), "--resume", "true",
                *TINY]) == 2
    assert "resume: no saved state" in capsys.readouterr().err


def test_evaluation_reports_accuracy_separation_and_writes_the_calibration_only_when_asked(trained, episodes,
                                                                                           tmp_path):
    checkpoint = trained / "checkpoint"
    evaluate = ["eval", "idm", "--checkpoint", str(checkpoint), "--data", str(episodes), "--split", "all"]
    out = tmp_path / "eval"
    assert eva([*evaluate, "--output-dir", str(out), "--plot-episodes", "1"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["episodes"] == 6
    assert len(report["accuracy"]["per_joint_mae"]) == 14 and report["accuracy"]["mae_arm_joints"] > 0
    assert 0.0 <= report["separation"]["auc"] <= 1.0
    assert set(report["separation"]["auc_per_artifact"]) == set(ARTIFACTS)
    assert report["median_reward_ground_truth_actions"] > 9.0  # synthetic ground truth is smooth
    tolerance = report["calibration"]["max_start_offset"]
    assert len(tolerance) == 14 and min(tolerance) >= 0.05
    assert len(list(out.glob("decode_*.png"))) == 1
    assert not (checkpoint / "calibration.json").exists(), "evaluating alone must not change how the robot gates"

    calibrated = tmp_path / "calibrated"
    assert eva([*evaluate, "--output-dir", str(calibrated), "--plot-episodes", "0", "--calibrate", "true"]) == 0
    calibration = json.loads((checkpoint / "calibration.json").read_text())
    assert calibration == json.loads((calibrated / "eval.json").read_text())["calibration"]


@pytest.mark.parametrize("name", sorted(ARTIFACTS))
def test_each_artifact_damages_the_video_deterministically(name):
    video = np.random.default_rng(0).integers(0, 256, size=(20, 24, 32, 3), dtype=np.uint8)
    first = ARTIFACTS[name](video, np.random.default_rng(1))
    again = ARTIFACTS[name](video, np.random.default_rng(1))
    assert first.shape == video.shape and first.dtype == np.uint8
    assert not np.array_equal(first, video)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[0], video[0])  # the damage stays away from the start


def test_separation_auc_counts_wins_and_half_ties():
    assert separation_auc(np.array([9.0, 8.0]), np.array([3.0, 4.0])) == 1.0
    assert separation_auc(np.array([3.0]), np.array([9.0])) == 0.0
    assert separation_auc(np.array([5.0, 9.0]), np.array([5.0])) == 0.75
    with pytest.raises(ValueError, match="at least one"):
        separation_auc(np.array([]), np.array([1.0]))


def _parse(arguments, tmp_path, yaml_text=None):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, IDMTrainConfig)
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        arguments = ["--config", str(tmp_path / "c.yaml"), *arguments]
    return load_config(IDMTrainConfig, parser.parse_args(arguments))


def test_config_precedence_is_defaults_then_yaml_then_flags(tmp_path):
    config = _parse(["--batch-size", "4"], tmp_path, "data: d\nbatch_size: 8\nlearning_rate: 1\ninput_size: [64, 80]\n")
    assert (config.batch_size, config.learning_rate, config.input_size) == (4, 1.0, (64, 80))
    assert config.weight_decay == IDMTrainConfig.weight_decay


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("data: d\nlearning_rat: 0.1\n", r"unknown config keys \['learning_rat'\]"),
    ("data: d\nmixed_precision: fp8\n", "mixed_precision: use one of"),
    ("batch_size: 8\n", "data: give the root directory"),
])
def test_config_errors_name_the_key(tmp_path, yaml_text, message):
    with pytest.raises(ValueError, match=message):
        _parse([], tmp_path, yaml_text)
