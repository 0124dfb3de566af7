"""The original Wan2.1 I2V layout (``Wan-AI/Wan2.1-I2V-14B-480P``): key maps, strict loading, ``eva convert``.

The tiny preset is written out in the original layout with the inverse key maps and loaded back:
every tensor must come back exactly, and the plan must be the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from eva_planner.loading import CheckpointError, diffusers_to_original_state_dict, load_world_model
from eva_planner.original_wan import (
    CLIP_FILE,
    T5_FILE,
    TOKENIZER_FOLDER,
    VAE_FILE,
    clip_config,
    clip_from_original,
    clip_to_original,
    load_original_wan,
    t5_config,
    t5_from_original,
    t5_to_original,
    vae_config,
    vae_from_original,
    vae_to_original,
)
from eva_planner.tiny import TINY_SAMPLER_CONFIG, build_tiny_world_model
from eva_planner.world_model import WorldModel
from eva_training.cli import main

# Another long CPU job shares this 2-core machine; one thread keeps the suite predictable.
torch.set_num_threads(1)

INSTRUCTION = "pick up the red block"
# Open-clip's fused to_qkv hides the head count, which the loader takes as width / 80 (Wan's
# ViT-H/14). The tiny CLIP's 8-wide heads cannot be written in that layout, so this model's CLIP
# is 80 wide with one head, and the transformer's image_dim follows; everything else is tiny's.
WAN_HEAD_WIDTH_CLIP = {"hidden_size": 80, "num_attention_heads": 1}


@pytest.fixture(scope="module")
def model() -> WorldModel:
    tiny = build_tiny_world_model(seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        clip = CLIPVisionModel(CLIPVisionConfig(**{**tiny.image_encoder.config.to_dict(), **WAN_HEAD_WIDTH_CLIP}))
        transformer = WanTransformer3DModel.from_config({**tiny.transformer.config, "image_dim": 80})
    return WorldModel(
        transformer=transformer,
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=tiny.tokenizer,
        image_encoder=clip,
        image_processor=tiny.image_processor,
        scheduler_config=tiny.scheduler_config,
    )


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(model, image):
    return model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)


def original_config(transformer: WanTransformer3DModel) -> dict:
    """Wan's ``config.json`` for ``transformer``, with every WanModel key spelled out."""
    config = transformer.config
    dim = config.num_attention_heads * config.attention_head_dim
    return {
        "_class_name": "WanModel", "model_type": "i2v", "dim": dim, "ffn_dim": config.ffn_dim,
        "num_heads": config.num_attention_heads, "num_layers": config.num_layers, "in_dim": config.in_channels,
        "out_dim": config.out_channels, "text_len": 512, "freq_dim": config.freq_dim, "eps": config.eps,
        "patch_size": list(config.patch_size), "text_dim": config.text_dim, "window_size": [-1, -1],
        "qk_norm": True, "cross_attn_norm": config.cross_attn_norm,
    }  # fmt: skip


