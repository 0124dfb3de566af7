"""Loading the world model from local files only: diffusers directories, EVA's checkpoint, PEFT adapters.

* **Diffusers-format directory** (the ``Wan2.1-I2V-14B-480P-Diffusers`` layout): ``model_index.json``
  plus ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``image_encoder/``,
  ``image_processor/`` and ``scheduler/``. Only safetensors weights are read, with
  ``local_files_only=True``; a missing, unexpected or mis-shaped tensor is an error naming the file
  and the key (both libraries would otherwise initialise a missing tensor at random and only warn).
* **EVA's ``eva_i2v_14B.ckpt``**: a PyTorch-Lightning dict whose ``state_dict`` holds the DiT under
  ``model.`` with the original Wan names (other trainers' layouts: :func:`read_eva_checkpoint`).
  Unpickling can run code, so it is opened only weights-only and memory-mapped
  (:func:`~eva_idm.idm.checkpoint.load_weights_only`), and :func:`convert_checkpoint` turns it
  once into a diffusers transformer directory (``config.json`` + safetensors shards). Robots load
  only that.
* **PEFT LoRA adapter directories** (``adapter_config.json`` + ``adapter_model.safetensors``), named
  either like diffusers' modules or like the original Wan modules (EVA trains on the original
  ``WanModel``: targets ``q, k, v, o, k_img, v_img``), optionally merged into the weights.

The original-to-diffusers key table below is written from the module correspondence in
``notes/wan_diffusers.md`` §3; :func:`diffusers_to_original_key` is its exact inverse.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PreTrainedModel,
    UMT5EncoderModel,
)

from eva_idm.idm.checkpoint import (  # one strict-loading vocabulary for every checkpoint
    CheckpointError,
    check_state_against_model,
    find_state_dict,
    listed_keys,
    load_weights_only,
    renamed_state,
    without_wrapper_prefixes,
)
from eva_planner.world_model import DTYPES, WorldModel, resident_components

MODEL_INDEX = "model_index.json"
PIPELINE_CLASS = "WanImageToVideoPipeline"
EVA_STATE_PREFIX = "model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."
LORA_PARAMETER = re.compile(r"\.lora_(A|B|magnitude_vector)(\.weight|\.bias)?$")
MAX_SHARD_SIZE = "5GB"

# Component folder -> (file that must exist, weights file stem or None, accepted class names).
COMPONENTS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "transformer": ("config.json", "diffusion_pytorch_model", ("WanTransformer3DModel",)),
    "vae": ("config.json", "diffusion_pytorch_model", ("AutoencoderKLWan",)),
    "text_encoder": ("config.json", "model", ("UMT5EncoderModel",)),
    "tokenizer": ("tokenizer_config.json", None, ("T5Tokenizer", "T5TokenizerFast")),
    "image_encoder": ("config.json", "model", ("CLIPVisionModel", "CLIPVisionModelWithProjection")),
    "image_processor": ("preprocessor_config.json", None, ("CLIPImageProcessor", "CLIPImageProcessorFast")),
    "scheduler": ("scheduler_config.json", None, ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")),
}
_IMAGE_ENCODER_CLASSES: dict[str, type] = {
    "CLIPVisionModel": CLIPVisionModel,
    "CLIPVisionModelWithProjection": CLIPVisionModelWithProjection,
}

# Original Wan2.1 name -> diffusers WanTransformer3DModel name, outside the blocks ...
ORIGINAL_TO_DIFFUSERS_TOP_LEVEL: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
# ... and inside ``blocks.N.`` (the affine cross-attention norm is norm3 in Wan, norm2 in diffusers).
ORIGINAL_TO_DIFFUSERS_BLOCK: dict[str, str] = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
}
BLOCK_KEY = re.compile(r"(blocks\.\d+\.)(.+)")

# WanTransformer3DModel config of Wan2.1-I2V-14B-480P, the architecture of eva_i2v_14B.ckpt
# (notes/wan_diffusers.md §1; 16,394,878,784 parameters). Used when no config.json is given.
WAN21_I2V_14B_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
}


def _inverted(table: Mapping[str, str]) -> dict[str, str]:
    inverse = {value: key for key, value in table.items()}
    if len(inverse) != len(table):
        raise AssertionError("key table is not one-to-one")
    return inverse


_DIFFUSERS_TO_ORIGINAL_TOP_LEVEL = _inverted(ORIGINAL_TO_DIFFUSERS_TOP_LEVEL)
_DIFFUSERS_TO_ORIGINAL_BLOCK = _inverted(ORIGINAL_TO_DIFFUSERS_BLOCK)


def original_to_diffusers_key(key: str) -> str:
    """The diffusers name of an original Wan2.1 transformer key (parameter, or LoRA parameter)."""
    return _rename(key, ORIGINAL_TO_DIFFUSERS_TOP_LEVEL, ORIGINAL_TO_DIFFUSERS_BLOCK, "original")


def diffusers_to_original_key(key: str) -> str:
    """The original Wan2.1 name of a diffusers transformer key; the inverse of :func:`original_to_diffusers_key`."""
    return _rename(key, _DIFFUSERS_TO_ORIGINAL_TOP_LEVEL, _DIFFUSERS_TO_ORIGINAL_BLOCK, "diffusers")


def _rename(key: str, top_level: Mapping[str, str], block: Mapping[str, str], naming: str) -> str:
    """Replace the longest table entry that is ``key`` or a dotted prefix of it (inside ``blocks.N.`` if there)."""
    match = BLOCK_KEY.fullmatch(key)
    prefix, rest, table = (match[1], match[2], block) if match else ("", key, top_level)
    for name in sorted(table, key=len, reverse=True):
        if rest == name or rest.startswith(name + "."):
            return prefix + table[name] + rest[len(name) :]
    raise KeyError(f"{key!r} is not a key of the Wan transformer in {naming} naming")


def original_to_diffusers_state_dict(state: Mapping[str, Tensor], source: str | os.PathLike[str]) -> dict[str, Tensor]:
    """``state`` (original Wan names) renamed for diffusers; an unknown key is an error naming ``source``."""
    return _rename_state(state, original_to_diffusers_key, source)


def diffusers_to_original_state_dict(state: Mapping[str, Tensor], source: str | os.PathLike[str]) -> dict[str, Tensor]:
    """``state`` (diffusers names) renamed to the original Wan names."""
    return _rename_state(state, diffusers_to_original_key, source)


def _rename_state(
    state: Mapping[str, Tensor], rename: Callable[[str], str], source: str | os.PathLike[str]
) -> dict[str, Tensor]:
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        try:
            renamed[rename(key)] = value
        except KeyError as error:
            raise CheckpointError(f"{source}: unknown key {error.args[0]}") from None
    return renamed


def read_eva_checkpoint(pickle_path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The transformer state dict (original Wan names) of EVA's Lightning checkpoint, memory-mapped.

    The state dict is Lightning's ``state_dict``, or wherever another trainer nests it
    (:func:`~eva_idm.idm.checkpoint.find_state_dict`). Wrapper prefixes that add no parameters
    (``module.``, ``_orig_mod.``) are dropped, before and after ``model.``. When keys sit under
    ``model.`` (the Lightning module's DiT), only those are kept, without the prefix: the module's
    other buffers, e.g. the VAE statistics, are not transformer weights. Without any ``model.`` key
    the state dict is the DiT's own, and every key must be an original Wan name.
    """
    path = Path(pickle_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EVA checkpoint not found")
    state = renamed_state(find_state_dict(load_weights_only(path, mmap=True), path), without_wrapper_prefixes, path)
    if not any(key.startswith(EVA_STATE_PREFIX) for key in state):
        return state
    return renamed_state(state, _transformer_key_of_lightning_module, path)


def _transformer_key_of_lightning_module(key: str) -> str | None:
    """The DiT's name for a key of EVA's Lightning module, or ``None`` for a key outside ``model.``."""
    return without_wrapper_prefixes(key.removeprefix(EVA_STATE_PREFIX)) if key.startswith(EVA_STATE_PREFIX) else None


def convert_checkpoint(
    pickle_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    transformer_config: str | os.PathLike[str] | None = None,
    max_shard_size: str = MAX_SHARD_SIZE,
) -> Path:
    """Write EVA's ``.ckpt`` as a diffusers transformer directory (``config.json`` + safetensors shards).

    ``transformer_config`` is the base model's ``transformer/config.json`` (or its folder); by
    default :data:`WAN21_I2V_14B_TRANSFORMER_CONFIG`. Every key must map to a parameter of that
    configuration with the same shape, and every parameter must be present. Tensors keep their
    dtype. The directory is written under a temporary name and renamed at the end, so an
    interrupted conversion never leaves a loadable partial directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: output directory already exists")
    state = original_to_diffusers_state_dict(read_eva_checkpoint(pickle_path), pickle_path)
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(_transformer_config(transformer_config))
    check_state_against_model(state, model.state_dict(), pickle_path, describe_key=diffusers_to_original_key)
    model.load_state_dict(state, strict=True, assign=True)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True, max_shard_size=max_shard_size)
    os.replace(partial, out_dir)
    return out_dir


def _transformer_config(transformer_config: str | os.PathLike[str] | None) -> dict[str, Any]:
    if transformer_config is None:
        return dict(WAN21_I2V_14B_TRANSFORMER_CONFIG)
    path = Path(transformer_config)
    return _read_json(path / "config.json" if path.is_dir() else path)


def load_world_model(
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
    """A :class:`WorldModel` from a local Wan2.1 I2V directory, diffusers-format or original.

    Args:
        directory: the ``Wan2.1-I2V-14B-480P-Diffusers`` layout (``model_index.json`` + components), or
            the original ``Wan2.1-I2V-14B-480P`` one (``config.json`` + ``.pth`` files, no
            ``model_index.json``), which :func:`eva_planner.original_wan.load_original_wan` reads.
        transformer_directory: a diffusers transformer directory used instead of ``directory/transformer``,
            e.g. EVA's weights written by :func:`convert_checkpoint`.
        lora_adapters: PEFT adapter directories, applied in order.
        merge_lora: merge each adapter into the weights (faster sampling) instead of keeping it active.
        dtype: transformer and text-encoder dtype (``"bfloat16"`` on a GPU).
        vae_dtype: VAE dtype; float32 by default for decode quality. The CLIP encoder stays float32.
        device: the accelerator the components run on.
        cpu_offload: which components wait on the CPU (``SamplerConfig.cpu_offload``): ``"none"``
            puts all of them on ``device`` now, ``"text_encoder"`` all but the umT5 encoder,
            ``"model"`` none, so that loading never holds them all on the device at once. LoRA
            adapters are merged where the transformer will rest.
    """
    from eva_planner import original_wan  # imported here: it builds on this module

    directory = Path(directory)
    if original_wan.is_original_wan_directory(directory):
        return original_wan.load_original_wan(
            directory, transformer_directory=transformer_directory, lora_adapters=lora_adapters,
            merge_lora=merge_lora, dtype=dtype, vae_dtype=vae_dtype, device=device, cpu_offload=cpu_offload,
        )  # fmt: skip
    check_dtypes(dtype, vae_dtype)
    resident = resident_components(cpu_offload)  # checks the value, naming cpu_offload
    index = _read_model_index(directory)
    folders = {name: directory / name for name in COMPONENTS}
    if transformer_directory is not None:
        folders["transformer"] = Path(transformer_directory)
    for name, folder in folders.items():
        _check_component_files(name, folder)

    transformer = _load_model("transformer", WanTransformer3DModel, folders["transformer"], DTYPES[dtype])
    adapter_names = rest_with_adapters(transformer, lora_adapters, merge_lora, device, resident)
    transformer_override = [folders["transformer"].name] if transformer_directory is not None else []
    world_model = WorldModel(
        transformer=transformer,
        vae=_load_model("vae", AutoencoderKLWan, folders["vae"], DTYPES[vae_dtype]),
        text_encoder=_load_model("text_encoder", UMT5EncoderModel, folders["text_encoder"], DTYPES[dtype]),
        tokenizer=AutoTokenizer.from_pretrained(folders["tokenizer"], local_files_only=True),
        image_encoder=_load_model(
            "image_encoder", _IMAGE_ENCODER_CLASSES[index["image_encoder"]], folders["image_encoder"], torch.float32
        ),
        image_processor=AutoImageProcessor.from_pretrained(folders["image_processor"], local_files_only=True),
        scheduler_config=_read_json(folders["scheduler"] / "scheduler_config.json"),
        model_id="+".join([directory.name, *transformer_override, *adapter_names]),
    )
    return placed(world_model, device, resident)


def rest_with_adapters(transformer: WanTransformer3DModel, lora_adapters: Iterable[str | os.PathLike[str]],
                       merge_lora: bool, device: str, resident: Sequence[str]) -> list[str]:
    """Move ``transformer`` where it will rest, then apply the adapters there; their names.

    Merged adapter weights are computed where they will stay. :func:`load_world_model` calls this
    before it reads the other components, so the host need not hold them all at once.
    """
    transformer.to(device if "transformer" in resident else "cpu")
    return _apply_adapters(transformer, [Path(adapter) for adapter in lora_adapters], merge_lora)


def placed(world_model: WorldModel, device: str, resident: Sequence[str]) -> WorldModel:
    """``world_model`` with its ``resident`` components on ``device`` and the others on the CPU."""
    for name, component in world_model.components.items():
        component.to(device if name in resident else "cpu")
    return world_model


def check_dtypes(dtype: str, vae_dtype: str) -> None:
    """Fail naming the loading option whose dtype is not one of :data:`DTYPES`, before anything loads."""
    for name, value in (("dtype", dtype), ("vae_dtype", vae_dtype)):
        if value not in DTYPES:
            raise ValueError(f"{name} must be one of {tuple(DTYPES)}, got {value!r}")


def _apply_adapters(transformer: WanTransformer3DModel, adapters: Sequence[Path], merge: bool) -> list[str]:
    """Load ``adapters`` in order (merged one by one, or all active together); their folder names."""
    names = [f"adapter{number}" for number in range(1, len(adapters) + 1)]
    for adapter, name in zip(adapters, names, strict=True):
        load_lora_adapter(transformer, adapter, adapter_name=name, merge=merge)
    if not merge and len(adapters) > 1:
        transformer.set_adapters(names)  # adding an adapter activates it alone
    return [adapter.name for adapter in adapters]


def _read_model_index(directory: Path) -> dict[str, str]:
    """Component name -> class name from ``model_index.json``, each checked against :data:`COMPONENTS`."""
    path = directory / MODEL_INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found; {directory} is neither a diffusers-format model directory nor an original Wan "
            "one (config.json)"
        )
    data = _read_json(path)
    if data.get("_class_name") != PIPELINE_CLASS:
        raise CheckpointError(f"{path}: _class_name is {data.get('_class_name')!r}, expected {PIPELINE_CLASS!r}")
    classes = {}
    for name, (_, _, accepted) in COMPONENTS.items():
        entry = data.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] in accepted):
            raise CheckpointError(f"{path}: component {name!r} is {entry!r}, expected one of {list(accepted)}")
        classes[name] = entry[1]
    return classes


def _check_component_files(name: str, folder: Path) -> None:
    required, weights_stem, _ = COMPONENTS[name]
    if not (folder / required).is_file():
        raise FileNotFoundError(f"{folder / required}: {name} file not found")
    if weights_stem is None:
        return
    for path in _weight_files(folder, weights_stem):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {name} weights file not found")


def _weight_files(folder: Path, stem: str) -> list[Path]:
    """The safetensors files of a component: one file, or the shards its index lists."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map'")
        return [folder / shard for shard in sorted(set(weight_map.values()))]
    return [folder / f"{stem}.safetensors"]


