"""The 14B world model's planning time, memory and FLOP utilisation on one GPU (H100-class).

Never run by the tests or CI: it needs a CUDA device with about 50 GB free (or ``--cpu-offload
model`` and ~35 GB), and torch, diffusers, transformers and accelerate installed. It reads no files
and no network: every component is the real Wan2.1-I2V-14B-480P architecture with random weights,
built on the GPU in the dtypes the loader (``eva_planner.loading.load_world_model``) uses: the
transformer (:data:`~eva_planner.loading.WAN21_I2V_14B_TRANSFORMER_CONFIG`) and the umT5-XXL
encoder in ``--dtype``, diffusers' float32 modules kept in float32, CLIP ViT-H/14 and the VAE in
float32. Weights are drawn, never loaded, so no float32 copy of the 14B model is ever made.

What runs is the planner's own code path: :class:`~eva_planner.world_model.WorldModel` and its
``generate`` (prompt cache, VAE encode of the history frame, CLIP, EVA's per-frame-modulation
sampler in :mod:`eva_planner.transformer_forward` with three guidance passes per step, UniPC, VAE
decode) at EVA's size, 49x480x640: 13 latent frames of 60x80, 15,600 video tokens, 512 text
tokens, 257 CLIP tokens. Stand-ins, printed with the results: random weights (time and memory do
not depend on the values); the tiny in-memory tokenizer (``eva_planner.tiny.tiny_tokenizer``:
its ids are valid umT5 ids and every prompt is padded to 512 tokens, so the encoder does the same
work); a synthetic camera image.

Measured: a warm-up plan (1 step), then one plan with ``--steps`` steps and a new instruction, so
the umT5 encoder runs once: seconds per denoising step (three passes; the median of the steps
after the first), every stage, the peak of ``torch.cuda.max_memory_allocated``; the time of a
``--plan-steps`` plan is that plan plus the missing steps at the median step time. FLOPs come from
the architecture: ``predict_velocity`` and the VAE run on PyTorch's meta device under
``torch.utils.flop_counter`` (no memory, no GPU). Model FLOP utilisation = the transformer's FLOPs
per step / measured step time / the GPU's dense bf16 peak (``--peak-tflops``, or known from the
device name). Results: benchmarks/results/planner_gpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedModel,
    UMT5Config,
    UMT5EncoderModel,
)

from eva_idm.frames import encode_frames
from eva_planner.loading import WAN21_I2V_14B_TRANSFORMER_CONFIG
from eva_planner.prompt_cache import TEXT_CONTEXT_LENGTH
from eva_planner.tiny import tiny_tokenizer
from eva_planner.transformer_forward import predict_velocity
from eva_planner.world_model import (
    ATTENTION_BACKENDS,
    CPU_OFFLOADS,
    DTYPES,
    VAE_DECODES,
    SamplerConfig,
    WorldModel,
    check_attention_backend,
    resident_components,
)
from eva_sim.test_patterns import moving_pattern

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "planner_gpu.json"
GB = 1e9
TERA = 1e12
EVA_PLAN_STEPS = 40
WARMUP_INSTRUCTION = "move the cup"
INSTRUCTION = "pick up the cup and put it on the plate"  # not the warm-up's: the umT5 encoder runs once
STAND_INS = (
    "weights: random (normal, std 1/sqrt(fan_in)); time and memory do not depend on the values",
    "tokenizer: eva_planner.tiny.tiny_tokenizer (valid umT5 ids, padded to 512 tokens like the real one)",
    "camera image: a synthetic test pattern at 480x640",
)

# umT5-XXL encoder (google/umt5-xxl; Wan's models_t5_umt5-xxl-enc-bf16): 5.68 B parameters.
UMT5_XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
    "tie_word_embeddings": False,
}
# CLIP ViT-H/14 visual tower (open-clip / laion CLIP-ViT-H-14): 0.63 B parameters, 257 tokens of 1280.
CLIP_VIT_H_14_CONFIG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
# Dense (no sparsity) bf16 tensor-core peaks [TFLOP/s], from NVIDIA's data sheets; more specific names first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
)


# --- architectures, parameters and FLOPs (CPU, meta device) -------------------------------------------------


def build_transformer() -> WanTransformer3DModel:
    """Wan2.1-I2V-14B-480P's transformer (image cross-attention included)."""
    return WanTransformer3DModel.from_config(WAN21_I2V_14B_TRANSFORMER_CONFIG)


def build_text_encoder() -> UMT5EncoderModel:
    """The umT5-XXL encoder."""
    return UMT5EncoderModel(UMT5Config(**UMT5_XXL_CONFIG))


