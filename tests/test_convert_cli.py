"""``eva convert`` on tiny checkpoints written in the authors' released layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from eva_idm.idm import IDMConfig, ResNetPlusIDM, load_checkpoint
from eva_planner.loading import diffusers_to_original_state_dict
from eva_planner.tiny import build_tiny_world_model
from eva_training.cli import main

# Another long CPU job shares this 2-core machine; one thread keeps the suite predictable.
torch.set_num_threads(1)

TINY_IDM = IDMConfig(backbone_depth=18, output_stride=16, input_size=(32, 48))
# Normalisation unlike the released defaults (and exact in float32): the file's statistics must survive.
RELEASED_IDM = IDMConfig.from_dict({**TINY_IDM.to_dict(), "action_mean": [0.5] * 14, "action_std": [2.0] * 14})
TINY_IDM_FLAGS = ["--backbone-depth", "18", "--output-stride", "16", "--input-size", "32", "48"]


@pytest.fixture(scope="module")
def transformer() -> WanTransformer3DModel:
    return build_tiny_world_model(seed=1).transformer


@pytest.fixture(scope="module")
def eva_checkpoint(transformer, tmp_path_factory) -> tuple[Path, Path]:
    """EVA's Lightning layout (original Wan names under ``model.``), and the base transformer's config folder."""
    folder = tmp_path_factory.mktemp("eva")
    state = {f"model.{key}": value.clone() for key, value in diffusers_to_original_state_dict(
        transformer.state_dict(), "tiny").items()}  # fmt: skip
    state["vae_mean"] = torch.zeros(16)
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200}, folder / "eva.ckpt")
    transformer.save_config(folder / "base")
    return folder / "eva.ckpt", folder / "base"


@pytest.fixture(scope="module")
def idm() -> ResNetPlusIDM:
    torch.manual_seed(3)
    return ResNetPlusIDM(RELEASED_IDM).eval()


@pytest.fixture(scope="module")
def released_idm(idm, tmp_path_factory) -> Path:
    """The IDM saved as the authors' training script saves it: DDP-wrapped normalisation wrapper, unused fc."""
    buffers = {"action_mean": "train_mean", "action_std": "train_std"}
    state = {f"module.{buffers[key]}" if key in buffers else f"module.model.{key}": value
             for key, value in idm.state_dict().items()}  # fmt: skip
    state["module.model.backbone.fc.weight"] = torch.randn(1000, 512)
    state["module.model.backbone.fc.bias"] = torch.randn(1000)
    path = tmp_path_factory.mktemp("released") / "IDM_singleview.pt"
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}, "step": 150_000}, path)
    return path


def convert(*argv: object) -> int:
    return main(["convert", *map(str, argv)])


def test_the_world_model_checkpoint_round_trips(transformer, eva_checkpoint, tmp_path, capsys):
    checkpoint, base = eva_checkpoint
    out = tmp_path / "eva-transformer"
    assert convert("world-model", checkpoint, out, "--transformer-config", base) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(path.suffix for path in out.iterdir()) == [".json", ".safetensors"]
    converted = WanTransformer3DModel.from_pretrained(out, local_files_only=True, use_safetensors=True)
    expected = transformer.state_dict()
    assert converted.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in converted.state_dict().items())


def test_the_released_idm_round_trips(idm, released_idm, tmp_path, capsys):
    out = tmp_path / "idm"
    assert convert("idm", released_idm, out, *TINY_IDM_FLAGS) == 0
    assert f"--idm {out}" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["idm"], "no partial folder is left behind"
    converted = load_checkpoint(out, "aloha_agilex")
    assert converted.config == RELEASED_IDM
    expected = idm.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in converted.state_dict().items())


@pytest.mark.parametrize("kind", ["world-model", "idm"])
def test_an_existing_output_folder_is_refused_and_kept(kind, eva_checkpoint, released_idm, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    source = eva_checkpoint[0] if kind == "world-model" else released_idm
    assert convert(kind, source, out) == 2
    assert f"OUT_DIR: {out} already exists" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


def test_conversion_errors_name_the_file_the_key_or_the_flag(released_idm, tmp_path, capsys):
    assert convert("idm", released_idm, tmp_path / "a", "--backbone-depth", "50", "--input-size", "32", "48") == 2
    assert "IDM_singleview.pt: missing key(s) 'backbone.layer1.0.conv3.weight'" in capsys.readouterr().err
    assert convert("idm", released_idm, tmp_path / "b", "--backbone-depth", "42") == 2
    assert "--backbone-depth: must be one of [18, 34, 50], got 42" in capsys.readouterr().err
    assert convert("world-model", tmp_path / "absent.ckpt", tmp_path / "c") == 2
    assert "absent.ckpt: EVA checkpoint not found" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == [], "a failed conversion writes nothing"


class MakesADirectory:
    """Unpickled, creates ``path``: a checkpoint that runs code instead of holding weights."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (self.path,)


@pytest.mark.parametrize("kind", ["world-model", "idm"])
def test_a_malicious_pickle_is_refused_with_the_reason_and_without_advice_to_trust_it(kind, tmp_path, capsys):
    made = tmp_path / "made_by_unpickling"
    source = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(1), "model.bias": MakesADirectory(made)}}, source)
    assert convert(kind, source, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "downloaded.ckpt: refused by weights-only loading" in error and "GLOBAL os.makedirs" in error, error
    assert "weights_only" not in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["downloaded.ckpt"], "nothing ran, nothing written"


def test_a_compiled_models_world_model_checkpoint_converts(transformer, eva_checkpoint, tmp_path):
    """``torch.compile`` inside the Lightning module saves the DiT under ``model._orig_mod.``."""
    checkpoint, base = eva_checkpoint
    lightning = torch.load(checkpoint, weights_only=True)
    compiled = {key.replace("model.", "model._orig_mod.", 1): value for key, value in lightning["state_dict"].items()}
    torch.save({**lightning, "state_dict": compiled}, tmp_path / "compiled.ckpt")
    out = tmp_path / "eva-transformer"
    assert convert("world-model", tmp_path / "compiled.ckpt", out, "--transformer-config", base) == 0
    converted = WanTransformer3DModel.from_pretrained(out, local_files_only=True, use_safetensors=True)
    expected = transformer.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in converted.state_dict().items())
