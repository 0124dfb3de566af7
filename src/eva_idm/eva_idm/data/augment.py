"""IDM training augmentations (``notes/eva_method.md`` §2.4): colour jitter and a mirror flip with arm swap.

Both act on one *window* at a time, ``(K, H, W, 3)`` float RGB in ``[0, 1]``, with the same random
parameters for every frame of the window: the IDM reads motion from differences between frames,
and jittering frames independently would invent motion that is not there.

The flip mirrors the scene left-right. The left arm then looks like the right arm did and vice
versa, so the target swaps the two arms' joint blocks. Joints whose angle changes sign under the
mirror (base yaw and the wrist joints 5 and 6 on aloha-agilex) are negated. Mirror and swap are
their own inverse, so flipping twice gives back the original sample.

Everything is plain torch (torchvision is not usable beside this torch build) and draws its
randomness from an explicit ``torch.Generator``, so a seed reproduces a sample exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eva_idm.embodiment import Embodiment

# Joints of each aloha-agilex arm (0-based within the arm) whose sign flips under a left-right mirror.
ALOHA_AGILEX_MIRRORED_ARM_JOINTS = (0, 4, 5)
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; the defaults are EVA's IDM recipe.

    Attributes:
        color_jitter: apply colour jitter at all.
        brightness, contrast, saturation: ``(low, high)`` ranges of the multiplicative factors.
        hue: largest hue shift as a fraction of the colour wheel, in ``[0, 0.5]``.
        flip_probability: chance of the mirror flip with arm swap.
    """

    color_jitter: bool = True
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: float = 0.05
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise ValueError(f"{name}: need 0 <= low <= high, got {getattr(self, name)!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue: must lie in [0, 0.5], got {self.hue!r}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability: must lie in [0, 1], got {self.flip_probability!r}")


@dataclass(frozen=True)
class ArmMirror:
    """How a joint vector changes when the scene is mirrored left-right.

    ``mirrored[i] = sign[i] * action[permutation[i]]`` with ``sign = -1`` at ``negated``. The
    permutation must be its own inverse and ``negated`` closed under it, which makes the mirror
    an involution (applying it twice is the identity).
    """

    permutation: tuple[int, ...]
    negated: tuple[int, ...]

    def __post_init__(self) -> None:
        size = len(self.permutation)
        if sorted(self.permutation) != list(range(size)):
            raise ValueError(f"permutation: must reorder 0..{size - 1}, got {self.permutation!r}")
        if any(self.permutation[self.permutation[i]] != i for i in range(size)):
            raise ValueError(f"permutation: must be its own inverse (a swap), got {self.permutation!r}")
        negated = set(self.negated)
        if not negated <= set(range(size)) or {self.permutation[i] for i in negated} != negated:
            raise ValueError(
                f"negated: must be indices below {size} that the permutation maps onto each other, got {self.negated!r}"
            )

    @classmethod
    def from_embodiment(
        cls, embodiment: Embodiment, mirrored_arm_joints: tuple[int, ...] = ALOHA_AGILEX_MIRRORED_ARM_JOINTS
    ) -> ArmMirror:
        """Swap the two arms of a two-armed embodiment and negate ``mirrored_arm_joints`` of each arm."""
        slices = list(embodiment.arm_slices().values())
        sizes = [arm.stop - arm.start for arm in slices]
        if len(slices) != 2 or sizes[0] != sizes[1]:
            raise ValueError(
                f"{embodiment.name}: the arm swap needs two arms of equal size, got {list(embodiment.arms)}"
            )
        left, right = slices
        if not all(0 <= joint < sizes[0] for joint in mirrored_arm_joints):
            raise ValueError(f"mirrored_arm_joints: must lie in 0..{sizes[0] - 1}, got {mirrored_arm_joints!r}")
        permutation = [*range(right.start, right.stop), *range(left.start, left.stop)]
        negated = [arm.start + joint for arm in slices for joint in mirrored_arm_joints]
        return cls(tuple(permutation), tuple(sorted(negated)))

    def apply(self, action: Tensor) -> Tensor:
        """Mirror ``(..., D)`` joint vectors."""
        if action.shape[-1] != len(self.permutation):
            raise ValueError(
                f"action: expected {len(self.permutation)} joints in the last dim, got {tuple(action.shape)}"
            )
        sign = torch.ones(len(self.permutation), dtype=action.dtype, device=action.device)
        sign[list(self.negated)] = -1
        return action[..., list(self.permutation)] * sign


