"""Video artifacts for the IDM separation test: what a bad world-model rollout looks like.

EVA's reward is only useful if decoding a physically plausible video scores higher than decoding
the same video with the kinds of defects generated videos show. Each function returns a damaged
copy of a ``T x H x W x 3`` uint8 video, deterministic for a ``numpy.random.Generator``; the
damage is confined to a window in the middle so the start and end poses stay believable.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Artifact = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _middle_window(length: int, rng: np.random.Generator, fraction: float = 0.3) -> slice:
    span = max(2, int(round(length * fraction)))
    start = int(rng.integers(length // 4, max(length // 4 + 1, length - span - length // 4)))
    return slice(start, min(length, start + span))


def stutter(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frames duplicated and dropped: motion freezes, then jumps ahead (a common generation defect)."""
    window = _middle_window(len(video), rng)
    indices = np.arange(len(video))
    hold = window.start + (window.stop - window.start) // 2
    indices[window.start:hold] = window.start  # freeze
    return video[indices]


def shuffled_segment(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A segment played in random order: the arm teleports back and forth."""
    window = _middle_window(len(video), rng)
    indices = np.arange(len(video))
    indices[window] = rng.permutation(indices[window])
    return video[indices]


def _patch(video: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
    height, width = video.shape[1:3]
    patch_h, patch_w = max(4, height // 3), max(4, width // 3)
    top = int(rng.integers(0, height - patch_h + 1))
    left = int(rng.integers(0, width - patch_w + 1))
    return top, left, patch_h, patch_w


def blurred_patch(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A region smeared for some frames: parts of the arm dissolve and reappear."""
    damaged = video.copy()
    top, left, patch_h, patch_w = _patch(video, rng)
    kernel = 2 * (max(patch_h, patch_w) // 4) + 1
    for index in range(*_middle_window(len(video), rng).indices(len(video))):
        region = damaged[index, top:top + patch_h, left:left + patch_w]
        damaged[index, top:top + patch_h, left:left + patch_w] = cv2.GaussianBlur(region, (kernel, kernel), 0)
    return damaged


def displaced_patch(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A region shifted sideways for some frames: a limb that jumps and snaps back."""
    damaged = video.copy()
    top, left, patch_h, patch_w = _patch(video, rng)
    shift = int(rng.choice([-1, 1])) * max(2, patch_w // 3)
    for index in range(*_middle_window(len(video), rng).indices(len(video))):
        damaged[index, top:top + patch_h, left:left + patch_w] = np.roll(
            video[index, top:top + patch_h, left:left + patch_w], shift, axis=1)
    return damaged


def pixel_noise(video: np.ndarray, rng: np.random.Generator, sigma: float = 25.0) -> np.ndarray:
    """Independent Gaussian pixel noise on every frame of a window: flicker."""
    damaged = video.astype(np.float32)
    window = _middle_window(len(video), rng)
    damaged[window] += rng.normal(0.0, sigma, size=damaged[window].shape)
    return np.clip(damaged, 0, 255).astype(np.uint8)


ARTIFACTS: dict[str, Artifact] = {
    "stutter": stutter,
    "shuffled_segment": shuffled_segment,
    "blurred_patch": blurred_patch,
    "displaced_patch": displaced_patch,
    "pixel_noise": pixel_noise,
}


def separation_auc(clean_rewards: np.ndarray, damaged_rewards: np.ndarray) -> float:
    """Probability that a clean video outscores a damaged one (ties count half): the ROC AUC."""
    clean = np.asarray(clean_rewards, dtype=float)[:, None]
    damaged = np.asarray(damaged_rewards, dtype=float)[None, :]
    if clean.size == 0 or damaged.size == 0:
        raise ValueError("separation_auc: need at least one clean and one damaged reward")
    return float(np.mean((clean > damaged) + 0.5 * (clean == damaged)))
