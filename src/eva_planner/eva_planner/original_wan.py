"""Loading the original Wan2.1 I2V release (``Wan-AI/Wan2.1-I2V-14B-480P``, the files EVA's README names).

That directory holds Wan's own module names, not the libraries'::

    config.json                                   original WanModel config (dim, num_heads, model_type, ...)
    diffusion_pytorch_model*.safetensors (+index) the DiT, original names (loading's key table)
    Wan2.1_VAE.pth                                WanVAE_ state dict
    models_t5_umt5-xxl-enc-bf16.pth               Wan's T5Encoder state dict
    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   open-clip XLM-R + ViT-H (only visual.* is used)
    google/umt5-xxl/                              the umT5 tokenizer

Each component is built from its library class (diffusers ``WanTransformer3DModel`` and
``AutoencoderKLWan``, transformers ``UMT5EncoderModel`` and ``CLIPVisionModel``) with a config
derived from ``config.json`` and from the tensor shapes, parameters on the meta device, then filled
from the renamed file with strict checks: a missing, unexpected or mis-shaped key is a
:class:`~eva_planner.loading.CheckpointError` naming the file and the key. The ``.pth`` files are
pickles, so they are opened only weights-only and memory-mapped (``load_weights_only``); :func:`convert_original_wan`
writes the directory once in the diffusers layout, so that robots load only safetensors.

The key maps are written library name -> original name (``*_key_to_original``); loading inverts them
as tables over the model's own keys, so each direction is the exact inverse of the other. The
T5 and CLIP maps follow ``notes/wan_diffusers.md`` §3(b); the VAE map generalises diffusers'
``convert_wan_vae_to_diffusers`` (written for the Wan2.1 VAE's two residual blocks per level) to
any depth, and the tests check that the two agree on the Wan2.1 VAE.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedModel,
    UMT5Config,
    UMT5EncoderModel,
)

from eva_idm.idm.checkpoint import load_weights_only
from eva_planner.loading import (
    MODEL_INDEX,
    CheckpointError,
    _check_component_files,
    _load_model,
    _read_json,
    _weight_files,
    check_dtypes,
    check_state_against_model,
    diffusers_to_original_key,
    original_to_diffusers_state_dict,
    placed,
    rest_with_adapters,
    save_world_model,
)
from eva_planner.prompt_cache import TEXT_CONTEXT_LENGTH
from eva_planner.world_model import COMPONENTS, DTYPES, NUM_TRAIN_TIMESTEPS, WorldModel, resident_components

ORIGINAL_CONFIG = "config.json"
TRANSFORMER_STEM = "diffusion_pytorch_model"
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
TOKENIZER_FOLDER = "google/umt5-xxl"
# Wan's ViT-H/14 has 80-wide heads (1280 = 16 x 80). Open-clip fuses q, k, v into one to_qkv
# tensor, so the head count is not in the file: it is the width divided by this.
WAN_CLIP_HEAD_DIM = 80
CLIP_PREFIX = "visual."
CLIP_HEAD_KEY = "visual.head"  # the contrastive projection; I2V uses the penultimate block instead
# WanModel.__init__ defaults, for keys the released config.json leaves out.
WANMODEL_DEFAULTS: dict[str, Any] = {
    "model_type": "t2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "window_size": [-1, -1],
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}
WAN_ROPE_MAX_SEQ_LEN = 1024  # WanModel's rope_params(1024, ...)

# --- key maps, library name -> original name ------------------------------------------------------

T5_TOP_LEVEL = {"shared.weight": "token_embedding.weight", "encoder.final_layer_norm.weight": "norm.weight"}
T5_TIED_KEY = "encoder.embed_tokens.weight"  # the same tensor as shared.weight; not stored in Wan's file
T5_BLOCK = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",  # one per layer
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}
T5_BLOCK_KEY = re.compile(r"encoder\.block\.(\d+)\.(.+)")

CLIP_TOP_LEVEL = {
    "embeddings.patch_embedding.weight": "visual.patch_embedding.weight",
    "embeddings.class_embedding": "visual.cls_embedding",
    "embeddings.position_embedding.weight": "visual.pos_embedding",
    "pre_layrnorm.weight": "visual.pre_norm.weight",
    "pre_layrnorm.bias": "visual.pre_norm.bias",
    "post_layernorm.weight": "visual.post_norm.weight",
    "post_layernorm.bias": "visual.post_norm.bias",
}
CLIP_BLOCK = {
    "layer_norm1": "norm1",
    "self_attn.out_proj": "attn.proj",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}
CLIP_BLOCK_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
CLIP_QKV = ("q_proj", "k_proj", "v_proj")  # thirds of open-clip's to_qkv, in this order
CLIP_ORIGINAL_QKV_KEY = re.compile(r"visual\.transformer\.(\d+)\.attn\.to_qkv\.(weight|bias)")
# Open-clip keeps these with leading singleton dimensions: [1, 1, D] and [1, positions, D].
CLIP_LEADING_ONES = {"embeddings.class_embedding": 2, "embeddings.position_embedding.weight": 1}

VAE_TOP_LEVEL = {
    "quant_conv": "conv1",
    "post_quant_conv": "conv2",
    "encoder.conv_in": "encoder.conv1",
    "encoder.norm_out": "encoder.head.0",
    "encoder.conv_out": "encoder.head.2",
    "decoder.conv_in": "decoder.conv1",
    "decoder.norm_out": "decoder.head.0",
    "decoder.conv_out": "decoder.head.2",
}
VAE_MIDDLE = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}
VAE_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
              "conv_shortcut": "shortcut"}  # fmt: skip
VAE_MIDDLE_KEY = re.compile(r"(encoder|decoder)\.mid_block\.(resnets\.[01]|attentions\.0)\.(.+)")
VAE_DOWN_KEY = re.compile(r"encoder\.down_blocks\.(\d+)\.(.+)")
VAE_UP_KEY = re.compile(r"decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)\.(.+)")
VAE_ORIGINAL_DOWN = re.compile(r"encoder\.downsamples\.(\d+)\.(residual|resample)\.")


def t5_key_to_original(key: str) -> str:
    """The name in Wan's T5 file of a ``UMT5EncoderModel`` key."""
    match = T5_BLOCK_KEY.fullmatch(key)
    if match and match[2] in T5_BLOCK:
        return f"blocks.{match[1]}.{T5_BLOCK[match[2]]}"
    if key in T5_TOP_LEVEL:
        return T5_TOP_LEVEL[key]
    raise KeyError(key)