def write_original_layout(model: WorldModel, directory: Path) -> Path:
    """``model`` as Wan releases it: a sharded DiT with original names, three pickles, the tokenizer folder."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(original_config(model.transformer)))
    dit = diffusers_to_original_state_dict(model.transformer.state_dict(), "tiny")
    names = [f"diffusion_pytorch_model-0000{number}-of-00002.safetensors" for number in (1, 2)]
    shards: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, value in dit.items():  # the last block in the second shard
        shards[names[key.startswith("blocks.1.")]][key] = value.contiguous()
    for name, tensors in shards.items():
        save_file(tensors, directory / name)
    weight_map = {key: name for name, tensors in shards.items() for key in tensors}
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.save(vae_to_original(model.vae.state_dict(), model.vae.config.num_res_blocks), directory / VAE_FILE)
    torch.save(t5_to_original(model.text_encoder.state_dict()), directory / T5_FILE)
    clip = clip_to_original(model.image_encoder.state_dict())
    text_tower = {"log_scale": torch.tensor(4.6), "textual.token_embedding.weight": torch.randn(10, 8)}
    torch.save({**clip, "visual.head": torch.randn(80, 8), **text_tower}, directory / CLIP_FILE)
    model.tokenizer.save_pretrained(directory / TOKENIZER_FOLDER)
    return directory


@pytest.fixture(scope="module")
def original_directory(model, tmp_path_factory) -> Path:
    return write_original_layout(model, tmp_path_factory.mktemp("wan") / "Wan2.1-I2V-tiny-480P")


def assert_same_tensors(loaded: torch.nn.Module, expected: torch.nn.Module) -> None:
    state, expected_state = loaded.state_dict(), expected.state_dict()
    assert state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


# --- key maps ---------------------------------------------------------------------------------------


def test_each_key_map_and_its_inverse_are_identities_on_the_tiny_state_dicts(model):
    t5 = model.text_encoder.state_dict()
    assert_same_state(t5_from_original(t5_to_original(t5), t5, "t5"), t5)
    clip = model.image_encoder.state_dict()
    original_clip = clip_to_original(clip)
    assert original_clip["visual.transformer.1.attn.to_qkv.weight"].shape == (240, 80)
    assert original_clip["visual.cls_embedding"].shape == (1, 1, 80)
    assert_same_state(clip_from_original(original_clip, clip, "clip"), clip)
    vae, blocks = model.vae.state_dict(), model.vae.config.num_res_blocks
    assert_same_state(vae_from_original(vae_to_original(vae, blocks), vae, blocks, "vae"), vae)


def assert_same_state(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], value) for key, value in expected.items())


def test_the_split_of_to_qkv_matches_open_clip_attention(model):
    """Wan's open-clip attention, as written in Wan's clip.py, against the CLIP layer the thirds were loaded into."""
    layer = model.image_encoder.encoder.layers[0].self_attn
    original = clip_to_original(model.image_encoder.state_dict())
    x = torch.randn(1, 5, 80, generator=torch.Generator().manual_seed(0))
    qkv = torch.nn.functional.linear(x, original["visual.transformer.0.attn.to_qkv.weight"],
                                     original["visual.transformer.0.attn.to_qkv.bias"])  # fmt: skip
    q, k, v = (part.transpose(1, 2) for part in qkv.view(1, 5, 3, 1, 80).unbind(2))  # b, s, 3, heads, width
    attended = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 5, 80)
    expected = torch.nn.functional.linear(attended, original["visual.transformer.0.attn.proj.weight"],
                                          original["visual.transformer.0.attn.proj.bias"])  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], expected)


def test_the_vae_map_agrees_with_diffusers_converter_on_the_wan21_vae():
    with torch.device("meta"):
        vae = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE
    state = vae.state_dict()
    original = vae_to_original(state, vae.config.num_res_blocks)
    assert convert_wan_vae_to_diffusers(original).keys() == state.keys()
    assert vae_config(original, Path("vae")) == {
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "temperal_downsample": [False, True, True],
    }  # fmt: skip


def test_the_real_t5_and_clip_configs_are_recovered_from_the_shapes():
    umt5_xxl = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
    vit_h14 = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                               image_size=224, patch_size=14)  # fmt: skip
    with torch.device("meta"):
        t5 = t5_to_original(UMT5EncoderModel(umt5_xxl).state_dict())
        clip = clip_to_original(CLIPVisionModel(vit_h14).state_dict())
    derived = t5_config(t5, Path("t5"))
    fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets")
    assert all(getattr(derived, field) == getattr(umt5_xxl, field) for field in fields)
    derived = clip_config(clip, Path("clip"))
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
              "patch_size")  # fmt: skip
    assert all(getattr(derived, field) == getattr(vit_h14, field) for field in fields)


# --- loading ----------------------------------------------------------------------------------------


def test_an_original_directory_loads_every_tensor_exactly_and_reproduces_the_plan(
    model, original_directory, image, reference
):
    loaded = load_original_wan(original_directory, dtype="float32")
    for name, component in model.components.items():
        assert_same_tensors(loaded.components[name], component)
    assert loaded.model_id == original_directory.name
    plan = loaded.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    assert np.array_equal(plan.frames, reference.frames)
    assert torch.equal(plan.latents, reference.latents)


def test_load_world_model_accepts_the_original_layout(original_directory, image, reference):
    loaded = load_world_model(original_directory, dtype="float32")
    assert loaded.text_encoder.encoder.embed_tokens.weight is loaded.text_encoder.shared.weight, "still tied"
    assert np.array_equal(loaded.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).frames, reference.frames)


@pytest.fixture(scope="module")
def converted(original_directory, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "wan-diffusers"
    assert main(["convert", "original-wan", str(original_directory), str(out)]) == 0
    return out


def test_eva_convert_writes_a_safetensors_directory_that_loads_strictly_and_reproduces_the_plan(
    converted, image, reference
):
    assert (converted / "model_index.json").is_file()
    weights = sorted(path.suffix for path in converted.rglob("*") if path.suffix in (".safetensors", ".pth"))
    assert weights and set(weights) == {".safetensors"}
    loaded = load_world_model(converted, dtype="float32")
    assert np.array_equal(loaded.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).frames, reference.frames)


def test_a_converted_transformer_directory_replaces_the_original_dit(model, original_directory, converted):
    (converted.parent / "other").mkdir()
    other = build_tiny_world_model(seed=2).transformer
    other = WanTransformer3DModel.from_config({**other.config, "image_dim": 80})
    other.save_pretrained(converted.parent / "other" / "transformer")
    loaded = load_original_wan(original_directory, transformer_directory=converted.parent / "other" / "transformer",
                               dtype="float32")  # fmt: skip
    assert_same_tensors(loaded.transformer, other)
    assert_same_tensors(loaded.text_encoder, model.text_encoder)
    assert loaded.model_id == f"{original_directory.name}+transformer"


def test_both_layouts_load_in_the_same_dtypes(original_directory, converted):
    original = load_original_wan(original_directory, dtype="bfloat16")
    diffusers = load_world_model(converted, dtype="bfloat16")
    for name, component in diffusers.components.items():
        assert_same_tensors(original.components[name], component)


# --- errors -----------------------------------------------------------------------------------------


@pytest.fixture
def broken(original_directory, tmp_path):
    """A writable copy of the original directory, to damage one file of."""
    copy = tmp_path / "broken"
    shutil.copytree(original_directory, copy)
    return copy


def test_a_missing_or_truncated_file_names_the_file(broken):
    (broken / T5_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"broken/{T5_FILE}: not found"):
        load_original_wan(broken, dtype="float32")
    (broken / T5_FILE).write_bytes((broken / VAE_FILE).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"broken/{T5_FILE}: damaged or truncated PyTorch file: .*zip archive"):
        load_original_wan(broken, dtype="float32")
    shard = broken / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"00001-of-00002\.safetensors: not a readable safetensors file"):
        load_original_wan(broken, dtype="float32")
    shutil.rmtree(broken / TOKENIZER_FOLDER)
    with pytest.raises(FileNotFoundError, match=r"google/umt5-xxl: tokenizer folder not found"):
        load_world_model(broken, dtype="float32")


def test_unknown_missing_and_mis_shaped_keys_name_the_file_and_the_key(broken):
    t5 = torch.load(broken / T5_FILE, weights_only=True)
    torch.save({**t5, "blocks.0.attn.qq.weight": torch.zeros(1)}, broken / T5_FILE)
    with pytest.raises(CheckpointError, match=rf"{T5_FILE}: unknown key 'blocks\.0\.attn\.qq\.weight'"):
        load_original_wan(broken, dtype="float32")
    torch.save({key: value for key, value in t5.items() if key != "blocks.1.ffn.fc2.weight"}, broken / T5_FILE)
    with pytest.raises(CheckpointError, match=rf"{T5_FILE}: missing key.*'blocks\.1\.ffn\.fc2\.weight'"):
        load_original_wan(broken, dtype="float32")
    torch.save(t5, broken / T5_FILE)
    clip = torch.load(broken / CLIP_FILE, weights_only=True)
    torch.save({**clip, "visual.post_norm.bias": torch.zeros(3)}, broken / CLIP_FILE)
    with pytest.raises(CheckpointError, match=rf"{CLIP_FILE}: key 'post_layernorm\.bias'.*shape \(3,\)"):
        load_original_wan(broken, dtype="float32")
    torch.save(clip, broken / CLIP_FILE)
    shard = broken / "diffusion_pytorch_model-00002-of-00002.safetensors"
    save_file({**load_file(shard), "blocks.1.self_attn.qq.weight": torch.zeros(1)}, shard)
    with pytest.raises(CheckpointError, match=r"00002-of-00002\.safetensors: unknown key 'blocks\.1\.self_attn\.qq"):
        load_original_wan(broken, dtype="float32")


def test_a_config_json_that_is_not_wans_is_refused(broken):
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "t2v"}))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type is 't2v'"):
        load_world_model(broken, dtype="float32")
    (broken / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    with pytest.raises(CheckpointError, match=r"config\.json: not an original WanModel config"):
        load_world_model(broken, dtype="float32")
