"""RoboTwin 2.0 training data for the IDM: validated episodes, windowed samples, augmentations.

ROS-free, like the rest of the core: ``eva train idm`` and the tests use these modules directly.

Typical use::

    index = scan_episodes("data", ScanConfig(max_bad_fraction=0.05))   # quarantines faulty episodes
    train, val = index.split(val_fraction=0.1, seed=0)                   # whole episodes, never frames
    augmentation = WindowAugmentation(AugmentConfig(), ArmMirror.from_embodiment(load_embodiment("aloha_agilex")))
    dataset = IDMWindowDataset(train, idm_config, augmentation, seed=0)
"""

from eva_idm.data.augment import (
    ArmMirror,
    AugmentConfig,
    WindowAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    flip_with_arm_swap,
    random_color_jitter,
)
from eva_idm.data.dataset import IDMWindowDataset, resize_frames, sample_seed
from eva_idm.data.robotwin import (
    ROBOTWIN_FRAME_INTERVAL_S,
    DatasetIndex,
    Episode,
    EpisodeError,
    EpisodeFault,
    EpisodeFiles,
    EpisodeRecord,
    Instructions,
    QuarantinedEpisode,
    ScanConfig,
    decode_frames,
    decode_jpeg,
    discover_episodes,
    episode_files,
    inspect_episode,
    load_episode,
    scan_episodes,
)

__all__ = [
    "ROBOTWIN_FRAME_INTERVAL_S",
    "ArmMirror",
    "AugmentConfig",
    "DatasetIndex",
    "Episode",
    "EpisodeError",
    "EpisodeFault",
    "EpisodeFiles",
    "EpisodeRecord",
    "IDMWindowDataset",
    "Instructions",
    "QuarantinedEpisode",
    "ScanConfig",
    "WindowAugmentation",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "decode_frames",
    "decode_jpeg",
    "discover_episodes",
    "episode_files",
    "flip_with_arm_swap",
    "inspect_episode",
    "load_episode",
    "random_color_jitter",
    "resize_frames",
    "sample_seed",
    "scan_episodes",
]