def clip_key_to_original(key: str) -> str:
    """The name in Wan's open-clip file of a ``CLIPVisionModel`` key (q/k/v name the fused ``to_qkv``)."""
    match = CLIP_BLOCK_KEY.fullmatch(key)
    if match:
        block, module, kind = match.groups()
        if module.removeprefix("self_attn.") in CLIP_QKV:
            return f"visual.transformer.{block}.attn.to_qkv.{kind}"
        if module in CLIP_BLOCK:
            return f"visual.transformer.{block}.{CLIP_BLOCK[module]}.{kind}"
    if key in CLIP_TOP_LEVEL:
        return CLIP_TOP_LEVEL[key]
    raise KeyError(key)


def vae_key_to_original(key: str, num_res_blocks: int) -> str:
    """The name in ``Wan2.1_VAE.pth`` of an ``AutoencoderKLWan`` key.

    Wan's encoder and decoder are flat sequences: per level, the residual blocks and then the
    resampler (``num_res_blocks`` residual blocks down, one more up). Diffusers' encoder keeps that
    numbering; its decoder groups each level into ``up_blocks.i``.
    """
    for name, original in VAE_TOP_LEVEL.items():
        if key.startswith(name + "."):
            return original + key[len(name) :]
    if match := VAE_MIDDLE_KEY.fullmatch(key):
        return f"{match[1]}.middle.{VAE_MIDDLE[match[2]]}.{_vae_resnet_to_original(match[3])}"
    if match := VAE_DOWN_KEY.fullmatch(key):
        return f"encoder.downsamples.{match[1]}.{_vae_resnet_to_original(match[2])}"
    if match := VAE_UP_KEY.fullmatch(key):
        level, resnet, rest = match.groups()
        per_level = num_res_blocks + 2  # residual blocks, then the upsampler
        offset = int(resnet) if resnet is not None else num_res_blocks + 1
        return f"decoder.upsamples.{int(level) * per_level + offset}.{_vae_resnet_to_original(rest)}"
    raise KeyError(key)