def build_image_encoder() -> CLIPVisionModel:
    """CLIP ViT-H/14's visual tower."""
    return CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H_14_CONFIG))


def build_vae() -> AutoencoderKLWan:
    """The Wan2.1 VAE (diffusers' defaults are its configuration)."""
    return AutoencoderKLWan()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "transformer": build_transformer,
    "text_encoder": build_text_encoder,
    "image_encoder": build_image_encoder,
    "vae": build_vae,
}


def clip_tokens() -> int:
    """CLIP tokens per image: one per patch, plus the class token (257 for ViT-H/14 at 224)."""
    return (CLIP_VIT_H_14_CONFIG["image_size"] // CLIP_VIT_H_14_CONFIG["patch_size"]) ** 2 + 1


def parameter_counts() -> dict[str, int]:
    """Parameters of each component, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return {name: sum(parameter.numel() for parameter in build().parameters()) for name, build in BUILDERS.items()}


def _flops_by_kind(counter: FlopCounterMode) -> dict[str, float]:
    """The counter's FLOPs split into linear layers (mm), attention (bmm / SDPA) and the rest (convolutions)."""
    kinds = {"linear": 0.0, "attention": 0.0, "other": 0.0}
    for operator, flops in counter.get_flop_counts()["Global"].items():
        name = str(operator)
        kind = "linear" if name.split(".")[1] in ("mm", "addmm") else "attention" if (
            name.split(".")[1] == "bmm" or "scaled_dot_product" in name) else "other"
        kinds[kind] += flops
    return {**kinds, "total": sum(kinds.values())}


def transformer_pass_flops(sampler: SamplerConfig) -> dict[str, float]:
    """FLOPs of one transformer pass (one guidance pass of one step) at ``sampler``'s size, by kind.

    ``predict_velocity`` in ``sampler.modulation`` mode on the meta device, batch 1, 512 text tokens
    and :func:`clip_tokens` image tokens.
    """
    text_dim = WAN21_I2V_14B_TRANSFORMER_CONFIG["text_dim"]
    image_dim = WAN21_I2V_14B_TRANSFORMER_CONFIG["image_dim"]
    latent_shape = (1, 16, sampler.latent_frames, sampler.height // 8, sampler.width // 8)
    with torch.device("meta"), torch.no_grad():
        transformer = build_transformer()  # float32 on meta: the count does not depend on the dtype
        latents, text = torch.empty(latent_shape), torch.empty(1, TEXT_CONTEXT_LENGTH, text_dim)
        timesteps, image = torch.full((1, sampler.latent_frames), 500.0), torch.empty(1, clip_tokens(), image_dim)
        with FlopCounterMode(display=False) as counter:
            predict_velocity(transformer, latents, timesteps, text, image, sampler.modulation)
    return _flops_by_kind(counter)


def vae_flops(sampler: SamplerConfig) -> dict[str, float]:
    """FLOPs of the VAE's full decode of a plan and its encode of the history frame (meta device)."""
    latent_shape = (1, 16, sampler.latent_frames, sampler.height // 8, sampler.width // 8)
    with torch.device("meta"), torch.no_grad():
        vae = build_vae()
        with FlopCounterMode(display=False) as decode:
            vae.decode(torch.empty(latent_shape), return_dict=False)
        with FlopCounterMode(display=False) as encode:
            vae.encode(torch.empty(1, 3, 1, sampler.height, sampler.width))
    return {"decode": decode.get_total_flops(), "encode": encode.get_total_flops()}


def guidance_passes(sampler: SamplerConfig) -> int:
    """Transformer passes per step: conditional, plus no-language and no-history unless their weight is 0."""
    return 1 + bool(sampler.guidance_language) + bool(sampler.guidance_history)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU known by name [TFLOP/s], or None for an unknown one."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in device_name.lower()), None)


# --- random weights on the device ------------------------------------------------------------------------


def loading_dtype(model: nn.Module, parameter_name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype ``from_pretrained(torch_dtype=dtype)`` gives the parameter: ``dtype``, or float32 where kept.

    Diffusers keeps ``_keep_in_fp32_modules`` in float32 for any dtype; transformers keeps its
    ``_keep_in_fp32_modules`` only for float16 and ``_keep_in_fp32_modules_strict`` for float16 and bfloat16.
    """
    if isinstance(model, PreTrainedModel):
        keep = set(model._keep_in_fp32_modules_strict or ()) if dtype in (torch.float16, torch.bfloat16) else set()
        keep |= set(model._keep_in_fp32_modules or ()) if dtype == torch.float16 else set()
    else:
        keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return torch.float32 if keep.intersection(parameter_name.split(".")) else dtype


def _fill_random_(tensor: torch.Tensor, name: str, generator: torch.Generator) -> None:
    """Matrices and kernels ~ N(0, 1/fan_in); 1-D scales 1, biases 0: activations stay finite through the layers."""
    if tensor.ndim >= 2:
        tensor.normal_(0.0, tensor[0].numel() ** -0.5, generator=generator)
    elif name.rsplit(".", 1)[-1] == "bias":
        tensor.zero_()
    else:
        tensor.fill_(1.0)


def random_module(build: Callable[[], nn.Module], device: str | torch.device, dtype: torch.dtype,
                  seed: int = 0) -> nn.Module:
    """``build()``'s architecture on ``device`` with random weights in their loading dtype (:func:`loading_dtype`).

    Parameters are created empty (accelerate's ``init_empty_weights``; buffers such as RoPE tables
    are computed as usual), then each is allocated on ``device`` and filled there, so the model never
    exists in float32 or on the CPU as a whole. Tied parameters stay tied.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = build()
    if isinstance(model, PreTrainedModel):
        model.tie_weights()  # empty weights come untied (umT5's shared embedding); from_pretrained ties them
    generator = torch.Generator(device).manual_seed(seed)
    made: dict[int, nn.Parameter] = {}
    for name, parameter in list(model.named_parameters(remove_duplicate=False)):
        if id(parameter) not in made:
            tensor = torch.empty(parameter.shape, dtype=loading_dtype(model, name, dtype), device=device)
            _fill_random_(tensor, name, generator)
            made[id(parameter)] = nn.Parameter(tensor, requires_grad=False)
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = made[id(parameter)]
    return model.to(device).eval()


def random_world_model(device: str, dtype: torch.dtype, cpu_offload: str,
                       builders: Mapping[str, Callable[[], nn.Module]] = BUILDERS) -> WorldModel:
    """A :class:`WorldModel` of ``builders``' architectures with random weights, placed as ``load_world_model`` does.

    The transformer and the text encoder get ``dtype``, CLIP and the VAE float32. Each component is
    drawn on ``device``; those that ``cpu_offload`` keeps off the device move to the CPU before the
    next is drawn.
    """
    resident = resident_components(cpu_offload)
    dtypes = {"transformer": dtype, "text_encoder": dtype, "image_encoder": torch.float32, "vae": torch.float32}
    components = {}
    for seed, (name, build) in enumerate(builders.items()):
        components[name] = random_module(build, device, dtypes[name], seed).to(device if name in resident else "cpu")
    side = components["image_encoder"].config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return WorldModel(**components, tokenizer=tiny_tokenizer(), image_processor=processor,
                      scheduler_config={"num_train_timesteps": 1000}, model_id="wan2.1-i2v-14b-random-weights")


# --- measuring ---------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_plan(model: WorldModel, image: np.ndarray, instruction: str, sampler: SamplerConfig) -> dict[str, Any]:
    """One ``generate``: stage timings, per-step seconds, the frames' PNG encoding and the peak device memory.

    Steps are timed between consecutive ``on_step`` calls (after a device synchronisation), so the
    first step, which also pays for moving weights under ``cpu_offload``, is not among them. An
    out-of-memory error after the last step (the VAE decode) is reported, not raised.
    """
    device = torch.device(sampler.device)
    step_ends: list[float] = []

    def on_step(done: int, total: int) -> None:
        _synchronize(device)
        step_ends.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    started = time.perf_counter()
    measured: dict[str, Any] = {"decode_error": None}
    try:
        result = model.generate(image, instruction, sampler, on_step=on_step)
    except torch.OutOfMemoryError as error:
        if len(step_ends) < sampler.steps:
            raise
        result, measured["decode_error"] = None, str(error).splitlines()[0]
    measured["until_last_step_s"] = step_ends[-1] - started
    measured["step_s"] = [float(seconds) for seconds in np.diff(step_ends)]
    if result is not None:
        measured["timings_s"] = dict(result.timings)
        encode_started = time.perf_counter()
        encode_frames(result.frames, "png")
        measured["png_encode_s"] = time.perf_counter() - encode_started
    if device.type == "cuda":
        measured["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / GB
        measured["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / GB
    return measured


def plan_estimate(measured: dict[str, Any], sampler: SamplerConfig, plan_steps: int,
                  decode_estimate_s: float | None) -> dict[str, float | None]:
    """Seconds of a ``plan_steps`` plan: the measured plan plus the missing steps at the median step time.

    Without a measured decode (out of memory), ``decode_estimate_s`` stands in for it.
    """
    step = statistics.median(measured["step_s"])
    extra = (plan_steps - sampler.steps) * step
    if "timings_s" in measured:
        timings = measured["timings_s"]
        total = timings["total"] + extra + measured["png_encode_s"]
        return {"plan_s": total, "plan_with_cached_prompt_s": total - timings["encode_prompt"]}
    if decode_estimate_s is None:
        return {"plan_s": None, "plan_with_cached_prompt_s": None}
    return {"plan_s": measured["until_last_step_s"] + extra + decode_estimate_s, "plan_with_cached_prompt_s": None}


def require_cuda() -> torch.device:
    """The CUDA device, or SystemExit with what is missing."""
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise SystemExit(f"planner_gpu: no CUDA device (torch {torch.__version__}, {built}). This benchmark needs "
                         "an H100-class GPU with ~50 GB free; on a CPU run `python benchmarks/planner.py`.")
    return torch.device("cuda", torch.cuda.current_device())


def parse_arguments() -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="denoising steps timed (>= 2; default 4)")
    parser.add_argument("--plan-steps", type=int, default=EVA_PLAN_STEPS, help="steps of a real plan (EVA: 40)")
    parser.add_argument("--attention-backend", default="native", choices=ATTENTION_BACKENDS)
    parser.add_argument("--cpu-offload", default="none", choices=CPU_OFFLOADS)
    parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES), help="transformer and umT5 dtype")
    parser.add_argument("--vae-decode", default="full", choices=VAE_DECODES)
    parser.add_argument("--batch-guidance", action="store_true", help="run the three passes as one batch")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (steps are timed between steps), got {args.steps}")
    if args.plan_steps < args.steps:
        parser.error(f"--plan-steps must be at least --steps ({args.steps}), got {args.plan_steps}")
    return args


def main() -> int:
    """Run the benchmark and write its JSON."""
    args = parse_arguments()
    device = require_cuda()
    name = torch.cuda.get_device_name(device)
    sampler = SamplerConfig(steps=args.steps, dtype=args.dtype, device=str(device),
                            attention_backend=args.attention_backend, cpu_offload=args.cpu_offload,
                            vae_decode=args.vae_decode, batch_guidance=args.batch_guidance)
    heads, head_dim = (WAN21_I2V_14B_TRANSFORMER_CONFIG[key] for key in ("num_attention_heads", "attention_head_dim"))
    try:  # before minutes of building: an unusable kernel fails now, naming the option
        check_attention_backend(args.attention_backend, str(device), sampler.torch_dtype, heads, head_dim)
    except ValueError as error:
        raise SystemExit(f"planner_gpu: --attention-backend: {error}") from None

    print(f"planner_gpu on {name}: {sampler.num_frames}x{sampler.height}x{sampler.width}, {args.dtype}, "
          f"attention {args.attention_backend}, cpu_offload {args.cpu_offload}", flush=True)
    print("counting parameters and FLOPs on the meta device ...", flush=True)
    counted = {"parameters": parameter_counts(), "pass": transformer_pass_flops(sampler),
               "vae": vae_flops(sampler)}
    print("drawing random weights on the device ...", flush=True)
    started = time.perf_counter()
    model = random_world_model(str(device), sampler.torch_dtype, args.cpu_offload)
    built = {"build_s": time.perf_counter() - started, "weights_gb": torch.cuda.memory_allocated(device) / GB}
    image = moving_pattern(1, 480, 640, seed=3)[0]
    try:
        print("warm-up plan (1 step) ...", flush=True)
        warmup = measure_plan(model, image, WARMUP_INSTRUCTION, dataclasses.replace(sampler, steps=1))
        print(f"timed plan ({args.steps} steps) ...", flush=True)
        measured = measure_plan(model, image, INSTRUCTION, sampler)
    except torch.OutOfMemoryError as error:
        raise SystemExit(f"planner_gpu: out of GPU memory before the last denoising step "
                         f"({str(error).splitlines()[0]}); try --cpu-offload model") from None

    result = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
              **summarise(args, sampler, counted, built, warmup, measured)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_summary(result)
    print(f"wrote {args.out}")
    return 0


def summarise(args: argparse.Namespace, sampler: SamplerConfig, counted: dict[str, Any], built: dict[str, float],
              warmup: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The result record: setup, stand-ins, FLOPs, step and plan times, memory and utilisation."""
    passes = guidance_passes(sampler)
    step_flops = passes * counted["pass"]["total"]
    step = statistics.median(measured["step_s"])
    achieved = step_flops / step
    peak = args.peak_tflops or peak_bf16_tflops(torch.cuda.get_device_name(sampler.device))
    # Without a decode (out of memory): its FLOPs at half the transformer's rate (float32 convolutions run
    # on TF32 tensor cores, whose peak is half the bf16 one). An estimate, and labelled as one.
    decode_estimate = 2 * counted["vae"]["decode"] / achieved if measured["decode_error"] else None
    return {
        "setup": {"plan": f"{sampler.num_frames}x{sampler.height}x{sampler.width}",
                  "latents": f"16x{sampler.latent_frames}x{sampler.height // 8}x{sampler.width // 8}",
                  "video_tokens": sampler.latent_frames * (sampler.height // 16) * (sampler.width // 16),
                  "text_tokens": TEXT_CONTEXT_LENGTH, "image_tokens": clip_tokens(), "timed_steps": args.steps,
                  "plan_steps": args.plan_steps, "passes_per_step": passes, "dtype": args.dtype,
                  "vae_and_clip_dtype": "float32", "attention_backend": args.attention_backend,
                  "cpu_offload": args.cpu_offload, "vae_decode": args.vae_decode,
                  "batch_guidance": args.batch_guidance, "modulation": sampler.modulation,
                  "code_path": "eva_planner.world_model.WorldModel.generate"},
        "stand_ins": list(STAND_INS),
        "parameters": counted["parameters"],
        "flops": {"transformer_pass_tflop": {kind: flops / TERA for kind, flops in counted["pass"].items()},
                  "step_tflop": step_flops / TERA, "plan_tflop": args.plan_steps * step_flops / TERA,
                  "vae_decode_tflop": counted["vae"]["decode"] / TERA,
                  "vae_encode_tflop": counted["vae"]["encode"] / TERA},
        "build_s": built["build_s"],
        "warmup": warmup,
        "measured": measured,
        "step_s": step, "pass_s": step / passes,
        **plan_estimate(measured, sampler, args.plan_steps, decode_estimate),
        "decode_s": measured.get("timings_s", {}).get("decode", decode_estimate),
        "decode_measured": measured["decode_error"] is None,
        "memory_gb": {"weights_on_device": built["weights_gb"], "peak_allocated": measured.get("peak_allocated_gb"),
                      "peak_reserved": measured.get("peak_reserved_gb")},
        "utilisation": {"peak_bf16_tflops": peak, "achieved_tflops": achieved / TERA,
                        "mfu": achieved / (peak * TERA) if peak else None,
                        "step_floor_s": step_flops / (peak * TERA) if peak else None},
    }


def print_summary(result: dict[str, Any]) -> None:
    """The numbers that matter, and the stand-ins."""
    flops, memory, use = result["flops"], result["memory_gb"], result["utilisation"]
    timings = result["measured"].get("timings_s", {})
    one_pass = flops["transformer_pass_tflop"]
    print(f"transformer {result['parameters']['transformer'] / 1e9:.2f} B params; one pass {one_pass['total']:.1f} "
          f"TFLOP (linear {one_pass['linear']:.1f}, attention {one_pass['attention']:.1f}); "
          f"step {flops['step_tflop']:.1f} TFLOP")
    print(f"per denoising step ({result['setup']['passes_per_step']} passes): {result['step_s']:.3f} s "
          f"({result['pass_s']:.3f} s per pass); steps {[round(s, 3) for s in result['measured']['step_s']]}")
    for stage in ("encode_prompt", "encode_image", "denoise", "decode"):
        if stage in timings:
            print(f"  stage {stage:14s} {timings[stage]:8.3f} s")
    decode = "measured" if result["decode_measured"] else f"estimated ({result['measured']['decode_error']})"
    plan = result["plan_s"]
    print(f"per plan ({result['setup']['plan_steps']} steps): " + (f"{plan:.1f} s" if plan else "n/a")
          + f"; decode {decode}")
    print(f"memory: weights on the device {memory['weights_on_device']:.1f} GB, peak allocated "
          f"{memory['peak_allocated'] or float('nan'):.1f} GB")
    if use["mfu"] is not None:
        print(f"MFU {use['mfu']:.1%} of the {use['peak_bf16_tflops']:.0f} TFLOP/s dense bf16 peak "
              f"({use['achieved_tflops']:.0f} TFLOP/s achieved); "
              f"floor {use['step_floor_s']:.3f} s per step")
    else:
        print(f"achieved {use['achieved_tflops']:.0f} TFLOP/s; unknown GPU peak: pass --peak-tflops for MFU")
    print("stand-ins: " + "; ".join(result["stand_ins"]))


if __name__ == "__main__":
    sys.exit(main())
