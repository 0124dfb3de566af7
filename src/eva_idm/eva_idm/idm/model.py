"""EVA's ``resnet_plus`` inverse dynamics model: a short window of frames -> one absolute joint command.

The model follows ``notes/eva_method.md`` §2.2-2.3. ``K`` frames centred on frame ``t`` are stacked along
channels and go through a ResNet whose stem takes ``3K`` channels. A spatial soft-argmax turns every
channel of the last feature map into an expected image position (a "keypoint"). An MLP regresses the
normalised 14-d command from the keypoints, and fixed per-joint mean/std buffers de-normalise it.
Keypoints are said to be more stable than global pooling on generated video. The output is the
*absolute* joint-position command at ``t`` (radians; grippers 0..1), not a delta.

The window is defined in seconds rather than frames. RoboTwin records at ~16.7 Hz and EVA's plans
are 16 fps; the same ``window_s`` gives the right frame offsets for both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eva_idm.idm.resnet import ARCHITECTURES, SUPPORTED_OUTPUT_STRIDES, build_resnet

ALOHA_AGILEX_JOINT_NAMES = (
    *(f"fl_joint{i}" for i in range(1, 7)),
    "left_gripper",
    *(f"fr_joint{i}" for i in range(1, 7)),
    "right_gripper",
)
# Per-joint normalisation of the released IDM (notes §2.1). The released IDM and AnyPos hard-code
# these values; they are not RoboTwin statistics.
RELEASED_ACTION_MEAN = (
    -0.2687, 0.8356, 0.6952, -0.2910, 0.1885, -0.0101, 1.4195,
    0.3507, 1.0565, 0.8930, -0.3749, -0.1851, -0.0273, 1.3527,
)  # fmt: skip
RELEASED_ACTION_STD = (
    0.2595, 0.6590, 0.5215, 0.4215, 0.3203, 0.2845, 1.7827,
    0.2909, 0.6768, 0.5825, 0.4240, 0.2870, 0.3110, 1.6765,
)  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_HIDDEN_WIDTH = 1024
HEAD_BOTTLENECK_WIDTH = 512


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class IDMConfig:
    """Everything needed to rebuild an IDM; stored as a checkpoint's ``config.json``.

    ``input_size`` is ``(height, width)``: frames are resized to it directly, without cropping.
    ``window_s`` is the time between neighbouring frames of the window; ``num_frames`` (odd) frames
    are centred on the decoded frame. The defaults describe the released model: ResNet-50,
    512x512 input and frames ``[t-1, t, t+1]`` at 16 fps.
    """

    embodiment: str = "aloha_agilex"
    joint_names: tuple[str, ...] = ALOHA_AGILEX_JOINT_NAMES
    backbone_depth: int = 50
    output_stride: int = 32
    input_size: tuple[int, int] = (512, 512)
    num_frames: int = 3
    window_s: float = 1 / 16
    action_dim: int = 14
    action_mean: tuple[float, ...] = RELEASED_ACTION_MEAN
    action_std: tuple[float, ...] = RELEASED_ACTION_STD
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for check in (self._check_embodiment, self._check_backbone, self._check_window, self._check_actions):
            check()

    def _check_embodiment(self) -> None:
        if not isinstance(self.embodiment, str) or not self.embodiment:
            raise ValueError(f"embodiment: must be a non-empty string, got {self.embodiment!r}")
        names = self.joint_names
        if not isinstance(names, tuple) or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"joint_names: must be a tuple of non-empty strings, got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"joint_names: must be unique, got {names!r}")

    def _check_backbone(self) -> None:
        if not _is_positive_int(self.backbone_depth) or self.backbone_depth not in ARCHITECTURES:
            raise ValueError(f"backbone_depth: must be one of {sorted(ARCHITECTURES)}, got {self.backbone_depth!r}")
        if not _is_positive_int(self.output_stride) or self.output_stride not in SUPPORTED_OUTPUT_STRIDES:
            raise ValueError(f"output_stride: must be one of {SUPPORTED_OUTPUT_STRIDES}, got {self.output_stride!r}")
        size = self.input_size
        if not isinstance(size, tuple) or len(size) != 2 or not all(_is_positive_int(side) for side in size):
            raise ValueError(f"input_size: must be (height, width) as two positive integers, got {size!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be a number in [0, 1), got {self.dropout!r}")

    def _check_window(self) -> None:
        if not _is_positive_int(self.num_frames) or self.num_frames % 2 == 0:
            raise ValueError(f"num_frames: must be a positive odd integer (a centred window), got {self.num_frames!r}")
        if not _is_number(self.window_s) or not math.isfinite(self.window_s) or self.window_s <= 0:
            raise ValueError(f"window_s: must be a finite number of seconds > 0, got {self.window_s!r}")

    def _check_actions(self) -> None:
        if not _is_positive_int(self.action_dim):
            raise ValueError(f"action_dim: must be a positive integer, got {self.action_dim!r}")
        if len(self.joint_names) != self.action_dim:
            raise ValueError(
                f"joint_names: {len(self.joint_names)} names for action_dim {self.action_dim}: {self.joint_names!r}"
            )
        for name in ("action_mean", "action_std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != self.action_dim:
                raise ValueError(f"{name}: must be a tuple of {self.action_dim} numbers, got {values!r}")
            if not all(_is_number(value) and math.isfinite(value) for value in values):
                raise ValueError(f"{name}: every value must be a finite number, got {values!r}")
        if not all(value > 0 for value in self.action_std):
            raise ValueError(f"action_std: every value must be > 0, got {self.action_std!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IDMConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are an error.

        An unknown key usually means a typo or a config written for another model, and silently
        ignoring it would build a different network than the one described.
        """
        known = {field.name for field in fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"IDMConfig: unknown key {key!r} (known keys: {sorted(known)})")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def tile_rgb_kernel(weight: Tensor, num_frames: int) -> Tensor:
    """Turn an RGB convolution kernel ``(O, 3, kh, kw)`` into a ``(O, 3K, kh, kw)`` kernel for K frames.

    The kernel is repeated once per frame and divided by K. A stack of K identical frames then gives
    exactly the RGB kernel's response, so pretrained features (or a sensible random start) carry
    over, and motion shows up as a departure from it.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"weight: expected an RGB kernel of shape (out, 3, kh, kw), got {tuple(weight.shape)}")
    if not _is_positive_int(num_frames):
        raise ValueError(f"num_frames: must be a positive integer, got {num_frames!r}")
    return weight.repeat(1, num_frames, 1, 1) / num_frames


def multi_frame_stem(rgb_conv: nn.Conv2d, num_frames: int) -> nn.Conv2d:
    """A copy of ``rgb_conv`` that takes ``num_frames`` channel-stacked RGB frames (see :func:`tile_rgb_kernel`)."""
    stem = nn.Conv2d(
        3 * num_frames,
        rgb_conv.out_channels,
        rgb_conv.kernel_size,
        stride=rgb_conv.stride,
        padding=rgb_conv.padding,
        bias=False,
    )
    with torch.no_grad():
        stem.weight.copy_(tile_rgb_kernel(rgb_conv.weight, num_frames))
    return stem


class SpatialSoftArgmax(nn.Module):
    """Per-channel expected position of a softmax over the feature map.

    Maps ``(B, C, H, W)`` to ``(B, 2C)``: first the C expected *row* coordinates, then the C expected
    *column* coordinates, both on a ``[-1, 1]`` grid (top/left = -1). This is the released IDM's
    layout (its code calls the row coordinate "x"). Keeping it means the head's first layer loads
    unchanged. The temperature is learnable and starts at 1. Lower values sharpen the softmax
    towards a hard arg-max.
    """

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, features: Tensor) -> Tensor:
        """Expected (row, column) per channel; the softmax runs in float32 so bf16 maps stay accurate."""
        batch, channels, height, width = features.shape
        logits = features.float().reshape(batch, channels, height * width) / self.temperature.float()
        probabilities = torch.softmax(logits, dim=-1).reshape(batch, channels, height, width)
        rows = torch.linspace(-1.0, 1.0, height, device=features.device)
        columns = torch.linspace(-1.0, 1.0, width, device=features.device)
        expected_row = (probabilities.sum(dim=3) * rows).sum(dim=-1)
        expected_column = (probabilities.sum(dim=2) * columns).sum(dim=-1)
        return torch.cat([expected_row, expected_column], dim=1).to(features.dtype)


def frame_offsets(window_s: float, fps: float, num_frames: int = 3) -> tuple[int, ...]:
    """Frame offsets of a centred window, e.g. ``(-1, 0, 1)`` for ``window_s=1/16`` at 16 fps.

    The step is ``round(window_s * fps)``, rounding halves up (not to even), and at least one frame.
    A window that collapsed onto its centre frame would hide all motion from the model.
    """
    if not _is_number(fps) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps: must be a finite number > 0, got {fps!r}")
    if not _is_number(window_s) or not math.isfinite(window_s) or window_s <= 0:
        raise ValueError(f"window_s: must be a finite number of seconds > 0, got {window_s!r}")
    if not _is_positive_int(num_frames) or num_frames % 2 == 0:
        raise ValueError(f"num_frames: must be a positive odd integer, got {num_frames!r}")
    step = max(1, math.floor(window_s * fps + 0.5))
    half = num_frames // 2
    return tuple(step * k for k in range(-half, half + 1))


def window_indices(video_length: int, offsets: tuple[int, ...]) -> Tensor:
    """``(T, K)`` frame indices of every window, clamped to the video so end frames repeat."""
    if not _is_positive_int(video_length):
        raise ValueError(f"video_length: must be a positive integer, got {video_length!r}")
    centres = torch.arange(video_length).unsqueeze(1)
    return (centres + torch.tensor(offsets).unsqueeze(0)).clamp(0, video_length - 1)


def as_frame_tensor(frames: np.ndarray | Tensor) -> Tensor:
    """Check a ``(T, H, W, 3)`` RGB video and return it as a tensor (no copy for tensors).

    ``uint8`` (0..255) and floating point (0..1) are accepted. Anything else is more likely a
    mistake (BGR-vs-RGB aside, which no check can catch) than a convention to guess.
    """
    video = torch.from_numpy(np.array(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(video, Tensor):
        raise ValueError(f"frames: expected a numpy array or torch tensor, got {type(frames).__name__}")
    if video.ndim != 4 or video.shape[3] != 3 or 0 in video.shape:
        raise ValueError(f"frames: expected shape (T, H, W, 3) with T, H, W > 0, got {tuple(video.shape)}")
    if video.dtype == torch.uint8:
        return video
    if not video.is_floating_point():
        raise ValueError(f"frames: dtype must be uint8 (0..255) or floating point (0..1), got {video.dtype}")
    low, high = video.min().item(), video.max().item()
    if not (0.0 <= low and high <= 1.0):  # also rejects NaN
        raise ValueError(f"frames: floating-point values must lie in [0, 1], got min {low} and max {high}")
    return video


def _resize_and_normalize(video: Tensor, input_size: tuple[int, int]) -> Tensor:
    """``(N, H, W, 3)`` checked frames -> ``(N, 3, h, w)`` float32, ImageNet-normalised."""
    images = video.permute(0, 3, 1, 2).float()
    if video.dtype == torch.uint8:
        images = images / 255.0
    if tuple(images.shape[-2:]) != tuple(input_size):
        images = nn.functional.interpolate(images, input_size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def preprocess_frames(frames: np.ndarray | Tensor, input_size: tuple[int, int]) -> Tensor:
    """RGB frames ``(T, H, W, 3)`` -> model input ``(T, 3, h, w)``, as the IDM was trained (notes §2.3).

    Frames are resized directly to ``input_size`` (the aspect ratio is not kept, matching training).
    Resizing is bilinear with antialiasing, and the result is normalised with ImageNet mean/std.
    """
    return _resize_and_normalize(as_frame_tensor(frames), input_size)


class ResNetPlusIDM(nn.Module):
    """The ``resnet_plus`` IDM: ``(B, K, 3, h, w)`` preprocessed windows -> ``(B, action_dim)`` commands.

    Parameter names: ``backbone.*`` (torchvision ResNet names), ``spatial_softmax.temperature``,
    ``mlp_head.{0,1,4,6}.*`` and the de-normalisation buffers ``action_mean`` / ``action_std``.
    """

    def __init__(self, config: IDMConfig):
        super().__init__()
        self.config = config
        self.backbone = build_resnet(config.backbone_depth, config.output_stride)
        self.backbone.conv1 = multi_frame_stem(self.backbone.conv1, config.num_frames)
        self.spatial_softmax = SpatialSoftArgmax()
        self.mlp_head = nn.Sequential(
            nn.Linear(2 * self.backbone.out_channels, HEAD_HIDDEN_WIDTH),
            nn.LayerNorm(HEAD_HIDDEN_WIDTH),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(HEAD_HIDDEN_WIDTH, HEAD_BOTTLENECK_WIDTH),
            nn.GELU(),
            nn.Linear(HEAD_BOTTLENECK_WIDTH, config.action_dim),
        )
        for layer in self.mlp_head:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.register_buffer("action_mean", torch.tensor(config.action_mean, dtype=torch.float32))
        self.register_buffer("action_std", torch.tensor(config.action_std, dtype=torch.float32))

    def load_rgb_backbone_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        """Start the backbone from RGB ResNet weights (e.g. torchvision's ImageNet file), stem tiled to K frames.

        ``fc.*`` is ignored: the IDM has no classifier. Every other key must match (strict loading).
        """
        weights = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
        if "conv1.weight" in weights:
            weights["conv1.weight"] = tile_rgb_kernel(weights["conv1.weight"], self.config.num_frames)
        self.backbone.load_state_dict(weights)

    def normalize_actions(self, actions: Tensor) -> Tensor:
        """Absolute commands -> the normalised targets the head regresses (float32)."""
        return (actions.float() - self.action_mean.float()) / self.action_std.float()

    def denormalize_actions(self, normalized: Tensor) -> Tensor:
        """Head output -> absolute commands (radians; grippers 0..1), always in float32.

        Adding a mean near 1.4 in bfloat16 would round commands to ~0.008. For reduced precision,
        run the network under ``torch.autocast``: ``model.to(torch.bfloat16)`` rounds these buffers too.
        """
        return normalized.float() * self.action_std.float() + self.action_mean.float()

    def forward_normalized(self, windows: Tensor) -> Tensor:
        """Head output before de-normalisation, for losses computed in normalised space."""
        expected = (self.config.num_frames, 3, *self.config.input_size)
        if windows.ndim != 5 or tuple(windows.shape[1:]) != expected:
            raise ValueError(f"windows: expected shape (B, {str(expected)[1:]}, got {tuple(windows.shape)}")
        stacked = windows.flatten(1, 2)  # frame-major channels: frame 0 RGB, frame 1 RGB, ...
        return self.mlp_head(self.spatial_softmax(self.backbone(stacked)))

    def forward(self, windows: Tensor) -> Tensor:
        """Absolute joint commands at each window's centre frame."""
        return self.denormalize_actions(self.forward_normalized(windows))

    def decode_video(self, frames: np.ndarray | Tensor, fps: float, batch_size: int = 16) -> Tensor:
        """Decode every frame of a ``(T, H, W, 3)`` RGB video into a ``(T, action_dim)`` float32 CPU tensor.

        Windows are built with :func:`frame_offsets` at the video's ``fps``, clamped at the ends.
        They run in batches of ``batch_size`` in eval mode without gradients, and the module's
        previous train/eval mode is restored afterwards. Frames move to the model's device as they
        are (uint8 stays small) and are preprocessed there, one batch at a time.
        """
        if not _is_positive_int(batch_size):
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        parameter = next(self.parameters())
        video = as_frame_tensor(frames).to(parameter.device)
        windows = window_indices(len(video), frame_offsets(self.config.window_s, fps, self.config.num_frames))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                decoded = [self._decode_windows(video, batch, parameter.dtype) for batch in windows.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(decoded).float().cpu()

    def _decode_windows(self, video: Tensor, indices: Tensor, dtype: torch.dtype) -> Tensor:
        """Run one batch of windows given as ``(B, K)`` frame indices."""
        images = _resize_and_normalize(video[indices.flatten().to(video.device)], self.config.input_size)
        return self(images.to(dtype).unflatten(0, tuple(indices.shape)))
