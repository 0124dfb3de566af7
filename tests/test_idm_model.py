"""The ``resnet_plus`` IDM, its ResNet backbone and its checkpoints, at tiny CPU sizes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from eva_idm.idm import (
    CheckpointError,
    IDMConfig,
    ResNetPlusIDM,
    SpatialSoftArgmax,
    build_resnet,
    convert_released_checkpoint,
    frame_offsets,
    load_checkpoint,
    load_released_checkpoint,
    preprocess_frames,
    read_checkpoint_config,
    save_checkpoint,
    tile_rgb_kernel,
    window_indices,
)
from eva_idm.idm.checkpoint import WEIGHTS_FILE

TINY = IDMConfig(backbone_depth=18, output_stride=16, input_size=(32, 48))
FPS = 16.0


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Other tests share the two cores; one thread is also deterministic for exact comparisons."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(config: IDMConfig = TINY, seed: int = 0) -> ResNetPlusIDM:
    torch.manual_seed(seed)
    return ResNetPlusIDM(config).eval()


def random_video(num_frames: int = 5, height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


# --- backbone -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "names", "count"),
    [
        (18, ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
              "layer2.0.downsample.1.bias", "layer4.1.bn2.weight"], 11_176_512),
        (50, ["conv1.weight", "layer1.0.downsample.0.weight", "layer2.0.downsample.0.weight",
              "layer3.5.conv2.weight", "layer4.2.conv3.weight", "layer4.2.bn3.running_mean"], 23_508_032),
    ],
)  # fmt: skip
def test_resnet_uses_torchvision_parameter_names(depth: int, names: list[str], count: int) -> None:
    backbone = build_resnet(depth)
    state = backbone.state_dict()
    for name in names:
        assert name in state
    assert not any(key.startswith(("fc.", "avgpool")) for key in state)
    assert sum(parameter.numel() for parameter in backbone.parameters()) == count


def test_output_stride_16_doubles_the_final_feature_map() -> None:
    image = torch.zeros(1, 3, 64, 96)
    coarse = build_resnet(18, output_stride=32).eval()(image)
    fine = build_resnet(18, output_stride=16).eval()(image)
    assert coarse.shape == (1, 512, 2, 3)
    assert fine.shape == (1, 512, 4, 6)


def test_unsupported_depth_and_stride_are_named() -> None:
    with pytest.raises(ValueError, match="backbone_depth.*101"):
        build_resnet(101)
    with pytest.raises(ValueError, match="output_stride.*4"):
        build_resnet(18, output_stride=4)


# --- model pieces ---------------------------------------------------------------------------------


def test_tiled_stem_answers_identical_frames_like_the_rgb_stem() -> None:
    torch.manual_seed(1)
    rgb = build_resnet(18).eval()
    model = tiny_model()
    model.load_rgb_backbone_weights(rgb.state_dict())
    frame = torch.randn(1, 3, 32, 48)
    stacked = frame.repeat(1, TINY.num_frames, 1, 1)
    assert model.backbone.conv1.weight.shape == (64, 9, 7, 7)
    torch.testing.assert_close(model.backbone.conv1(stacked), rgb.conv1(frame), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="RGB kernel"):
        tile_rgb_kernel(torch.zeros(64, 4, 7, 7), 3)


def test_soft_argmax_finds_the_peak_of_a_one_hot_map() -> None:
    soft_argmax = SpatialSoftArgmax()
    with torch.no_grad():
        soft_argmax.temperature.fill_(0.01)
    features = torch.zeros(1, 2, 5, 9)
    features[0, 0, 1, 6] = 1.0  # channel 0 peaks at row 1, column 6
    features[0, 1, 4, 0] = 1.0  # channel 1 peaks at the bottom-left corner
    rows, columns = soft_argmax(features).view(2, 2)
    torch.testing.assert_close(rows, torch.tensor([-1 + 2 * 1 / 4, 1.0]))
    torch.testing.assert_close(columns, torch.tensor([-1 + 2 * 6 / 8, -1.0]))


def test_soft_argmax_starts_at_temperature_one_and_averages_a_flat_map() -> None:
    soft_argmax = SpatialSoftArgmax()
    assert soft_argmax.temperature.item() == 1.0
    torch.testing.assert_close(soft_argmax(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 6))


@pytest.mark.parametrize(
    ("window_s", "fps", "num_frames", "expected"),
    [
        (1 / 16, 16.0, 3, (-1, 0, 1)),
        (1 / 16, 1 / 0.06, 3, (-1, 0, 1)),  # RoboTwin's ~16.7 Hz
        (2 / 16, 16.0, 3, (-2, 0, 2)),
        (1 / 16, 32.0, 5, (-4, -2, 0, 2, 4)),
        (1 / 16, 24.0, 3, (-2, 0, 2)),  # 1.5 frames rounds half up
        (1 / 16, 4.0, 3, (-1, 0, 1)),  # never collapses onto the centre frame
    ],
)
def test_frame_offsets_come_from_seconds(window_s: float, fps: float, num_frames: int, expected: tuple) -> None:
    assert frame_offsets(window_s, fps, num_frames) == expected


def test_frame_offsets_reject_bad_fps_and_even_windows() -> None:
    with pytest.raises(ValueError, match="fps.*0"):
        frame_offsets(1 / 16, 0.0)
    with pytest.raises(ValueError, match="num_frames.*4"):
        frame_offsets(1 / 16, 16.0, 4)


def test_window_indices_clamp_so_end_frames_repeat() -> None:
    expected = torch.tensor([[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    assert torch.equal(window_indices(4, (-1, 0, 1)), expected)
    assert torch.equal(window_indices(1, (-2, 0, 2)), torch.zeros(1, 3, dtype=torch.long))


def test_preprocessing_resizes_and_normalises() -> None:
    white = np.full((2, 10, 30, 3), 255, dtype=np.uint8)
    images = preprocess_frames(white, (16, 24))
    assert images.shape == (2, 3, 16, 24)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(images[0, :, 5, 7], expected)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((4, 8, 8), np.uint8), r"frames: expected shape \(T, H, W, 3\)"),
        (np.full((2, 8, 8, 3), 2.0, np.float32), r"\[0, 1\].*max 2.0"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), r"\[0, 1\]"),
        (np.zeros((2, 8, 8, 3), np.int32), "dtype must be uint8"),
    ],
)
def test_bad_frames_are_rejected_with_the_reason(frames: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess_frames(frames, (8, 8))


# --- whole model ----------------------------------------------------------------------------------


def test_decode_video_gives_one_command_per_frame() -> None:
    model = tiny_model().train()
    video = random_video()
    decoded = model.decode_video(video, FPS, batch_size=2)
    assert decoded.shape == (5, 14) and decoded.dtype == torch.float32
    assert model.training, "decode_video must restore the caller's train/eval mode"
    as_float = model.decode_video(video.astype(np.float32) / 255.0, FPS, batch_size=4)
    torch.testing.assert_close(as_float, decoded, rtol=1e-4, atol=1e-4)


def test_decode_video_matches_forward_on_explicit_windows() -> None:
    model = tiny_model()
    video = random_video(num_frames=3)
    images = preprocess_frames(video, TINY.input_size)
    first_window = images[torch.tensor([0, 0, 1])].unsqueeze(0)  # frame 0's window, clamped
    with torch.no_grad():
        expected = model(first_window)[0]
    torch.testing.assert_close(model.decode_video(video, FPS)[0], expected)


def test_zero_head_output_decodes_to_the_mean() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.mlp_head[-1].weight.zero_()
        model.mlp_head[-1].bias.zero_()
    decoded = model.decode_video(random_video(num_frames=2), FPS)
    expected = torch.tensor(TINY.action_mean).expand(2, -1)
    torch.testing.assert_close(decoded, expected)


def test_forward_rejects_windows_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match=r"windows: expected shape \(B, 3, 3, 32, 48\)"):
        tiny_model()(torch.zeros(1, 3, 3, 64, 64))


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    data = json.loads(json.dumps(TINY.to_dict()))
    assert IDMConfig.from_dict(data) == TINY
    with pytest.raises(ValueError, match="unknown key 'window_frames'"):
        IDMConfig.from_dict({**data, "window_frames": 3})
    with pytest.raises(ValueError, match="action_std.*> 0"):
        IDMConfig(action_std=(0.0,) * 14)
    with pytest.raises(ValueError, match="joint_names: 13 names for action_dim 14"):
        IDMConfig(joint_names=TINY.joint_names[:13])


# --- checkpoints ----------------------------------------------------------------------------------


def test_save_then_load_reproduces_outputs_exactly(tmp_path: Path) -> None:
    model = tiny_model()
    video = random_video()
    directory = save_checkpoint(model, tmp_path / "idm")
    assert read_checkpoint_config(directory) == TINY
    loaded = load_checkpoint(directory, "aloha_agilex", expected_joint_names=TINY.joint_names)
    assert not loaded.training
    assert torch.equal(loaded.decode_video(video, FPS), model.decode_video(video, FPS))


def test_load_rejects_another_embodiment(tmp_path: Path) -> None:
    directory = save_checkpoint(tiny_model(), tmp_path / "idm")
    with pytest.raises(CheckpointError, match="'aloha_agilex', expected 'ur5_dual'"):
        load_checkpoint(directory, "ur5_dual")
    renamed = ["left_" + name for name in TINY.joint_names]
    with pytest.raises(CheckpointError, match="joint_names.*left_fl_joint1"):
        load_checkpoint(directory, "aloha_agilex", expected_joint_names=renamed)


def test_truncated_weights_are_reported_with_the_file(tmp_path: Path) -> None:
    directory = save_checkpoint(tiny_model(), tmp_path / "idm")
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(directory, "aloha_agilex")


def test_missing_key_and_missing_files_are_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = save_checkpoint(tiny_model(), tmp_path / "idm")
    weights = directory / WEIGHTS_FILE
    state = load_file(weights)
    del state["mlp_head.4.weight"]
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing key\(s\) 'mlp_head\.4\.weight'"):
        load_checkpoint(directory, "aloha_agilex")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(directory, "aloha_agilex")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "nowhere", "aloha_agilex")


def released_layout(model: ResNetPlusIDM) -> dict:
    """``model`` saved the way the authors' training script saves the IDM (DDP-wrapped normalisation wrapper)."""
    buffers = {"action_mean": "train_mean", "action_std": "train_std"}
    state = {
        f"module.{buffers[key]}" if key in buffers else f"module.model.{key}": value
        for key, value in model.state_dict().items()
    }
    state["module.model.backbone.fc.weight"] = torch.randn(1000, 512)
    state["module.model.backbone.fc.bias"] = torch.randn(1000)
    return {"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}, "step": 150_000}


def test_released_pt_layout_loads_and_converts(tmp_path: Path) -> None:
    source_config = IDMConfig.from_dict({**TINY.to_dict(), "action_mean": [0.5] * 14, "action_std": [2.0] * 14})
    source = tiny_model(source_config, seed=3)
    pt_path = tmp_path / "IDM_singleview.pt"
    torch.save(released_layout(source), pt_path)
    video = random_video()
    expected = source.decode_video(video, FPS)

    released = load_released_checkpoint(pt_path, TINY)
    assert released.config.action_mean == source_config.action_mean, "the file's normalisation must win"
    assert torch.equal(released.decode_video(video, FPS), expected)

    directory = convert_released_checkpoint(pt_path, tmp_path / "converted", TINY)
    assert torch.equal(load_checkpoint(directory, "aloha_agilex").decode_video(video, FPS), expected)


def test_released_pt_errors_name_file_and_key(tmp_path: Path) -> None:
    state = released_layout(tiny_model())["model_state_dict"]
    pt_path = tmp_path / "IDM_singleview.pt"
    torch.save({"model_state_dict": {**state, "module.model.extra.weight": torch.zeros(1)}}, pt_path)
    with pytest.raises(CheckpointError, match=r"IDM_singleview\.pt: unexpected key\(s\) 'extra\.weight'"):
        load_released_checkpoint(pt_path, TINY)
    del state["module.model.spatial_softmax.temperature"]
    torch.save(state, pt_path)  # a bare state dict is accepted too
    with pytest.raises(CheckpointError, match=r"IDM_singleview\.pt: missing key\(s\) 'spatial_softmax\.temperature'"):
        load_released_checkpoint(pt_path, TINY)
    state["module.model.spatial_softmax.temperature"] = torch.ones(2)
    torch.save(state, pt_path)
    with pytest.raises(CheckpointError, match=r"temperature' has shape \(2,\), the model expects \(1,\)"):
        load_released_checkpoint(pt_path, TINY)


class NotATensor:
    """An arbitrary object: a weights-only load must refuse to recreate it."""


def test_released_pt_is_opened_weights_only(tmp_path: Path) -> None:
    pt_path = tmp_path / "IDM_singleview.pt"
    torch.save({"model_state_dict": {"x": NotATensor()}}, pt_path)
    with pytest.raises(CheckpointError, match=r"refused by weights-only loading.*GLOBAL test_idm_model\.NotATensor"):
        load_released_checkpoint(pt_path, TINY)


def trainer_layouts() -> dict[str, Callable[[dict[str, torch.Tensor]], object]]:
    """How trainers other than the authors' save the IDM: wrapper prefixes and containers, by name."""
    def prefixed(prefix: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        return lambda state: {f"{prefix}{key}": value for key, value in state.items()}

    return {
        "plain state dict": lambda state: state,
        "model.": prefixed("model."),
        "model._orig_mod.": prefixed("model._orig_mod."),
        "_orig_mod.": prefixed("_orig_mod."),
        "module.": prefixed("module."),
        "_orig_mod.module.model.": prefixed("_orig_mod.module.model."),
        "under state_dict": lambda state: {"state_dict": state, "epoch": 3},
        "under model": lambda state: {"model": prefixed("_orig_mod.")(state), "optimizer": {}},
        "under module": lambda state: {"module": state},
        "under model_state_dict and state_dict": lambda state: {"model_state_dict": {"state_dict": state}},
    }


@pytest.mark.parametrize("layout", sorted(trainer_layouts()))
def test_released_pt_accepts_the_layouts_trainers_write(layout: str, tmp_path: Path) -> None:
    source = tiny_model(seed=4)
    pt_path = tmp_path / "idm.pt"
    torch.save(trainer_layouts()[layout](source.state_dict()), pt_path)
    video = random_video()
    loaded = load_released_checkpoint(pt_path, TINY)
    assert torch.equal(loaded.decode_video(video, FPS), source.decode_video(video, FPS))


def test_released_pt_refuses_other_prefixes_and_containers_by_name(tmp_path: Path) -> None:
    state = tiny_model().state_dict()
    pt_path = tmp_path / "idm.pt"
    torch.save({f"ema.{key}": value for key, value in state.items()}, pt_path)
    with pytest.raises(CheckpointError, match=r"idm\.pt: missing key\(s\)"):
        load_released_checkpoint(pt_path, TINY)
    torch.save({"model_state_dict": {**state, "model.backbone.conv1.weight": state["backbone.conv1.weight"]}}, pt_path)
    with pytest.raises(CheckpointError, match=r"keys 'backbone\.conv1\.weight' and 'model\.backbone\.conv1\.weight' "
                                              r"both map to 'backbone\.conv1\.weight'"):
        load_released_checkpoint(pt_path, TINY)
    torch.save({"weights": state}, pt_path)
    with pytest.raises(CheckpointError, match=r"idm\.pt: expected a state dict .*'state_dict'.*; "
                                              r"the file\['weights'\] is of type OrderedDict, not a tensor"):
        load_released_checkpoint(pt_path, TINY)
    torch.save({"state_dict": {}}, pt_path)
    with pytest.raises(CheckpointError, match=r"the file\['state_dict'\] is an empty dict"):
        load_released_checkpoint(pt_path, TINY)