def _vae_resnet_to_original(rest: str) -> str:
    module, _, leaf = rest.partition(".")
    return f"{VAE_RESNET[module]}.{leaf}" if module in VAE_RESNET else rest


def t5_to_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``UMT5EncoderModel`` state dict in Wan's T5 names (the tied embedding once)."""
    return {t5_key_to_original(key): value for key, value in state.items() if key != T5_TIED_KEY}


def clip_to_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``CLIPVisionModel`` state dict in Wan's open-clip ``visual.*`` names and shapes (no ``head``)."""
    original: dict[str, Tensor] = {}
    for key, value in state.items():
        name = clip_key_to_original(key)
        if match := CLIP_ORIGINAL_QKV_KEY.fullmatch(name):
            block, kind = match.groups()
            parts = [state[f"encoder.layers.{block}.self_attn.{part}.{kind}"] for part in CLIP_QKV]
            original[name] = torch.cat(parts)
        else:
            original[name] = value.reshape((1,) * CLIP_LEADING_ONES.get(key, 0) + tuple(value.shape))
    return original


def vae_to_original(state: Mapping[str, Tensor], num_res_blocks: int) -> dict[str, Tensor]:
    """An ``AutoencoderKLWan`` state dict in ``Wan2.1_VAE.pth`` names."""
    return {vae_key_to_original(key, num_res_blocks): value for key, value in state.items()}


def t5_from_original(
    state: Mapping[str, Tensor], expected: Iterable[str], source: str | os.PathLike[str]
) -> dict[str, Tensor]:
    """Wan's T5 state dict in ``UMT5EncoderModel`` names; the inverse of :func:`t5_to_original`."""
    renamed = _renamed(state, _inverse_table(expected, t5_key_to_original, exclude=(T5_TIED_KEY,)), source)
    if "shared.weight" in renamed:
        renamed[T5_TIED_KEY] = renamed["shared.weight"]
    return renamed


def clip_from_original(
    state: Mapping[str, Tensor], expected: Iterable[str], source: str | os.PathLike[str]
) -> dict[str, Tensor]:
    """Wan's open-clip ``visual.*`` state dict in ``CLIPVisionModel`` names; the inverse of :func:`clip_to_original`.

    The text tower (every key outside ``visual.``) and ``visual.head`` are not part of the image encoder.
    """
    table = _inverse_table(expected, clip_key_to_original)
    visual = {key: value for key, value in state.items() if key.startswith(CLIP_PREFIX) and key != CLIP_HEAD_KEY}
    renamed: dict[str, Tensor] = {}
    for key, value in visual.items():
        if key not in table:
            raise CheckpointError(f"{source}: unknown key {key!r}")
        if match := CLIP_ORIGINAL_QKV_KEY.fullmatch(key):
            block, kind = match.groups()
            # A size that is not 3 x width gives wrong-shaped thirds, reported by the shape check. Each
            # third is cloned: safetensors refuses to save tensors that share storage.
            for part, third in zip(CLIP_QKV, value.chunk(3), strict=False):
                renamed[f"encoder.layers.{block}.self_attn.{part}.{kind}"] = third.clone()
        else:
            name = table[key]
            renamed[name] = _without_leading_ones(value, CLIP_LEADING_ONES.get(name, 0), key, source)
    return renamed


