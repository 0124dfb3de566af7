"""Pickled checkpoints from elsewhere, through every loader of the project.

Code in a file is refused before it runs, the error says what was asked for and never suggests
turning the check off, and a damaged file is named for what it is.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from eva_idm.idm.checkpoint import TORCH_LEGACY_HEAD, CheckpointError, read_released_state_dict
from eva_planner.loading import read_eva_checkpoint
from eva_planner.original_wan import read_pth

# Each pickle loader of the project, by the released file it reads.
LOADERS: dict[str, Callable[[Path], object]] = {
    "IDM_singleview.pt": read_released_state_dict,
    "eva_i2v_14B.ckpt": read_eva_checkpoint,
    "Wan2.1_VAE.pth": read_pth,
}


class CallsOnUnpickling:
    """Unpickled, calls ``function(*arguments)``: what a malicious checkpoint holds instead of weights."""

    def __init__(self, function: Callable[..., object], *arguments: object):
        self.function, self.arguments = function, arguments

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.function, self.arguments


def refusal(load: Callable[[Path], object], path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as refused:
        load(path)
    return refused.value


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize(
    ("payload", "global_name"),
    [(lambda target: CallsOnUnpickling(os.makedirs, str(target)), "os.makedirs"),
     (lambda target: CallsOnUnpickling(exec, f"import os; os.makedirs({str(target)!r})"), "exec")],
    ids=["os.makedirs", "exec"],
)
def test_a_malicious_pickle_is_refused_naming_what_it_asked_for_and_nothing_runs(name, payload, global_name,
                                                                                 tmp_path):
    target = tmp_path / "made_by_unpickling"
    path = tmp_path / name
    torch.save({"state_dict": {"model.weight": torch.zeros(1), "model.bias": payload(target)}}, path)

    error = refusal(LOADERS[name], path)
    message = str(error).removeprefix(f"{path}: ")
    assert message.startswith("refused by weights-only loading, before anything in it ran"), message
    assert f"GLOBAL {global_name}" in message, message
    assert "weights_only" not in message and "trust" not in message, "never advice to turn the check off"
    assert error.__cause__ is None and error.__suppress_context__, "torch's advice must not show in the traceback"
    assert not target.exists()


def test_a_refusal_without_a_global_keeps_the_unpicklers_reason_and_drops_torchs_advice(tmp_path):
    """The header torch.save writes, then an opcode the weights-only unpickler does not know (protocol 4's FRAME)."""
    path = tmp_path / "IDM_singleview.pt"
    path.write_bytes(TORCH_LEGACY_HEAD + pickle.STOP + pickle.FRAME + bytes(8))
    message = str(refusal(read_released_state_dict, path)).removeprefix(f"{path}: ")
    assert "refused by weights-only loading" in message and "Unsupported operand 149" in message, message
    assert "weights_only" not in message and "file an issue" not in message and "torch.load" not in message


def zip_checkpoint(path: Path) -> bytes:
    torch.save({"weight": torch.zeros(64)}, path)
    return path.read_bytes()


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize(
    ("content", "message"),
    [(lambda path: b"", r"empty file \(0 bytes\)"),
     (lambda path: b"<!DOCTYPE html><html>Sign in to download</html>",
      r"not a PyTorch checkpoint: starts with b'<!DOCTYPE html><'"),
     (lambda path: b"version https://git-lfs.github.com/spec/v1\n", r"not a PyTorch checkpoint: starts with b'version"),
     (lambda path: pickle.dumps({"weight": [0.0]}, protocol=4),
      r"a Python pickle, but not a file torch.save wrote: starts with b'\\x80\\x04"),
     (lambda path: zip_checkpoint(path)[:300], r"damaged or truncated PyTorch file: .*zip archive"),
     (lambda path: TORCH_LEGACY_HEAD[:6], r"truncated PyTorch file: 6 bytes")],
    ids=["empty", "html", "git-lfs-pointer", "foreign-pickle", "truncated-zip", "truncated-header"],
)
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content(tmp_path / "whole.pt"))
    error = str(refusal(LOADERS[name], path))
    assert error.startswith(f"{path}: ") and re.search(message, error), error
    assert "weights_only" not in error and "old-format" not in error and "old format" not in error


def test_a_legacy_format_file_loads_unless_memory_mapped(tmp_path):
    """The IDM's loader reads the pre-1.6 format; the world model's memory-map and say why they cannot."""
    state = {"backbone.conv1.weight": torch.ones(2, 3)}
    for name in LOADERS:
        torch.save({"model_state_dict": state} if name.endswith(".pt") else state, tmp_path / name,
                   _use_new_zipfile_serialization=False)
    assert torch.equal(read_released_state_dict(tmp_path / "IDM_singleview.pt")["backbone.conv1.weight"],
                       state["backbone.conv1.weight"])
    for name in ("eva_i2v_14B.ckpt", "Wan2.1_VAE.pth"):
        assert "legacy format" in str(refusal(LOADERS[name], tmp_path / name))


WAN_KEYS = ("patch_embedding.weight", "blocks.0.self_attn.q.weight", "head.head.bias")


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{key}": value for key, value in state.items()}


@pytest.mark.parametrize(
    "layout",
    [lambda state: {"state_dict": {"vae_mean": torch.ones(1), **prefixed("model.", state)}, "epoch": 3},
     lambda state: {"state_dict": prefixed("model._orig_mod.", state)},
     lambda state: {"state_dict": prefixed("_orig_mod.model.", state)},
     lambda state: {"module": prefixed("module.model.", state)},
     lambda state: {"model": prefixed("_orig_mod.", state)},
     lambda state: state],
    ids=["lightning", "model._orig_mod.", "_orig_mod.model.", "under module, module.model.", "under model, _orig_mod.",
         "plain state dict"],
)
def test_the_world_model_checkpoint_accepts_the_layouts_eva_style_trainers_write(layout, tmp_path):
    state = {key: torch.full((2,), float(index)) for index, key in enumerate(WAN_KEYS)}
    path = tmp_path / "eva_i2v_14B.ckpt"
    torch.save(layout(state), path)
    read = read_eva_checkpoint(path)
    assert read.keys() == state.keys() and all(torch.equal(read[key], state[key]) for key in state)


def test_the_world_model_checkpoint_refuses_an_ambiguous_or_empty_state_dict_by_name(tmp_path):
    path = tmp_path / "eva_i2v_14B.ckpt"
    weight = torch.zeros(1)
    torch.save({"state_dict": {"model.head.head.bias": weight, "model._orig_mod.head.head.bias": weight}}, path)
    with pytest.raises(CheckpointError, match=r"keys 'model\.head\.head\.bias' and "
                                              r"'model\._orig_mod\.head\.head\.bias' both map to 'head\.head\.bias'"):
        read_eva_checkpoint(path)
    torch.save({"state_dict": {}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"the file\['state_dict'\] is an empty dict"):
        read_eva_checkpoint(path)
