"""The embodiment YAML loads into a validated, immutable description; bad files fail loudly."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from eva_idm.embodiment import (
    CONFIG_DIR_ENV,
    PER_JOINT_LIMITS,
    Embodiment,
    load_embodiment,
    resolve_embodiment_path,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ALOHA_YAML = REPO_ROOT / "config" / "embodiments" / "aloha_agilex.yaml"
ALOHA_JOINTS = [f"fl_joint{i}" for i in range(1, 7)] + ["left_gripper"]
ALOHA_JOINTS += [f"fr_joint{i}" for i in range(1, 7)] + ["right_gripper"]


@pytest.fixture(scope="module")
def aloha() -> Embodiment:
    return load_embodiment("aloha_agilex")


@pytest.fixture()
def aloha_dict() -> dict:
    return yaml.safe_load(ALOHA_YAML.read_text())


def write_yaml(directory: Path, name: str, data: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_aloha_joint_order_matches_robotwin_vector(aloha: Embodiment) -> None:
    assert aloha.name == "aloha_agilex"
    assert list(aloha.joint_names) == ALOHA_JOINTS
    assert aloha.num_joints == 14
    assert aloha.arm_slices() == {"left": slice(0, 7), "right": slice(7, 14)}
    np.testing.assert_array_equal(np.flatnonzero(aloha.gripper_mask()), [6, 13])


def test_aloha_limits_are_the_vendor_and_piper_values(aloha: Embodiment) -> None:
    arm_lower = [-3.1416, 0.0, 0.0, -2.0, -1.5708, -3.1416, 0.0]
    arm_upper = [3.1416, 3.1416, 3.1416, 1.67, 1.5708, 3.1416, 1.0]
    np.testing.assert_allclose(aloha.per_joint("position_lower"), arm_lower * 2)
    np.testing.assert_allclose(aloha.per_joint("position_upper"), arm_upper * 2)
    np.testing.assert_allclose(aloha.per_joint("velocity_limit"), [2.670, 2.893, 2.670, 3.338, 3.338, 3.338, 2.0] * 2)
    np.testing.assert_allclose(aloha.per_joint("acceleration_limit"), [5.0] * 6 + [10.0] + [5.0] * 6 + [10.0])
    np.testing.assert_allclose(aloha.per_joint("jerk_limit")[~aloha.gripper_mask()], 100.0)
    assert 0.0 < aloha.gate.time_scale < 1.0
    assert aloha.gate.controller_rate_hz == 100.0


def test_home_pose_on_the_stop_passes_and_beyond_the_band_fails(aloha: Embodiment) -> None:
    lower, upper = aloha.position_bounds()

    def within(pose: np.ndarray) -> bool:
        return bool(np.all((lower <= pose) & (pose <= upper)))

    strict_lower, _ = aloha.position_bounds(with_tolerance=False)
    np.testing.assert_array_equal(strict_lower[[1, 2, 8, 9]], 0.0)
    assert within(np.zeros(14))
    # IDM noise just below j2's stop is inside the band; a clear overshoot is not.
    noisy_home, overshoot = np.zeros(14), np.zeros(14)
    noisy_home[1], overshoot[1] = -0.01, -0.05
    assert within(noisy_home)
    assert not within(overshoot)


def test_gripper_mapping_uses_the_finger_travel(aloha: Embodiment) -> None:
    assert aloha.gripper_to_metres(0.0) == 0.0
    assert aloha.gripper_to_metres(1.0) == pytest.approx(0.0475)
    np.testing.assert_allclose(aloha.gripper_from_metres(np.array([0.0, 0.02375, 0.0475])), [0.0, 0.5, 1.0])


@given(st.floats(min_value=0.0, max_value=1.0))
def test_gripper_mapping_round_trips(normalised: float) -> None:
    aloha = load_embodiment(ALOHA_YAML)
    assert aloha.gripper_from_metres(aloha.gripper_to_metres(normalised)) == pytest.approx(normalised, abs=1e-12)


def test_embodiment_is_immutable(aloha: Embodiment) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        aloha.name = "other"  # type: ignore[misc]


def test_per_joint_arrays_are_copies(aloha: Embodiment) -> None:
    aloha.per_joint("velocity_limit")[:] = 0.0
    assert aloha.velocity_limit[0] == 2.670


def test_per_joint_rejects_unknown_field(aloha: Embodiment) -> None:
    with pytest.raises(ValueError, match="field_name.*'speed'"):
        aloha.per_joint("speed")


def test_load_by_path_and_by_name_agree(aloha: Embodiment) -> None:
    assert load_embodiment(ALOHA_YAML) == aloha
    assert load_embodiment(str(ALOHA_YAML)) == aloha


def test_second_embodiment_is_another_yaml_found_via_env(tmp_path, monkeypatch, aloha_dict) -> None:
    single_arm = {
        **aloha_dict,
        "name": "one_arm",
        "joint_names": ["shoulder", "elbow", "gripper"],
        "arms": {"main": 3},
        "gripper_joints": ["gripper"],
        "gate": {**aloha_dict["gate"], "max_start_offset": [0.1, 0.1, 0.2], "max_smoothing_deviation": [0.05] * 3},
    }
    for field in PER_JOINT_LIMITS:
        single_arm[field] = aloha_dict[field][4:7]
    (tmp_path / "embodiments").mkdir()
    write_yaml(tmp_path / "embodiments", "one_arm", single_arm)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))

    robot = load_embodiment("one_arm")

    assert robot.joint_names == ("shoulder", "elbow", "gripper")
    assert robot.arm_slices() == {"main": slice(0, 3)}
    np.testing.assert_array_equal(robot.gripper_mask(), [False, False, True])
    # The env var takes precedence, but names it does not hold still resolve from the workspace.
    assert load_embodiment("aloha_agilex").num_joints == 14


def test_unknown_name_lists_the_places_searched(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no_such_robot") as error:
        resolve_embodiment_path("no_such_robot")
    assert str(tmp_path) in str(error.value)


def test_missing_path_is_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_embodiment(tmp_path / "missing.yaml")


def drop(key: str):
    def mutate(data: dict) -> None:
        del data[key]

    return mutate


def put(key: str, value):
    def mutate(data: dict) -> None:
        data[key] = value

    return mutate


def put_gate(key: str, value):
    def mutate(data: dict) -> None:
        data["gate"][key] = value

    return mutate


def put_item(key: str, index: int, value):
    def mutate(data: dict) -> None:
        data[key][index] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (put("colour", "red"), r"unknown key.*colour"),
        (drop("jerk_limit"), r"missing key.*jerk_limit"),
        (put_gate("retries", 3), r"gate: unknown key.*retries"),
        (put("velocity_limit", [2.67] * 13), r"velocity_limit: expected 14 values.*got 13"),
        (put_gate("max_start_offset", [0.1] * 15), r"gate.max_start_offset: expected 14 values.*got 15"),
        (put_item("position_lower", 3, 1.67), r"fl_joint4.*lower=1.67, upper=1.67"),
        (put_item("velocity_limit", 2, 0.0), r"velocity_limit: every value must be > 0.*0.0"),
        (put_item("acceleration_limit", 6, -10.0), r"acceleration_limit: every value must be > 0.*-10.0"),
        (put_item("jerk_limit", 0, "fast"), r"jerk_limit\[0\]: expected a finite number, got 'fast'"),
        (put_item("position_tolerance", 0, -0.1), r"position_tolerance: must be >= 0.*-0.1"),
        (put("gripper_joints", ["left_gripper", "claw"]), r"gripper_joints.*claw"),
        (put("joint_names", ALOHA_JOINTS[:13] + ["fl_joint1"]), r"joint_names: must be non-empty and unique"),
        (put("arms", {"left": 7, "right": 6}), r"arms: .*adding up to 14.*6"),
        (put("gripper_open_m", 0.0), r"gripper_closed_m/gripper_open_m.*open=0.0"),
        (put_gate("time_scale", 1.5), r"gate.time_scale: must lie in \(0, 1\], got 1.5"),
        (put_gate("min_reward", 11), r"gate.min_reward: must lie in \[0, 10\], got 11"),
        (put_gate("controller_rate_hz", True), r"gate.controller_rate_hz: expected a finite number, got True"),
    ],
)
def test_invalid_yaml_names_the_file_field_and_value(tmp_path, aloha_dict, mutate, expected) -> None:
    data = copy.deepcopy(aloha_dict)
    mutate(data)
    path = write_yaml(tmp_path, "broken", data)
    with pytest.raises(ValueError, match=expected) as error:
        load_embodiment(path)
    assert str(path) in str(error.value)


def test_malformed_yaml_is_a_value_error(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_embodiment(path)


def test_direct_construction_is_validated_too(aloha: Embodiment) -> None:
    with pytest.raises(ValueError, match="velocity_limit: expected 14 values"):
        dataclasses.replace(aloha, velocity_limit=(1.0,) * 7)