def flip_with_arm_swap(frames: Tensor, action: Tensor, mirror: ArmMirror) -> tuple[Tensor, Tensor]:
    """Mirror ``(K, H, W, 3)`` frames left-right and ``action`` to match (see :class:`ArmMirror`)."""
    return torch.flip(frames, dims=(-2,)), mirror.apply(action)


def grayscale(frames: Tensor) -> Tensor:
    """Luma of ``(..., 3)`` RGB, keeping a trailing channel of size 1."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=frames.dtype, device=frames.device)
    return (frames * weights).sum(dim=-1, keepdim=True)


def adjust_brightness(frames: Tensor, factor: float) -> Tensor:
    """Scale intensities: 0 gives black, 1 the input."""
    return (frames * factor).clamp(0.0, 1.0)


def adjust_contrast(frames: Tensor, factor: float) -> Tensor:
    """Blend each frame with its mean grey level: 0 gives flat grey, 1 the input."""
    mean = grayscale(frames).mean(dim=(-3, -2, -1), keepdim=True)
    return (factor * frames + (1.0 - factor) * mean).clamp(0.0, 1.0)


def adjust_saturation(frames: Tensor, factor: float) -> Tensor:
    """Blend with the grey image: 0 gives greyscale, 1 the input."""
    return (factor * frames + (1.0 - factor) * grayscale(frames)).clamp(0.0, 1.0)


def adjust_hue(frames: Tensor, shift: float) -> Tensor:
    """Rotate hue by ``shift`` turns of the colour wheel (HSV), keeping saturation and value."""
    red, green, blue = frames.unbind(dim=-1)
    value = torch.maximum(red, torch.maximum(green, blue))
    chroma = value - torch.minimum(red, torch.minimum(green, blue))
    sixths = (_hue_in_sixths(red, green, blue, value, chroma) + 6.0 * shift) % 6.0
    # HSV -> RGB in closed form: channel n in (5, 3, 1) gives (R, G, B); value * saturation = chroma.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (sixths + n) % 6.0
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-1).clamp(0.0, 1.0)


def _hue_in_sixths(red: Tensor, green: Tensor, blue: Tensor, value: Tensor, chroma: Tensor) -> Tensor:
    """Hue in ``[0, 6)`` sixths of a turn; grey pixels (no chroma) get 0."""
    has_chroma = chroma > 0
    safe_chroma = torch.where(has_chroma, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == red,
        (green - blue) / safe_chroma,
        torch.where(value == green, 2.0 + (blue - red) / safe_chroma, 4.0 + (red - green) / safe_chroma),
    )
    return torch.where(has_chroma, hue % 6.0, torch.zeros_like(hue))


def random_color_jitter(frames: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Jitter brightness, contrast, saturation and hue in a random order, with one draw for all frames."""
    factors = {name: _uniform(*getattr(config, name), generator) for name in ("brightness", "contrast", "saturation")}
    hue_shift = _uniform(-config.hue, config.hue, generator)
    operations = (
        lambda images: adjust_brightness(images, factors["brightness"]),
        lambda images: adjust_contrast(images, factors["contrast"]),
        lambda images: adjust_saturation(images, factors["saturation"]),
        lambda images: adjust_hue(images, hue_shift),
    )
    for position in torch.randperm(len(operations), generator=generator).tolist():
        frames = operations[position](frames)
    return frames


class WindowAugmentation:
    """The IDM recipe's augmentation of one training sample (a window and its target)."""

    def __init__(self, config: AugmentConfig, mirror: ArmMirror):
        self.config = config
        self.mirror = mirror

    def __call__(self, frames: Tensor, action: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Augment ``(K, H, W, 3)`` float frames in ``[0, 1]`` and the ``(D,)`` target together."""
        if self.config.color_jitter:
            frames = random_color_jitter(frames, self.config, generator)
        if torch.rand((), generator=generator).item() < self.config.flip_probability:
            frames, action = flip_with_arm_swap(frames, action, self.mirror)
        return frames, action


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()
