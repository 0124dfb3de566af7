"""The CPU-side pieces of benchmarks/planner_gpu.py: the 14B architectures, their FLOPs, random weights, timing.

The benchmark itself needs a CUDA GPU and is never run here. What it computes without one is
checked on PyTorch's meta device (no memory is allocated for the 16 B parameters), and its
measuring code runs end to end on the tiny model's architectures on the CPU.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import CLIPVisionModel, UMT5EncoderModel

from eva_planner.tiny import build_tiny_world_model
from eva_planner.world_model import SamplerConfig
from eva_sim.test_patterns import moving_pattern

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "planner_gpu.py"
EVA_PLAN = SamplerConfig()  # 49x480x640, three guidance passes
H100_SXM_BF16 = 989.4e12  # dense bf16 peak [FLOP/s]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("planner_gpu", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing resolve the module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny_builders():
    """Builders of the tiny preset's architectures (same configs, fresh modules)."""
    tiny = build_tiny_world_model()
    return {
        "transformer": lambda: WanTransformer3DModel.from_config(tiny.transformer.config),
        "text_encoder": lambda: UMT5EncoderModel(tiny.text_encoder.config),
        "image_encoder": lambda: CLIPVisionModel(tiny.image_encoder.config),
        "vae": lambda: AutoencoderKLWan.from_config(tiny.vae.config),
    }


def test_the_components_are_wan21_i2v_14b_480p(bench):
    assert bench.clip_tokens() == 257  # 16 x 16 patches of ViT-H/14 at 224 px, plus the class token
    assert bench.parameter_counts() == {
        "transformer": 16_394_878_784,  # 32.8 GB in bf16, the size of eva_i2v_14B.ckpt
        "text_encoder": 5_680_910_336,  # umT5-XXL encoder
        "image_encoder": 630_766_080,  # CLIP ViT-H/14 visual tower
        "vae": 126_892_531,
    }


def test_a_transformer_pass_at_49x480x640_is_585_tflop_as_the_closed_form_says(bench):
    flops = bench.transformer_pass_flops(EVA_PLAN)

    dim, ffn, layers = 5120, 13824, 40
    video, text, image = 13 * 30 * 40, 512, 257
    # Per block: self-attention q,k,v,o and cross-attention q,o and the FFN on every video token,
    # cross-attention k,v on the text tokens and k_img,v_img on the image tokens; 2 FLOPs per MAC.
    block_linear = 2 * video * (6 * dim * dim + 2 * dim * ffn) + 2 * 2 * dim * dim * (text + image)
    # QK^T and attention x V: self-attention over the video tokens, cross-attention over text + image.
    block_attention = 4 * video * video * dim + 4 * video * (text + image) * dim
    assert flops["attention"] == pytest.approx(layers * block_attention, rel=1e-9)
    assert flops["linear"] == pytest.approx(layers * block_linear, rel=2e-3)  # + embedders and the output head
    assert flops["total"] == pytest.approx(585.46e12, rel=1e-4)
    step = bench.guidance_passes(EVA_PLAN) * flops["total"]
    assert step / H100_SXM_BF16 == pytest.approx(1.775, abs=1e-3)  # the floor of a 3-pass step on an H100 SXM


def test_the_vae_decode_of_a_plan_is_128_tflop(bench):
    flops = bench.vae_flops(EVA_PLAN)
    assert flops["decode"] == pytest.approx(128.29e12, rel=1e-3)
    assert flops["encode"] == pytest.approx(2.08e12, rel=1e-2)


def test_the_gpu_peak_comes_from_the_device_name(bench):
    assert bench.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_bf16_tflops("NVIDIA H200") == 989.4
    assert bench.peak_bf16_tflops("Tesla T4") is None


@pytest.mark.parametrize(("component", "dtype"), [("transformer", torch.bfloat16), ("text_encoder", torch.float16),
                                                  ("text_encoder", torch.bfloat16)])
def test_random_weights_get_the_dtypes_from_pretrained_gives(bench, tiny_builders, tmp_path, component, dtype):
    saved = tiny_builders[component]()
    saved.save_pretrained(tmp_path)
    loaded = type(saved).from_pretrained(tmp_path, torch_dtype=dtype)
    drawn = bench.random_module(tiny_builders[component], "cpu", dtype)
    expected = {name: parameter.dtype for name, parameter in loaded.named_parameters()}
    assert {name: parameter.dtype for name, parameter in drawn.named_parameters()} == expected
    assert len(set(expected.values())) == (2 if (component, dtype) != ("text_encoder", torch.bfloat16) else 1)


def test_random_weights_fill_every_parameter_keep_ties_and_compute_buffers(bench, tiny_builders):
    encoder = bench.random_module(tiny_builders["text_encoder"], "cpu", torch.float32)
    assert encoder.shared.weight is encoder.encoder.embed_tokens.weight
    transformer = bench.random_module(tiny_builders["transformer"], "cpu", torch.float32, seed=3)
    reference = tiny_builders["transformer"]()
    for name, buffer in reference.named_buffers():  # RoPE tables: computed, not drawn
        torch.testing.assert_close(transformer.get_buffer(name), buffer)
    for model in (encoder, transformer):
        for name, parameter in model.named_parameters():
            assert parameter.device.type == "cpu" and torch.isfinite(parameter).all(), name
            assert not parameter.requires_grad
    weight = transformer.blocks[0].ffn.net[0].proj.weight
    assert weight.std().item() == pytest.approx(weight.shape[1] ** -0.5, rel=0.1)
    again = bench.random_module(tiny_builders["transformer"], "cpu", torch.float32, seed=3)
    assert torch.equal(again.proj_out.weight, transformer.proj_out.weight)


@pytest.mark.parametrize(("dtype", "cpu_offload"), [("float32", "none"), ("bfloat16", "model")])
def test_a_plan_is_measured_per_step_and_stage_and_extrapolated_to_40_steps(bench, tiny_builders, dtype,
                                                                           cpu_offload):
    sampler = SamplerConfig(num_frames=9, height=64, width=64, steps=3, dtype=dtype, device="cpu",
                            cpu_offload=cpu_offload)
    model = bench.random_world_model("cpu", sampler.torch_dtype, cpu_offload, tiny_builders)
    image = moving_pattern(1, 480, 640, seed=3)[0]
    measured = bench.measure_plan(model, image, "pick up the cup", sampler)

    assert measured["decode_error"] is None
    assert len(measured["step_s"]) == sampler.steps - 1 and all(seconds > 0 for seconds in measured["step_s"])
    timings = measured["timings_s"]
    assert {"encode_prompt", "encode_image", "denoise", "decode", "total"} <= set(timings)
    assert sum(measured["step_s"]) < timings["denoise"] < measured["until_last_step_s"] < timings["total"]
    assert measured["png_encode_s"] > 0
    estimate = bench.plan_estimate(measured, sampler, 40, decode_estimate_s=None)
    expected = timings["total"] + 37 * float(np.median(measured["step_s"])) + measured["png_encode_s"]
    assert estimate["plan_s"] == pytest.approx(expected)
    assert estimate["plan_with_cached_prompt_s"] == pytest.approx(expected - timings["encode_prompt"])


def test_without_a_cuda_device_the_benchmark_stops_at_once_saying_why(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["planner_gpu.py", "--steps", "3"])
    with pytest.raises(SystemExit, match="planner_gpu: no CUDA device .*needs an H100-class GPU"):
        bench.main()