def vae_from_original(
    state: Mapping[str, Tensor], expected: Iterable[str], num_res_blocks: int, source: str | os.PathLike[str]
) -> dict[str, Tensor]:
    """``Wan2.1_VAE.pth``'s state dict in ``AutoencoderKLWan`` names; the inverse of :func:`vae_to_original`."""
    table = _inverse_table(expected, lambda key: vae_key_to_original(key, num_res_blocks))
    return _renamed(state, table, source)


def _inverse_table(
    library_keys: Iterable[str], to_original: Callable[[str], str], exclude: tuple[str, ...] = ()
) -> dict[str, str]:
    """Original name -> library name over ``library_keys``; q/k/v share ``to_qkv``, so their first wins."""
    table: dict[str, str] = {}
    for key in library_keys:
        if key not in exclude:
            table.setdefault(to_original(key), key)
    return table


def _renamed(
    state: Mapping[str, Tensor], table: Mapping[str, str], source: str | os.PathLike[str]
) -> dict[str, Tensor]:
    unknown = [key for key in state if key not in table]
    if unknown:
        raise CheckpointError(f"{source}: unknown key {unknown[0]!r}")
    return {table[key]: value for key, value in state.items()}


def _without_leading_ones(value: Tensor, count: int, key: str, source: str | os.PathLike[str]) -> Tensor:
    if value.dim() <= count or any(size != 1 for size in value.shape[:count]):
        raise CheckpointError(f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {count} leading 1s")
    return value.reshape(value.shape[count:])


# --- configs from config.json and tensor shapes ---------------------------------------------------


def transformer_config(original: Mapping[str, Any], image_dim: int, source: Path) -> dict[str, Any]:
    """The ``WanTransformer3DModel`` config of an original I2V ``WanModel`` config (its defaults filled in).

    The CLIP width ``image_dim`` is not in ``config.json`` (Wan hard-codes 1280): the caller reads it
    from the ``img_emb.proj.0`` norm's size.
    """
    config = {**WANMODEL_DEFAULTS, **original}
    if config["model_type"] != "i2v":
        raise CheckpointError(f"{source}: model_type is {config['model_type']!r}; only the 'i2v' model is supported")
    if list(config["window_size"]) != [-1, -1]:
        raise CheckpointError(f"{source}: window_size {config['window_size']} (local attention) is not supported")
    if config["text_len"] != TEXT_CONTEXT_LENGTH:
        raise CheckpointError(f"{source}: text_len is {config['text_len']}, the sampler uses {TEXT_CONTEXT_LENGTH}")
    if config["dim"] % config["num_heads"]:
        raise CheckpointError(f"{source}: dim {config['dim']} is not a multiple of num_heads {config['num_heads']}")
    return {
        "patch_size": list(config["patch_size"]),
        "num_attention_heads": config["num_heads"],
        "attention_head_dim": config["dim"] // config["num_heads"],
        "in_channels": config["in_dim"],
        "out_channels": config["out_dim"],
        "text_dim": config["text_dim"],
        "freq_dim": config["freq_dim"],
        "ffn_dim": config["ffn_dim"],
        "num_layers": config["num_layers"],
        "cross_attn_norm": config["cross_attn_norm"],
        "qk_norm": "rms_norm_across_heads" if config["qk_norm"] else None,
        "eps": config["eps"],
        "image_dim": image_dim,
        "added_kv_proj_dim": config["dim"],
        "rope_max_seq_len": WAN_ROPE_MAX_SEQ_LEN,
    }


def t5_config(state: Mapping[str, Tensor], source: Path) -> UMT5Config:
    """The ``UMT5Config`` of Wan's T5 encoder file, from its shapes (umT5-XXL: 4096 wide, 24 layers, 64 heads)."""
    vocab_size, d_model = _tensor(state, "token_embedding.weight", source).shape
    buckets, heads = _tensor(state, "blocks.0.pos_embedding.embedding.weight", source).shape
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=_tensor(state, "blocks.0.attn.q.weight", source).shape[0] // heads,
        d_ff=_tensor(state, "blocks.0.ffn.fc1.weight", source).shape[0],
        num_layers=_count_blocks(state, "blocks."),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,  # Wan's T5RelativeEmbedding max_dist
        feed_forward_proj="gated-gelu",  # Wan's gate is tanh-GELU, transformers' gelu_new
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
    )


