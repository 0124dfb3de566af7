"""Small IDM checkpoints for tests and plumbing demos, made through the real code path.

Both are real :class:`~eva_idm.idm.ResNetPlusIDM` networks (ResNet-18 at output stride 16, 32x32
input, aloha_agilex), written with :func:`~eva_idm.idm.save_checkpoint` and read back by
whatever loads them (``load_checkpoint``, ``PlanGate.load``, ``idm_node``):

* :func:`random_idm_checkpoint`: seeded random weights. It decodes noise, as an untrained IDM
  does, so an honest gate rejects its plans with a reason.
* :func:`still_idm_checkpoint`: decodes every frame of any video to one given pose. Its head's
  last linear layer is zero, so the normalised output is exactly 0 and the de-normalisation
  (``action_mean + 0 * action_std``) returns ``action_mean``, which is set to the pose. Everything
  before it (preprocessing, windows, batching, backbone, soft-argmax, head) runs as in a trained
  IDM. That makes it an honest plumbing fixture: the real architecture, file format and decode
  path with a known, deterministic output, i.e. a still plan at the measured pose, which the gate
  must accept (EVA reward r_max, zero start offset). It says nothing about decoding accuracy.

Import as ``from idm_checkpoints import still_idm_checkpoint`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from eva_idm.idm import IDMConfig, ResNetPlusIDM, save_checkpoint

SMALL_IDM = IDMConfig(embodiment="aloha_agilex", backbone_depth=18, output_stride=16, input_size=(32, 32))


def random_idm_checkpoint(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a small IDM with seeded random weights to ``directory``; returns its path."""
    torch.manual_seed(seed)
    return save_checkpoint(ResNetPlusIDM(SMALL_IDM), directory)


def still_idm_checkpoint(directory: str | os.PathLike[str], pose: Sequence[float], seed: int = 0) -> Path:
    """Write a small IDM that decodes every frame to ``pose`` (14 values, embodiment order; float32).

    See the module docstring for why this is a real checkpoint and not a mock.
    """
    config = dataclasses.replace(SMALL_IDM, action_mean=tuple(float(value) for value in pose))
    torch.manual_seed(seed)
    model = ResNetPlusIDM(config)
    output_layer = model.mlp_head[-1]
    with torch.no_grad():
        output_layer.weight.zero_()
        output_layer.bias.zero_()
    return save_checkpoint(model, directory)
