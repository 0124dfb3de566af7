"""``eva score`` end to end through the CLI entry point: reports, pictures and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from eva_training.cli import main

FRAMES = 49
JOINT_NAMES = [f"fl_joint{i}" for i in range(1, 7)] + ["left_gripper"]
JOINT_NAMES += [f"fr_joint{i}" for i in range(1, 7)] + ["right_gripper"]
ALOHA_YAML = Path(__file__).resolve().parents[1] / "config" / "embodiments" / "aloha_agilex.yaml"


def jittery_ease() -> np.ndarray:
    """EVA's reference case: cosine ease on dims 0-5 plus +-0.01 jitter on dims 0-12 (R = 4.947 at 16 fps)."""
    trajectory = np.zeros((FRAMES, 14))
    trajectory[:, :6] = (0.5 * (1.0 - np.cos(np.pi * np.arange(FRAMES) / (FRAMES - 1))))[:, None]
    trajectory[:, :13] += 0.01 * np.where(np.arange(FRAMES) % 2 == 0, -1.0, 1.0)[:, None]
    return trajectory


def write_csv(path: Path, trajectory: np.ndarray, header: list[str] | None = None) -> Path:
    lines = [",".join(header)] if header is not None else []
    lines += [",".join(repr(float(value)) for value in row) for row in trajectory]
    path.write_text("\n".join(lines) + "\n")
    return path


def score(capsys, *argv: str) -> dict:
    assert main(["score", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_npy_report_on_stdout(tmp_path, capsys) -> None:
    path = tmp_path / "plan.npy"
    np.save(path, jittery_ease())
    report = score(capsys, str(path))
    assert round(report["reward"], 3) == 4.947
    assert report["valid"] is True
    assert (report["fps"], report["frames"], report["embodiment"]) == (16.0, FRAMES, "aloha_agilex")
    assert report["file"] == str(path)
    assert report["jerk_penalty"] > report["acceleration_penalty"] > 0.0


@pytest.mark.parametrize("header", [None, JOINT_NAMES], ids=["plain", "with-header"])
def test_csv_scores_like_npy(tmp_path, capsys, header) -> None:
    npy, csv = tmp_path / "plan.npy", write_csv(tmp_path / "plan.csv", jittery_ease(), header)
    np.save(npy, jittery_ease())
    assert score(capsys, str(csv))["reward"] == pytest.approx(score(capsys, str(npy))["reward"], rel=1e-12)


def test_fps_flag_sets_the_finite_difference_step(tmp_path, capsys) -> None:
    path = tmp_path / "plan.npy"
    np.save(path, jittery_ease())
    assert score(capsys, str(path), "--fps", "8")["reward"] > score(capsys, str(path))["reward"]


def test_json_out_and_plot(tmp_path, capsys) -> None:
    path, report_path, picture = tmp_path / "plan.npy", tmp_path / "report.json", tmp_path / "plan.png"
    np.save(path, jittery_ease())
    assert main(["score", str(path), "--json-out", str(report_path), "--plot", str(picture)]) == 0
    assert capsys.readouterr().out == ""
    assert round(json.loads(report_path.read_text())["reward"], 3) == 4.947
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert picture.stat().st_size > 10_000


def test_non_finite_trajectory_scores_zero_with_reason(tmp_path, capsys) -> None:
    trajectory = jittery_ease()
    trajectory[3, 0] = np.nan
    path = tmp_path / "plan.npy"
    np.save(path, trajectory)
    report = score(capsys, str(path), "--plot", str(tmp_path / "plan.png"))
    assert report["reward"] == 0.0
    assert report["valid"] is False
    assert report["penalty"] is None
    assert "frame 3" in report["reason"]


def test_embodiment_given_as_a_yaml_path(tmp_path, capsys) -> None:
    data = yaml.safe_load(ALOHA_YAML.read_text())
    data["name"] = "aloha_slow"
    data["velocity_limit"] = [0.1] * 14
    custom = tmp_path / "aloha_slow.yaml"
    custom.write_text(yaml.safe_dump(data))
    path = tmp_path / "plan.npy"
    np.save(path, jittery_ease())
    report = score(capsys, str(path), "--embodiment", str(custom))
    assert report["embodiment"] == "aloha_slow"
    assert report["velocity_limit_penalty"] > 0.0


def expect_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(["score", *argv]) == 2
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path, capsys) -> None:
    expect_error(capsys, [str(tmp_path / "absent.npy")], "absent.npy", "no such file")


def test_unknown_file_type(tmp_path, capsys) -> None:
    path = tmp_path / "plan.txt"
    path.write_text("0,0\n")
    expect_error(capsys, [str(path)], "plan.txt", "unsupported file type '.txt'", ".npy")


@pytest.mark.parametrize("shape", [(FRAMES, 13), (FRAMES,), (2, FRAMES, 14)])
def test_wrong_npy_shape(tmp_path, capsys, shape) -> None:
    path = tmp_path / "plan.npy"
    np.save(path, np.zeros(shape))
    expect_error(capsys, [str(path)], "plan.npy", f"got {shape}")


def test_wrong_csv_width(tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "plan.csv", jittery_ease()[:, :12])
    expect_error(capsys, [str(path)], "plan.csv", f"got ({FRAMES}, 12)")


def test_csv_header_must_match_the_joint_names(tmp_path, capsys) -> None:
    header = JOINT_NAMES[7:] + JOINT_NAMES[:7]  # arms swapped
    path = write_csv(tmp_path / "plan.csv", jittery_ease(), header)
    expect_error(capsys, [str(path)], "plan.csv", "header", "fr_joint1")


def test_non_numeric_csv(tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "plan.csv", jittery_ease(), JOINT_NAMES)
    lines = path.read_text().splitlines()
    lines[10] = lines[10].replace("0.0", "zero", 1)
    path.write_text("\n".join(lines))
    expect_error(capsys, [str(path)], "plan.csv", "not a numeric CSV")


def test_empty_csv(tmp_path, capsys) -> None:
    path = tmp_path / "plan.csv"
    path.write_text(",".join(JOINT_NAMES) + "\n")
    expect_error(capsys, [str(path)], "plan.csv", "no data rows")


def test_corrupt_npy(tmp_path, capsys) -> None:
    path = tmp_path / "plan.npy"
    path.write_bytes(b"not an array")
    expect_error(capsys, [str(path)], "plan.npy", "not a readable .npy array")


def test_unknown_embodiment(tmp_path, capsys) -> None:
    path = tmp_path / "plan.npy"
    np.save(path, jittery_ease())
    expect_error(capsys, [str(path), "--embodiment", "no_such_robot"], "no_such_robot")


def test_bad_fps(tmp_path, capsys) -> None:
    path = tmp_path / "plan.npy"
    np.save(path, jittery_ease())
    expect_error(capsys, [str(path), "--fps", "0"], "fps", "got 0.0")
