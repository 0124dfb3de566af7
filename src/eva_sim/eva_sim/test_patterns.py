"""Deterministic synthetic videos for transport checks, demos and benchmarks.

The pattern is smooth (PNG compresses it to a realistic size) but every frame differs, so a
dropped, duplicated or reordered frame changes the decoded pixels.
"""

from __future__ import annotations

import numpy as np


def moving_pattern(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Return a ``num_frames x height x width x 3`` uint8 video that depends only on the arguments.

    A colour gradient, a disc moving along a seeded path, and a seeded 8x8 noise block per
    frame that makes every frame unique.
    """
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"num_frames/height/width: need >= 1 frame of at least 8x8, got {num_frames}x{height}x{width}")
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0.0, 2.0 * np.pi, size=3)
    start, velocity = rng.uniform(0.2, 0.8, size=2), rng.uniform(-0.01, 0.01, size=2)
    radius = 0.08 * min(height, width)
    video = np.empty((num_frames, height, width, 3), np.uint8)
    for index in range(num_frames):
        shift = index / max(num_frames, 1)
        for channel in range(3):
            wave = 0.5 + 0.5 * np.sin(2.0 * np.pi * (rows + cols + shift) + phase[channel])
            video[index, :, :, channel] = (255.0 * wave).astype(np.uint8)
        centre = (start + index * velocity) % 1.0
        disc = (rows * height - centre[0] * height) ** 2 + (cols * width - centre[1] * width) ** 2 <= radius**2
        video[index][disc] = (255, 255, 255)
        video[index, :8, :8] = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return video