def _load_model(component: str, cls: type, folder: Path, dtype: torch.dtype) -> nn.Module:
    """``cls.from_pretrained`` with the checks the libraries leave to warnings (see the module docstring)."""
    files = _weight_files(folder, COMPONENTS[component][1])
    expected = _expected_shapes(cls, folder)
    for path in files:
        for key, shape in _safetensors_shapes(path).items():
            if key in expected and expected[key] != shape:
                raise CheckpointError(f"{path}: key {key!r} has shape {shape}, the model expects {expected[key]}")
    model, info = cls.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, torch_dtype=dtype, output_loading_info=True
    )
    source = files[0] if len(files) == 1 else folder
    for problem in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(key) for key in info.get(problem) or ())
        if keys:
            raise CheckpointError(f"{source}: {problem.replace('_', ' ')} {listed_keys(keys)}")
    return model.eval()


def _expected_shapes(cls: type, folder: Path) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``cls`` built from ``folder``'s config on the meta device (no memory)."""
    with torch.device("meta"):
        if issubclass(cls, PreTrainedModel):
            model = cls(cls.config_class.from_pretrained(folder, local_files_only=True))
        else:
            model = cls.from_config(cls.load_config(folder, local_files_only=True))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as weights:
            return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from error


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def save_world_model(world_model: WorldModel, directory: str | os.PathLike[str]) -> Path:
    """Write ``world_model`` in the diffusers layout that :func:`load_world_model` reads.

    A transformer with unmerged adapters is refused: save those with :func:`save_lora_adapter`.
    """
    if getattr(world_model.transformer, "peft_config", None):
        raise ValueError("the transformer has PEFT adapters; merge them or save them with save_lora_adapter")
    directory = Path(directory)
    world_model.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
    world_model.vae.save_pretrained(directory / "vae", safe_serialization=True)
    world_model.text_encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)
    world_model.tokenizer.save_pretrained(directory / "tokenizer")
    world_model.image_encoder.save_pretrained(directory / "image_encoder", safe_serialization=True)
    world_model.image_processor.save_pretrained(directory / "image_processor")
    scheduler = UniPCMultistepScheduler.from_config(
        world_model.scheduler_config, prediction_type="flow_prediction", use_flow_sigmas=True
    )
    scheduler.save_pretrained(directory / "scheduler")
    index = {
        "_class_name": PIPELINE_CLASS,
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", type(world_model.text_encoder).__name__],
        "tokenizer": ["transformers", type(world_model.tokenizer).__name__],
        "image_encoder": ["transformers", type(world_model.image_encoder).__name__],
        "image_processor": ["transformers", "CLIPImageProcessor"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    }
    (directory / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return directory


def save_lora_adapter(
    transformer: WanTransformer3DModel, directory: str | os.PathLike[str], adapter_name: str = "default"
) -> Path:
    """Write adapter ``adapter_name`` as a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    config = getattr(transformer, "peft_config", {}).get(adapter_name)
    if config is None:
        raise KeyError(f"the transformer has no adapter named {adapter_name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    tensors = {PEFT_KEY_PREFIX + key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(str(directory))
    return directory


def load_lora_adapter(
    transformer: WanTransformer3DModel,
    directory: str | os.PathLike[str],
    adapter_name: str = "default",
    merge: bool = False,
) -> None:
    """Add the PEFT adapter in ``directory`` to ``transformer`` as the active adapter; with ``merge``, fold it in.

    Keys and ``target_modules`` named after the original Wan modules are renamed with the key table.
    Every adapter tensor must land on an adapter parameter of the same shape.
    """
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LoRA adapter file not found")
    if merge and getattr(transformer, "peft_config", None):
        raise ValueError(f"{directory}: merging needs a transformer without other adapters")
    config = LoraConfig.from_pretrained(str(directory))
    try:
        state = {key.removeprefix(PEFT_KEY_PREFIX): value for key, value in load_file(str(weights_path)).items()}
    except SafetensorError as error:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {error}") from error
    state, modules, renamed = _adapter_in_diffusers_names(state, transformer, weights_path)
    if renamed and (config.rank_pattern or config.alpha_pattern):
        raise CheckpointError(f"{config_path}: rank_pattern/alpha_pattern with original Wan names are not supported")
    config.target_modules = sorted(modules)
    transformer.add_adapter(config, adapter_name)
    check_state_against_model(state, get_peft_model_state_dict(transformer, adapter_name=adapter_name), weights_path)
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    if result.unexpected_keys:
        raise CheckpointError(f"{weights_path}: unexpected key(s) {listed_keys(sorted(result.unexpected_keys))}")
    if merge:
        transformer.fuse_lora(adapter_names=[adapter_name])
        transformer.unload_lora()


def _adapter_in_diffusers_names(
    state: dict[str, Tensor], transformer: nn.Module, source: Path
) -> tuple[dict[str, Tensor], set[str], bool]:
    """``state`` with diffusers module names, the modules it adapts, and whether it had to be renamed."""
    module_names = {name for name, _ in transformer.named_modules()}
    modules = _adapter_modules(state, source)
    if modules <= module_names:
        return state, modules, False
    renamed = _rename_state(state, original_to_diffusers_key, source)
    renamed_modules = _adapter_modules(renamed, source)
    unknown = sorted(renamed_modules - module_names)
    if unknown:
        raise CheckpointError(f"{source}: adapter targets module(s) the transformer lacks: {listed_keys(unknown)}")
    return renamed, renamed_modules, True


def _adapter_modules(state: Mapping[str, Tensor], source: Path) -> set[str]:
    modules = set()
    for key in state:
        match = LORA_PARAMETER.search(key)
        if match is None:
            raise CheckpointError(f"{source}: key {key!r} is not a LoRA parameter")
        modules.add(key[: match.start()])
    return modules
