"""IDM training samples from scanned RoboTwin episodes: one sample per frame.

Sample ``n`` is frame ``i`` of some episode. Its input is the window of frames the IDM sees at
``i`` (:func:`~eva_idm.idm.model.frame_offsets` from the config's ``window_s`` and the episode's
own frame rate, clamped at the episode's ends by :func:`~eva_idm.idm.model.window_indices`),
preprocessed exactly as the IDM preprocesses at run time. Its target is the absolute joint command
``joint_action/vector[i]`` of the centre frame.

**Frame cache.** Decoding JPEGs dominates a CPU training step, so by default every episode's
frames are decoded once, resized to the IDM's input size and kept in memory as uint8. The cache
costs ``frames x height x width x 3`` bytes: 36.9 KB a frame at 96x128 (100 episodes of 300
frames: about 1.1 GB), 786 KB a frame at 512x512 (236 MB per 300-frame episode).
:meth:`IDMWindowDataset.cache_nbytes` gives the figure for a dataset. DataLoader workers each
fill their own copy unless :meth:`IDMWindowDataset.preload` ran before they started (forked
workers then share the pages). With ``cache_frames=False`` each sample reads and decodes only its
window's frames: little memory, several JPEG decodes per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from eva_idm.data.augment import WindowAugmentation
from eva_idm.data.robotwin import EpisodeRecord, decode_frames
from eva_idm.idm.model import IDMConfig, frame_offsets, preprocess_frames, window_indices

DECODE_CHUNK_FRAMES = 64  # bounds the full-resolution frames held while filling the cache


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, h, w, 3)`` uint8, resized as the IDM resizes at run time.

    Bilinear with antialiasing, ``preprocess_frames``' method, so cached training frames match what
    the model sees when it decodes a plan, up to uint8 rounding. Torch resizes channels-last uint8
    directly, several times faster than going through float32.
    """
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    images = torch.from_numpy(frames).permute(0, 3, 1, 2)  # a channels-last view, no copy
    resized = functional.interpolate(images, size, mode="bilinear", align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: independent of worker, order and batch, and reproducible."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])


class IDMWindowDataset(Dataset):
    """``(window, target)`` pairs for IDM training; see the module docstring.

    ``window`` is ``(K, 3, h, w)`` float32, ImageNet-normalised at ``config.input_size``; ``target``
    is ``(D,)`` float32 absolute joint commands (radians; grippers 0..1), augmented together with
    the window when ``augmentation`` is given. Each sample draws its augmentation from a generator
    seeded by ``(seed, epoch, index)``, so results do not depend on workers or order. Call
    :meth:`set_epoch` before each epoch's iterator is created, as with ``DistributedSampler``
    (persistent workers keep the epoch they started with); otherwise every epoch repeats the same
    augmentations.
    """

    def __init__(
        self,
        episodes: Sequence[EpisodeRecord],
        config: IDMConfig,
        augmentation: WindowAugmentation | None = None,
        cache_frames: bool = True,
        seed: int = 0,
    ):
        if not episodes:
            raise ValueError("episodes: need at least one episode, got none")
        for record in episodes:
            if record.actions.shape[1] != config.action_dim:
                raise ValueError(
                    f"{record.episode_id}: actions have {record.actions.shape[1]} joints, "
                    f"the IDM config expects action_dim={config.action_dim}"
                )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        self.episodes = tuple(episodes)
        self.config = config
        self.augmentation = augmentation
        self.cache_frames = cache_frames
        self.seed = seed
        self.epoch = 0
        self._windows = [
            window_indices(record.num_frames, frame_offsets(config.window_s, record.fps, config.num_frames))
            for record in self.episodes
        ]
        self._episode_starts = np.cumsum([0] + [record.num_frames for record in self.episodes])
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._episode_starts[-1])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        episode, frame = self.locate(index)
        indices = self._windows[episode][frame]
        frames = torch.from_numpy(self._window_frames(episode, indices))
        target = torch.from_numpy(self.episodes[episode].actions[frame]).float()
        if self.augmentation is None:
            return preprocess_frames(frames, self.config.input_size), target
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        images, target = self.augmentation(frames.float() / 255.0, target, generator)
        return preprocess_frames(images, self.config.input_size), target

    def locate(self, index: int) -> tuple[int, int]:
        """``(episode position, frame)`` of sample ``index``."""
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < len(self):
            raise IndexError(f"index: must be an integer in [0, {len(self)}), got {index!r}")
        episode = int(np.searchsorted(self._episode_starts, index, side="right")) - 1
        return episode, int(index - self._episode_starts[episode])

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentations samples draw (see the class docstring)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def cache_nbytes(self) -> int:
        """Memory the frame cache takes once every episode is loaded, in bytes."""
        height, width = self.config.input_size
        return len(self) * height * width * 3

    def preload(self, progress: bool = False) -> None:
        """Fill the frame cache now, e.g. before DataLoader workers fork, so they share it."""
        if not self.cache_frames:
            raise ValueError("preload: this dataset was built with cache_frames=False")
        for episode in tqdm(range(len(self.episodes)), desc="decode frames", unit="episode", disable=not progress):
            self._episode_frames(episode)

    def _window_frames(self, episode: int, indices: Tensor) -> np.ndarray:
        """``(K, h, w, 3)`` uint8 frames at ``indices`` of one episode, resized to the input size."""
        if self.cache_frames:
            return self._episode_frames(episode)[indices.numpy()]
        return resize_frames(decode_frames(self.episodes[episode], indices.tolist()), self.config.input_size)

    def _episode_frames(self, episode: int) -> np.ndarray:
        """The cached frames of one episode, decoded and resized a chunk at a time on first use."""
        if episode not in self._cache:
            record = self.episodes[episode]
            chunks = [
                resize_frames(
                    decode_frames(record, range(start, min(start + DECODE_CHUNK_FRAMES, record.num_frames))),
                    self.config.input_size,
                )
                for start in range(0, record.num_frames, DECODE_CHUNK_FRAMES)
            ]
            self._cache[episode] = np.concatenate(chunks)
        return self._cache[episode]
