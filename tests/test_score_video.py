"""`eva score` on videos: decoded by an IDM checkpoint, then scored and judged by the gate."""

from __future__ import annotations

import json

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from eva_training.cli import main as eva


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from eva_idm.idm import IDMConfig, ResNetPlusIDM, save_checkpoint

    torch.manual_seed(0)
    model = ResNetPlusIDM(IDMConfig(backbone_depth=18, output_stride=16, input_size=(32, 48)))
    return save_checkpoint(model, tmp_path_factory.mktemp("idm") / "checkpoint")


@pytest.fixture(scope="module")
def video():
    return np.random.default_rng(0).integers(0, 256, size=(8, 48, 64, 3), dtype=np.uint8)


def score(capsys, *arguments):
    assert eva(["score", *map(str, arguments)]) == 0
    return json.loads(capsys.readouterr().out)


def test_mp4_is_decoded_at_its_own_frame_rate_and_judged(checkpoint, video, tmp_path, capsys):
    path = tmp_path / "plan.mp4"
    iio.imwrite(path, video, fps=10, codec="libx264", macro_block_size=16)
    report = score(capsys, path, "--idm", checkpoint, "--plot", tmp_path / "plan.png")
    assert (report["frames"], report["fps"]) == (8, 10.0)
    assert 0.0 < report["reward"] <= 10.0
    assert set(report["verdict"]) >= {"executable", "code", "reason", "start_offset", "time_scale"}
    assert report["verdict"]["reason"]
    assert (tmp_path / "plan.png").stat().st_size > 0


def test_gif_and_frame_folder_decode_to_the_same_length(checkpoint, video, tmp_path, capsys):
    iio.imwrite(tmp_path / "plan.gif", video, duration=1000 / 16, loop=0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(video):  # natural order: frame10 after frame9
        cv2.imwrite(str(folder / f"frame{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    from_gif = score(capsys, tmp_path / "plan.gif", "--idm", checkpoint)
    from_folder = score(capsys, folder, "--idm", checkpoint, "--fps", "16")
    assert from_gif["frames"] == from_folder["frames"] == 8
    assert from_gif["fps"] == pytest.approx(16.0, rel=0.05)


def test_smooth_trajectory_is_accepted_with_an_executable_duration(tmp_path, capsys):
    times = np.linspace(0.0, 3.0, 49)
    trajectory = np.zeros((49, 14))
    trajectory[:, 1] = trajectory[:, 8] = 0.5 + 0.2 * (1 - np.cos(np.pi * times / 3.0))
    np.save(tmp_path / "plan.npy", trajectory)
    report = score(capsys, tmp_path / "plan.npy", "--fps", "16")
    assert report["verdict"]["executable"] is True and report["verdict"]["code"] == "ACCEPTED"
    assert report["verdict"]["duration_s"] >= 3.0 / report["verdict"]["time_scale"] - 0.1


def test_start_pose_far_from_the_plan_is_rejected_naming_the_joint(tmp_path, capsys):
    trajectory = np.full((20, 14), 0.5)
    np.save(tmp_path / "plan.npy", trajectory)
    start = np.full(14, 0.5)
    start[3] = 0.1
    np.save(tmp_path / "start.npy", start)
    report = score(capsys, tmp_path / "plan.npy", "--start-pose", tmp_path / "start.npy")
    assert report["verdict"]["code"] == "START_OFFSET" and "fl_joint4" in report["verdict"]["reason"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["plan.mp4"], "--idm: scoring the video"),
    (["missing.mp4", "--idm", "x"], "missing.mp4: no such file"),
    (["plan.mp4", "--idm", "nowhere"], "nowhere/config.json: IDM checkpoint config not found"),
])
def test_video_errors_are_clear(tmp_path, capsys, video, arguments, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    iio.imwrite(tmp_path / "plan.mp4", video, fps=16, codec="libx264", macro_block_size=16)
    assert eva(["score", *arguments]) == 2
    assert message in capsys.readouterr().err
