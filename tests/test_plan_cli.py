"""``eva plan`` end to end on the tiny world model and a tiny random IDM: files, table, summary, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from eva_idm.frames import EncodedFrame, frames_sha256
from eva_idm.idm import IDMConfig, ResNetPlusIDM, save_checkpoint
from eva_training.cli import main

# Another long CPU job shares this 2-core machine; one thread keeps the suite predictable.
torch.set_num_threads(1)

INSTRUCTION = "pick up the red block"
TINY_FRAMES = 9  # TINY_SAMPLER_CONFIG.num_frames


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("camera") / "head.png"
    cv2.imwrite(str(path), np.random.default_rng(7).integers(0, 256, size=(48, 80, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def idm_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ResNetPlusIDM(IDMConfig(backbone_depth=18, output_stride=16, input_size=(32, 48)))
    return save_checkpoint(model, tmp_path_factory.mktemp("idm") / "checkpoint")


def plan(*argv: str) -> int:
    return main(["plan", *map(str, argv), "--threads", "1"])


def test_best_of_two_writes_every_output_and_prints_the_table(image_path, idm_path, tmp_path, capsys):
    out = tmp_path / "plan"
    assert plan(image_path, INSTRUCTION, "--out", out, "--best-of", 2, "--idm", idm_path, "--seed", 5) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "plan.json").read_text())
    assert [candidate["seed"] for candidate in summary["candidates"]] == [5, 6]
    for candidate in summary["candidates"]:
        assert str(candidate["seed"]) in printed and candidate["verdict"] in printed
        assert f"{candidate['reward']:.3f}" in printed
    assert "best of 2" in printed and "reason" in printed
    chosen = summary["candidates"][summary["best_index"]]
    assert (summary["seed"], summary["executable"]) == (chosen["seed"], chosen["executable"])
    assert len(summary["start_pose"]) == 14, "the IDM's decode of the image is the default start pose"

    pngs = sorted((out / "frames").iterdir())
    assert len(pngs) == TINY_FRAMES
    assert frames_sha256([EncodedFrame("png", path.read_bytes()) for path in pngs]) == chosen["frames_sha256"]
    assert iio.imread(out / "plan.mp4").shape == (TINY_FRAMES, 64, 64, 3)
    assert iio.immeta(out / "plan.mp4", plugin="FFMPEG")["codec"] == "h264"
    assert iio.imread(out / "plan.gif").shape == (TINY_FRAMES, 64, 64, 3)


def test_configured_size_without_idm_and_a_chosen_format(image_path, tmp_path, capsys):
    out = tmp_path / "plan"
    assert plan(image_path, INSTRUCTION, "--out", out, "--frames", 5, "--height", 32, "--width", 48,
                "--steps", 2, "--formats", "png") == 0  # fmt: skip
    assert "not scored" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == ["frames", "plan.json"]
    frames = sorted((out / "frames").iterdir())
    assert len(frames) == 5 and cv2.imread(str(frames[0])).shape == (32, 48, 3)
    summary = json.loads((out / "plan.json").read_text())
    assert (summary["executable"], summary["candidates"], summary["files"]) == (None, [], {"png": "frames/"})
    assert (summary["sampler"]["num_frames"], summary["sampler"]["steps"]) == (5, 2)


def test_a_given_start_pose_is_the_one_the_gate_uses(image_path, idm_path, tmp_path):
    pose = np.linspace(-0.1, 0.1, 14)
    np.save(tmp_path / "pose.npy", pose)
    out = tmp_path / "plan"
    assert plan(image_path, INSTRUCTION, "--out", out, "--idm", idm_path, "--start-pose", tmp_path / "pose.npy",
                "--formats", "gif") == 0  # fmt: skip
    assert json.loads((out / "plan.json").read_text())["start_pose"] == pose.tolist()


def test_a_start_pose_of_the_wrong_size_is_named(image_path, idm_path, tmp_path, capsys):
    np.save(tmp_path / "pose.npy", np.zeros(3))
    assert plan(image_path, INSTRUCTION, "--out", tmp_path / "plan", "--idm", idm_path,
                "--start-pose", tmp_path / "pose.npy") == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "--start-pose: " in error and "pose.npy holds 3 values, expected 14" in error
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--best-of", "3"], r"--best-of 3: .*--idm CHECKPOINT"),
        (["--best-of", "0"], r"--best-of: must be at least 1, got 0"),
        (["--height", "50"], r"--height must be a positive multiple of 16.*got 50"),
        (["--frames", "10"], r"--frames must be 4k\+1.*got 10"),
        (["--idm", "no/such/idm"], r"--idm: no/such/idm: no such checkpoint directory"),
        (["--model", "no/such/model"], r"--model: no/such/model: no such model directory"),
        (["--start-pose", "pose.npy"], r"--start-pose pose.npy: .*--idm"),
        (["--dtype", "bfloat16"], r"--dtype: the tiny model is built in float32, got 'bfloat16'"),
    ],
)
def test_bad_arguments_fail_clearly_before_planning(image_path, tmp_path, capsys, extra, message):
    assert plan(image_path, INSTRUCTION, "--out", tmp_path / "plan", *extra) == 2
    assert not list(tmp_path.iterdir()), "nothing is written"
    error = capsys.readouterr().err
    assert error.startswith("eva plan: error: ")
    assert re.search(message, error), error


def test_missing_or_unreadable_images_and_a_used_output_folder_are_named(image_path, tmp_path, capsys):
    assert plan(tmp_path / "absent.png", INSTRUCTION, "--out", tmp_path / "a") == 2
    assert f"IMAGE: {tmp_path / 'absent.png'}: no such file" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert plan(tmp_path / "broken.png", INSTRUCTION, "--out", tmp_path / "b") == 2
    assert "broken.png: not a readable image" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    assert plan(image_path, INSTRUCTION, "--out", tmp_path / "used") == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