def clip_config(state: Mapping[str, Tensor], source: Path) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` of Wan's open-clip visual tower, from its shapes (ViT-H/14 at 224 px)."""
    hidden = _tensor(state, "visual.cls_embedding", source).shape[-1]
    if hidden % WAN_CLIP_HEAD_DIM:
        raise CheckpointError(f"{source}: visual width {hidden} is not a multiple of {WAN_CLIP_HEAD_DIM} (ViT-H heads)")
    patch = _tensor(state, "visual.patch_embedding.weight", source).shape[-1]
    grid = math.isqrt(_tensor(state, "visual.pos_embedding", source).shape[-2] - 1)
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=_tensor(state, "visual.transformer.0.mlp.0.weight", source).shape[0],
        num_hidden_layers=_count_blocks(state, "visual.transformer."),
        num_attention_heads=hidden // WAN_CLIP_HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def vae_config(state: Mapping[str, Tensor], source: Path) -> dict[str, Any]:
    """The ``AutoencoderKLWan`` config of ``Wan2.1_VAE.pth``, from the encoder's sequence of blocks."""
    base_dim = _tensor(state, "encoder.conv1.weight", source).shape[0]
    kinds = {int(match[1]): match[2] for key in state if (match := VAE_ORIGINAL_DOWN.match(key))}
    sequence = [kinds[index] for index in sorted(kinds)]
    if not sequence or sequence[0] != "residual":
        raise CheckpointError(f"{source}: missing key 'encoder.downsamples.0.residual.0.gamma'")
    num_res_blocks = sequence.index("resample") if "resample" in sequence else len(sequence)
    per_level = num_res_blocks + 1
    levels = (len(sequence) + 1) // per_level
    level_ends = [level * per_level + num_res_blocks - 1 for level in range(levels)]  # each level's last block
    dim_mult = [_tensor(state, f"encoder.downsamples.{end}.residual.6.weight", source).shape[0] // base_dim
                for end in level_ends]  # fmt: skip
    temporal = [f"encoder.downsamples.{level * per_level + num_res_blocks}.time_conv.weight" in state
                for level in range(levels - 1)]  # fmt: skip
    return {
        "base_dim": base_dim,
        "z_dim": _tensor(state, "conv2.weight", source).shape[0],
        "dim_mult": dim_mult,
        "num_res_blocks": num_res_blocks,
        "temperal_downsample": temporal,
    }


def clip_image_processor(side: int) -> CLIPImageProcessor:
    """Wan/EVA's CLIP preprocessing: the whole frame resized (bicubic) to ``side`` pixels, no crop.

    The processor's default mean and standard deviation are OpenAI CLIP's, which Wan uses too.
    """
    return CLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False, resample=3)


def _tensor(state: Mapping[str, Tensor], key: str, source: Path) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r}")
    return state[key]


def _count_blocks(state: Mapping[str, Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)})


# --- reading files and filling models ---------------------------------------------------------------


def is_original_wan_directory(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` is in the original layout: a ``config.json`` and no ``model_index.json``."""
    directory = Path(directory)
    return not (directory / MODEL_INDEX).is_file() and (directory / ORIGINAL_CONFIG).is_file()


def read_pth(path: Path) -> dict[str, Tensor]:
    """A plain state dict pickled with ``torch.save``, opened weights-only and memory-mapped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    state = load_weights_only(path, mmap=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found a {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: key {key!r} is a {type(value).__name__}, not a tensor")
    return state


def _read_transformer(directory: Path) -> WanTransformer3DModel:
    """The DiT of ``config.json`` and the safetensors file (or the shards its index lists), original names."""
    config_path = directory / ORIGINAL_CONFIG
    original = _read_json(config_path)
    if "model_type" not in original:
        raise CheckpointError(f"{config_path}: not an original WanModel config (no 'model_type'); "
                              f"a diffusers-format directory needs {MODEL_INDEX}")  # fmt: skip
    state: dict[str, Tensor] = {}
    for path in _weight_files(directory, TRANSFORMER_STEM):
        try:
            shard = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated?): {error}") from error
        state.update(original_to_diffusers_state_dict(shard, path))
    index = directory / f"{TRANSFORMER_STEM}.safetensors.index.json"
    source = index if index.is_file() else directory / f"{TRANSFORMER_STEM}.safetensors"
    image_dim = _tensor(state, "condition_embedder.image_embedder.norm1.weight", source).shape[0]
    config = transformer_config(original, image_dim, config_path)
    return _filled(lambda: WanTransformer3DModel.from_config(config), state, source, diffusers_to_original_key)


def _filled(build: Callable[[], nn.Module], state: Mapping[str, Tensor], source: Path,
            describe_key: Callable[[str], str]) -> nn.Module:  # fmt: skip
    """``build()`` with parameters on the meta device, then given ``state``'s tensors (no copy), strictly."""
    with init_empty_weights():  # buffers stay real: the non-persistent ones (RoPE tables) are not in files
        model = build()
    check_state_against_model(state, model.state_dict(), source, describe_key)
    model.load_state_dict(state, strict=True, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def _cast(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` in ``dtype`` the way ``from_pretrained`` would load it, so both layouts load alike.

    Diffusers keeps ``_keep_in_fp32_modules`` in float32 for any dtype; transformers does so for
    float16 only (and ``_keep_in_fp32_modules_strict`` for float16 and bfloat16).
    """
    if dtype is None:
        return model
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if isinstance(model, PreTrainedModel):
        strict = set(model._keep_in_fp32_modules_strict or ()) if dtype in (torch.float16, torch.bfloat16) else set()
        keep = (keep if dtype == torch.float16 else set()) | strict
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model


def _read_components(
    directory: Path, transformer_directory: Path | None, dtypes: Mapping[str, torch.dtype | None]
) -> dict[str, Any]:
    """The four networks, the tokenizer and the image processor of an original directory, in ``dtypes``."""
    _check_original_files(directory, with_transformer=transformer_directory is None)
    if transformer_directory is None:
        transformer = _cast(_read_transformer(directory), dtypes["transformer"])
    else:
        _check_component_files("transformer", transformer_directory)
        transformer = _load_model("transformer", WanTransformer3DModel, transformer_directory, dtypes["transformer"])
    image_encoder = _read_clip(directory / CLIP_FILE)
    return {
        "transformer": transformer,
        "vae": _cast(_read_vae(directory / VAE_FILE), dtypes["vae"]),
        "text_encoder": _cast(_read_t5(directory / T5_FILE), dtypes["text_encoder"]),
        "tokenizer": AutoTokenizer.from_pretrained(directory / TOKENIZER_FOLDER, local_files_only=True),
        "image_encoder": _cast(image_encoder, dtypes["image_encoder"]),
        "image_processor": clip_image_processor(image_encoder.config.image_size),
    }


def _check_original_files(directory: Path, with_transformer: bool) -> None:
    """Fail on the first absent file before reading any: the DiT shards alone are 33 GB."""
    required = [directory / VAE_FILE, directory / T5_FILE, directory / CLIP_FILE]
    if with_transformer:
        required += [directory / ORIGINAL_CONFIG, *_weight_files(directory, TRANSFORMER_STEM)]
    for path in required:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found")
    if not (directory / TOKENIZER_FOLDER).is_dir():
        raise FileNotFoundError(f"{directory / TOKENIZER_FOLDER}: tokenizer folder not found")


def _read_t5(path: Path) -> UMT5EncoderModel:
    state = read_pth(path)
    config = t5_config(state, path)
    expected = _meta_keys(lambda: UMT5EncoderModel(config))
    return _filled(lambda: UMT5EncoderModel(config), t5_from_original(state, expected, path), path, t5_key_to_original)


def _read_clip(path: Path) -> CLIPVisionModel:
    state = read_pth(path)
    config = clip_config(state, path)
    expected = _meta_keys(lambda: CLIPVisionModel(config))
    return _filled(lambda: CLIPVisionModel(config), clip_from_original(state, expected, path), path,
                   clip_key_to_original)  # fmt: skip


def _read_vae(path: Path) -> AutoencoderKLWan:
    state = read_pth(path)
    config = vae_config(state, path)
    expected = _meta_keys(lambda: AutoencoderKLWan(**config))
    renamed = vae_from_original(state, expected, config["num_res_blocks"], path)
    return _filled(lambda: AutoencoderKLWan(**config), renamed, path,
                   lambda key: vae_key_to_original(key, config["num_res_blocks"]))  # fmt: skip


def _meta_keys(build: Callable[[], nn.Module]) -> list[str]:
    with torch.device("meta"):
        return list(build().state_dict())


# --- entry points ------------------------------------------------------------------------------------


def load_original_wan(
    directory: str | os.PathLike[str],
    *,
    transformer_directory: str | os.PathLike[str] | None = None,
    lora_adapters: Iterable[str | os.PathLike[str]] = (),
    merge_lora: bool = True,
    dtype: str = "bfloat16",
    vae_dtype: str = "float32",
    device: str = "cpu",
    cpu_offload: str = "none",
) -> WorldModel:
    """A :class:`WorldModel` from a local original-format Wan2.1 I2V directory (see the module docstring).

    The options mean what they mean for :func:`~eva_planner.loading.load_world_model`, which
    dispatches here for such a directory. With ``transformer_directory`` (a diffusers transformer
    directory, e.g. EVA's weights from ``eva convert world-model``) the directory's own DiT and
    ``config.json`` are not read.
    """
    directory = Path(directory)
    check_dtypes(dtype, vae_dtype)
    resident = resident_components(cpu_offload)  # checks the value, naming cpu_offload
    override = Path(transformer_directory) if transformer_directory is not None else None
    dtypes = {"transformer": DTYPES[dtype], "text_encoder": DTYPES[dtype], "vae": DTYPES[vae_dtype],
              "image_encoder": torch.float32}  # fmt: skip
    components = _read_components(directory, override, dtypes)
    adapter_names = rest_with_adapters(components["transformer"], lora_adapters, merge_lora, device, resident)
    overrides = [override.name] if override is not None else []
    world_model = WorldModel(
        **components,
        scheduler_config={"num_train_timesteps": NUM_TRAIN_TIMESTEPS},  # Wan's sampler settings
        model_id="+".join([directory.name, *overrides, *adapter_names]),
    )
    return placed(world_model, device, resident)


def convert_original_wan(directory: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write an original-format directory once in the diffusers layout (``model_index.json`` + components).

    Tensors keep the dtypes of the files. The directory is written under a temporary name and
    renamed at the end, so an interrupted conversion never leaves a loadable partial directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: output directory already exists")
    components = _read_components(Path(directory), None, dict.fromkeys(COMPONENTS))  # keep the files' dtypes
    world_model = WorldModel(**components, scheduler_config={"num_train_timesteps": NUM_TRAIN_TIMESTEPS})
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_world_model(world_model, partial)
    os.replace(partial, out_dir)
    return out_dir
