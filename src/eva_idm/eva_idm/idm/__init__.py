"""EVA's inverse dynamics model (``resnet_plus``): video frames -> absolute 14-d joint commands.

ROS-free: the IDM node, the reward, training and the tests share these modules.
"""

from eva_idm.idm.checkpoint import (
    CheckpointError,
    convert_released_checkpoint,
    load_checkpoint,
    load_released_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from eva_idm.idm.model import (
    IDMConfig,
    ResNetPlusIDM,
    SpatialSoftArgmax,
    frame_offsets,
    preprocess_frames,
    tile_rgb_kernel,
    window_indices,
)
from eva_idm.idm.resnet import ResNet, build_resnet

__all__ = [
    "CheckpointError",
    "IDMConfig",
    "ResNet",
    "ResNetPlusIDM",
    "SpatialSoftArgmax",
    "build_resnet",
    "convert_released_checkpoint",
    "frame_offsets",
    "load_checkpoint",
    "load_released_checkpoint",
    "preprocess_frames",
    "read_checkpoint_config",
    "save_checkpoint",
    "tile_rgb_kernel",
    "window_indices",
]
