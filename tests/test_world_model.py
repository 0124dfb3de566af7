"""The world-model core on the tiny preset (CPU): EVA's sampler, its sigma table, checkpoints, LoRA, prompt cache.

The tiny model runs the same ``WorldModel.generate`` code path as the 14B model, in a fraction of a
second per plan. Its velocities are small, so sampler behaviour is checked on the final latents
(``PlanResult.latents``), where it is exact, rather than on uint8 frames.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from eva_planner.loading import (
    WAN21_I2V_14B_TRANSFORMER_CONFIG,
    CheckpointError,
    convert_checkpoint,
    diffusers_to_original_key,
    diffusers_to_original_state_dict,
    load_lora_adapter,
    load_world_model,
    original_to_diffusers_state_dict,
    read_eva_checkpoint,
    save_lora_adapter,
    save_world_model,
)
from eva_planner.tiny import TINY_SAMPLER_CONFIG, build_tiny_world_model
from eva_planner.transformer_forward import predict_velocity
from eva_planner.world_model import (
    PlanningCancelled,
    SamplerConfig,
    WorldModel,
    bounded_threads,
    eva_sigmas,
    make_scheduler,
    prepare_image,
)

# Another long CPU job shares this 2-core machine; one thread keeps the suite predictable.
torch.set_num_threads(1)

INSTRUCTION = "pick up the red block"
NO_GUIDANCE = dataclasses.replace(TINY_SAMPLER_CONFIG, guidance_history=0.0, guidance_language=0.0)
EVA_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]


@pytest.fixture(scope="module")
def world_model() -> WorldModel:
    return build_tiny_world_model(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 48x80 camera image: other size and aspect than the plan's 64x64, so it is resized and cropped."""
    return np.random.default_rng(7).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(world_model: WorldModel, image: np.ndarray):
    return world_model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)


@contextmanager
def recorded_passes(world_model: WorldModel) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Record each transformer evaluation: its input channels and its per-frame timesteps."""
    passes: list[dict[str, torch.Tensor]] = []
    transformer = world_model.transformer

    def record_input(module, args):
        passes.append({"input": args[0].detach().clone()})

    def record_timesteps(module, args):
        passes[-1]["timesteps"] = args[0].detach().clone()

    handles = [
        transformer.patch_embedding.register_forward_pre_hook(record_input),
        transformer.condition_embedder.register_forward_pre_hook(record_timesteps),
    ]
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()


def lora_world_model(seed: int = 0) -> WorldModel:
    """A tiny model with an active EVA-style LoRA adapter whose B matrices are non-zero."""
    model = build_tiny_world_model(seed=0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=EVA_LORA_TARGETS, lora_dropout=0.0)
    model.transformer.add_adapter(config, "default")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.transformer.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


# --- sampler -------------------------------------------------------------------------------------


def test_a_plan_has_the_configured_shape_and_reports_its_stages(reference):
    assert reference.frames.shape == (9, 64, 64, 3)
    assert reference.frames.dtype == np.uint8
    assert reference.latents.shape == (1, 16, 3, 8, 8)
    assert reference.fps == TINY_SAMPLER_CONFIG.fps
    assert reference.seed == TINY_SAMPLER_CONFIG.seed
    assert set(reference.timings) == {"encode_prompt", "encode_image", "denoise", "decode", "total"}
    assert all(seconds >= 0 for seconds in reference.timings.values())


def test_the_same_seed_gives_identical_frames_and_another_seed_differs(world_model, image, reference):
    again = world_model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    other = world_model.generate(image, INSTRUCTION, dataclasses.replace(TINY_SAMPLER_CONFIG, seed=1))
    np.testing.assert_array_equal(again.frames, reference.frames)
    assert torch.equal(again.latents, reference.latents)
    assert not np.array_equal(other.frames, reference.frames)
    assert (other.latents[:, :, 1:] - reference.latents[:, :, 1:]).abs().mean() > 0.1


@pytest.mark.parametrize(
    ("language", "history", "passes_per_step"), [(0.0, 0.0, 1), (2.5, 0.0, 2), (0.0, 1.5, 2), (2.5, 1.5, 3)]
)
def test_each_guidance_pass_runs_once_per_step_and_is_skipped_when_its_weight_is_zero(
    world_model, image, language, history, passes_per_step
):
    config = dataclasses.replace(TINY_SAMPLER_CONFIG, guidance_language=language, guidance_history=history)
    with recorded_passes(world_model) as passes:
        world_model.generate(image, INSTRUCTION, config)
    assert len(passes) == passes_per_step * config.steps


def test_without_guidance_each_step_is_one_conditional_pass(world_model, image):
    """An independent loop written from the notes reproduces generate() with λh = λl = 0 exactly."""
    config = NO_GUIDANCE
    plan = world_model.generate(image, INSTRUCTION, config)

    frame = prepare_image(image, config.height, config.width)
    history = world_model.encode_history_latent(frame, config)
    clip_features = world_model.encode_clip_image(frame, config)
    prompt = world_model.encode_prompt(INSTRUCTION, config)
    latents = torch.randn((1, 16, 3, 8, 8), generator=torch.Generator().manual_seed(config.seed))
    scheduler = make_scheduler(config)
    timesteps = 1000 * eva_sigmas(config.steps, config.shift)[:-1]
    with torch.no_grad():
        for step, timestep in enumerate(timesteps):
            latents[:, :, 0:1] = history
            frame_timesteps = torch.tensor([[timesteps[-1], timestep, timestep]], dtype=torch.float32)
            velocity = predict_velocity(world_model.transformer, latents, frame_timesteps, prompt, clip_features)
            latents = scheduler.step(velocity.float(), scheduler.timesteps[step], latents).prev_sample
    latents[:, :, 0:1] = history
    assert torch.equal(plan.latents, latents)


def test_guidance_changes_the_plan(world_model, image, reference):
    unguided = world_model.generate(image, INSTRUCTION, NO_GUIDANCE)
    assert (unguided.latents[:, :, 1:] - reference.latents[:, :, 1:]).abs().max() > 1e-3


def test_every_pass_sees_the_clean_history_zeroed_image_channels_and_per_frame_timesteps(world_model, image):
    config = TINY_SAMPLER_CONFIG
    history = world_model.encode_history_latent(prepare_image(image, config.height, config.width), config)
    with recorded_passes(world_model) as passes:
        world_model.generate(image, INSTRUCTION, config)
    timesteps = 1000 * eva_sigmas(config.steps, config.shift)[:-1]
    for step, timestep in enumerate(timesteps):
        conditional, no_language, no_history = passes[3 * step : 3 * step + 3]
        for recorded in (conditional, no_language, no_history):
            assert recorded["input"].shape[1] == 36
            assert torch.count_nonzero(recorded["input"][:, 16:]) == 0
            np.testing.assert_allclose(recorded["timesteps"][1:].numpy(), timestep, rtol=1e-6)
        for recorded in (conditional, no_language):
            torch.testing.assert_close(recorded["input"][:, :16, :1], history, rtol=0, atol=0)
            np.testing.assert_allclose(recorded["timesteps"][0].item(), timesteps[-1], rtol=1e-6)
        assert not torch.allclose(no_history["input"][:, :16, :1], history)
        np.testing.assert_allclose(no_history["timesteps"][0].item(), timesteps[0], rtol=1e-6)


def test_history_timestep_zero_is_what_sft_saw(world_model, image):
    config = dataclasses.replace(NO_GUIDANCE, history_timestep="zero")
    with recorded_passes(world_model) as passes:
        world_model.generate(image, INSTRUCTION, config)
    assert [recorded["timesteps"][0].item() for recorded in passes] == [0.0] * config.steps


def test_eva_clip_preprocessing_squashes_the_whole_frame_and_processor_mode_crops(world_model):
    config = dataclasses.replace(TINY_SAMPLER_CONFIG, height=64, width=128)
    frame = np.zeros((64, 128, 3), dtype=np.uint8)
    frame[:, :16] = 255  # a white strip at the left edge, which a centre crop never sees
    cropping = dataclasses.replace(config, clip_preprocessing="processor")
    with torch.no_grad():
        squashed = world_model.encode_clip_image(frame, config)
        cropped = world_model.encode_clip_image(frame, cropping)
        black = world_model.encode_clip_image(np.zeros_like(frame), cropping)
    assert squashed.shape == cropped.shape == (1, 17, 16)
    assert not torch.allclose(squashed, cropped)
    torch.testing.assert_close(cropped, black)


def test_clip_features_reach_the_image_cross_attention_in_every_pass(world_model, image):
    shapes = []
    handle = world_model.transformer.blocks[0].attn2.add_k_proj.register_forward_pre_hook(
        lambda module, args: shapes.append(tuple(args[0].shape))
    )
    try:
        world_model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    finally:
        handle.remove()
    assert shapes == [(1, 17, 24)] * (3 * TINY_SAMPLER_CONFIG.steps)


def test_the_first_frame_is_the_vae_reconstruction_of_the_conditioning_image(world_model, image, reference):
    config = TINY_SAMPLER_CONFIG
    frame = prepare_image(image, config.height, config.width)
    with torch.no_grad():
        history = world_model.encode_history_latent(frame, config)
        reconstruction = world_model.decode_latents(history)
    assert torch.equal(reference.latents[:, :, :1], history)
    difference = np.abs(reference.frames[0].astype(int) - reconstruction[0].astype(int))
    assert difference.max() <= 1


def test_per_frame_modulation_matches_diffusers_per_token_and_per_sample_paths(world_model):
    transformer = world_model.transformer
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn((1, 16, 3, 8, 8), generator=generator)
    text = torch.randn((1, 512, 32), generator=generator)
    image = torch.randn((1, 17, 16), generator=generator)
    mixed = torch.tensor([[71.4, 700.0, 700.0]])
    with torch.no_grad():
        per_frame = predict_velocity(transformer, latents, mixed, text, image, "per_frame")
        per_token = predict_velocity(transformer, latents, mixed, text, image, "per_token")
        uniform = predict_velocity(transformer, latents, torch.full((1, 3), 500.0), text, image, "per_frame")
        model_input = torch.cat([latents, torch.zeros((1, 20, 3, 8, 8))], dim=1)
        per_sample = transformer(model_input, torch.tensor([500.0]), text, image, return_dict=False)[0]
    torch.testing.assert_close(per_frame, per_token, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uniform, per_sample, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(per_frame, uniform)


def test_per_frame_forward_supports_gradient_checkpointing():
    transformer = build_tiny_world_model(seed=0).transformer
    inputs = (torch.randn(1, 16, 3, 8, 8), torch.tensor([[71.4, 700.0, 700.0]]), torch.randn(1, 512, 32))
    plain = predict_velocity(transformer, *inputs, torch.zeros(1, 17, 16))
    transformer.enable_gradient_checkpointing()
    checkpointed = predict_velocity(transformer, *inputs, torch.zeros(1, 17, 16))
    checkpointed.square().mean().backward()
    torch.testing.assert_close(plain, checkpointed)
    assert transformer.blocks[0].attn1.to_q.weight.grad is not None


def test_batched_guidance_and_per_token_modulation_give_the_same_plan(world_model, image, reference):
    for option in ({"batch_guidance": True}, {"modulation": "per_token"}):
        plan = world_model.generate(image, INSTRUCTION, dataclasses.replace(TINY_SAMPLER_CONFIG, **option))
        torch.testing.assert_close(plan.latents, reference.latents, rtol=1e-4, atol=1e-4)


def test_a_batch_of_seeds_gives_each_seeds_own_plan(world_model, image, reference):
    other = world_model.generate(image, INSTRUCTION, dataclasses.replace(TINY_SAMPLER_CONFIG, seed=5))
    plans = world_model.generate_batch(image, INSTRUCTION, TINY_SAMPLER_CONFIG, (TINY_SAMPLER_CONFIG.seed, 5))
    assert [plan.seed for plan in plans] == [TINY_SAMPLER_CONFIG.seed, 5] and plans[1].config.seed == 5
    for together, alone in zip(plans, (reference, other), strict=True):
        torch.testing.assert_close(together.latents, alone.latents, rtol=1e-4, atol=1e-4)
        assert np.abs(together.frames.astype(int) - alone.frames).max() <= 1
    with pytest.raises(ValueError, match="seeds: need at least one"):
        world_model.generate_batch(image, INSTRUCTION, TINY_SAMPLER_CONFIG, ())


def test_euler_solver_runs_on_the_same_sigmas(world_model, image, reference):
    plan = world_model.generate(image, INSTRUCTION, dataclasses.replace(TINY_SAMPLER_CONFIG, solver="euler"))
    assert torch.equal(plan.latents[:, :, :1], reference.latents[:, :, :1])
    assert not torch.equal(plan.latents, reference.latents)


# --- EVA's sigma table ------------------------------------------------------------------------------


def test_eva_sigma_table_is_reproduced():
    sigmas = eva_sigmas(40, 3.0)
    assert sigmas.shape == (41,)
    np.testing.assert_allclose(
        sigmas[[0, 1, 2, 30, 38, 39]], [0.9999, 0.9914, 0.9826, 0.4999, 0.1363, 0.0714], atol=6e-5
    )
    assert sigmas[-1] == 0.0
    assert np.all(np.diff(sigmas) < 0)


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_a_fresh_scheduler_uses_exactly_eva_sigmas(solver):
    config = SamplerConfig(steps=40, solver=solver)
    first, second = make_scheduler(config), make_scheduler(config)
    assert first is not second
    np.testing.assert_allclose(first.sigmas.numpy(), eva_sigmas(40, 3.0), atol=1e-6)


# --- cancellation, threads, bad input ------------------------------------------------------------------


def test_should_stop_cancels_between_steps(world_model, image):
    progress: list[tuple[int, int]] = []
    with recorded_passes(world_model) as passes, pytest.raises(PlanningCancelled) as cancelled:
        world_model.generate(
            image,
            INSTRUCTION,
            TINY_SAMPLER_CONFIG,
            should_stop=lambda: len(progress) == 2,
            on_step=lambda done, total: progress.append((done, total)),
        )
    assert cancelled.value.completed_steps == 2
    assert progress == [(1, 4), (2, 4)]
    assert len(passes) == 2 * 3


def test_num_threads_is_bounded_and_restored():
    before = torch.get_num_threads()
    with bounded_threads(1_000):
        assert 1 <= torch.get_num_threads() <= (os.cpu_count() or 1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("bad_image", "message"),
    [
        (np.zeros((64, 64, 3), dtype=np.float32), "uint8"),
        (np.zeros((64, 64), dtype=np.uint8), "shape"),
        (np.zeros((64, 64, 4), dtype=np.uint8), "shape"),
    ],
)
def test_a_malformed_image_is_rejected_naming_the_problem(world_model, bad_image, message):
    with pytest.raises(ValueError, match=message):
        world_model.generate(bad_image, INSTRUCTION, TINY_SAMPLER_CONFIG)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_frames", 10), ("height", 50), ("solver", "ddim"), ("guidance_history", -1.0), ("dtype", "int8"),
     ("candidate_batch", 0)],
)
def test_invalid_sampler_settings_name_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"{field}.*{value}"):
        SamplerConfig(**{field: value})


def test_a_dtype_other_than_the_loaded_one_is_refused(world_model, image):
    with pytest.raises(ValueError, match="bfloat16"):
        world_model.generate(image, INSTRUCTION, dataclasses.replace(TINY_SAMPLER_CONFIG, dtype="bfloat16"))


# --- prompt cache ------------------------------------------------------------------------------------


def test_the_prompt_cache_encodes_each_instruction_once(image):
    model = build_tiny_world_model(seed=0)
    calls = []
    model.text_encoder.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    embedding = model.prompt_cache.get(INSTRUCTION)
    assert model.prompt_cache.get(f"  {INSTRUCTION.replace(' ', '   ')} ") is embedding
    assert len(calls) == 1
    model.prompt_cache.get("place the cup on the plate")
    assert len(calls) == 2
    model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    assert len(calls) == 3  # plus the empty negative prompt, once
    assert embedding.device.type == "cpu" and embedding.shape == (1, 512, 32)
    token_count = len(model.tokenizer(INSTRUCTION).input_ids)
    assert torch.count_nonzero(embedding[0, token_count:]) == 0
    assert torch.count_nonzero(embedding[0, :token_count]) > 0


# --- checkpoints ----------------------------------------------------------------------------------------


def test_the_key_table_and_its_inverse_are_identities_and_agree_with_diffusers(world_model):
    state = world_model.transformer.state_dict()
    original = diffusers_to_original_state_dict(state, "tiny")
    assert original_to_diffusers_state_dict(original, "tiny").keys() == state.keys()
    assert diffusers_to_original_state_dict(original_to_diffusers_state_dict(original, "tiny"), "tiny") == original
    assert "blocks.0.cross_attn.k_img.weight" in original and "head.modulation" in original
    by_diffusers = convert_wan_transformer_to_diffusers(dict(original))
    assert by_diffusers.keys() == state.keys()
    assert all(by_diffusers[key] is state[key] for key in state)


def write_eva_checkpoint(transformer, path: Path) -> Path:
    """A Lightning-style checkpoint as EVA saves it: original names under ``model.``, plus other state."""
    original = diffusers_to_original_state_dict(transformer.state_dict(), "tiny")
    state_dict = {f"model.{key}": value.clone() for key, value in original.items()}
    state_dict["vae_mean"] = torch.zeros(16)
    torch.save({"state_dict": state_dict, "epoch": 3, "global_step": 1200}, path)
    return path


@pytest.fixture(scope="module")
def saved_directory(world_model, tmp_path_factory) -> Path:
    return save_world_model(world_model, tmp_path_factory.mktemp("tiny") / "wan-i2v")


def test_a_saved_directory_loads_offline_and_reproduces_the_plan(saved_directory, image, reference):
    loaded = load_world_model(saved_directory, dtype="float32")
    plan = loaded.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    assert torch.equal(plan.latents, reference.latents)


def test_an_eva_checkpoint_converts_to_safetensors_that_load_strictly_and_reproduce_the_plan(
    world_model, saved_directory, image, tmp_path
):
    eva_transformer = build_tiny_world_model(seed=1).transformer  # other weights than the base directory's
    converted = convert_checkpoint(
        write_eva_checkpoint(eva_transformer, tmp_path / "eva.ckpt"), tmp_path / "eva", saved_directory / "transformer"
    )
    assert sorted(path.suffix for path in converted.iterdir()) == [".json", ".safetensors"]
    loaded = load_world_model(saved_directory, transformer_directory=converted, dtype="float32")
    expected_model = build_tiny_world_model(seed=0)
    expected_model.transformer = eva_transformer
    expected = expected_model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    assert torch.equal(loaded.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents, expected.latents)


def test_eva_checkpoint_errors_name_the_file_and_the_key(world_model, saved_directory, tmp_path):
    transformer = world_model.transformer
    config = saved_directory / "transformer"
    path = write_eva_checkpoint(transformer, tmp_path / "eva.ckpt")
    checkpoint = torch.load(path, weights_only=True)

    def converted(mutate, name):
        broken = {"state_dict": dict(checkpoint["state_dict"])}
        mutate(broken["state_dict"])
        torch.save(broken, tmp_path / f"{name}.ckpt")
        return convert_checkpoint(tmp_path / f"{name}.ckpt", tmp_path / name, config)

    with pytest.raises(CheckpointError, match=r"unknown\.ckpt.*'blocks\.0\.self_attn\.qq\.weight'"):
        converted(lambda state: state.update({"model.blocks.0.self_attn.qq.weight": torch.zeros(1)}), "unknown")
    with pytest.raises(CheckpointError, match=r"missing\.ckpt: missing key.*'blocks\.1\.attn2\.add_k_proj\.weight'"):
        converted(lambda state: state.pop("model.blocks.1.cross_attn.k_img.weight"), "missing")
    with pytest.raises(CheckpointError, match=r"shape\.ckpt: key 'blocks\.0\.ffn\.net\.2\.bias'.*\(3,\)"):
        converted(lambda state: state.update({"model.blocks.0.ffn.2.bias": torch.zeros(3)}), "shape")
    torch.save({"weights": {}}, tmp_path / "not_lightning.ckpt")
    with pytest.raises(CheckpointError, match=r"not_lightning\.ckpt.*'state_dict'"):
        read_eva_checkpoint(tmp_path / "not_lightning.ckpt")
    (tmp_path / "truncated.ckpt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt"):
        read_eva_checkpoint(tmp_path / "truncated.ckpt")
    with pytest.raises(FileNotFoundError, match=r"absent\.ckpt"):
        read_eva_checkpoint(tmp_path / "absent.ckpt")


def test_model_directory_errors_name_the_file_and_the_key(saved_directory, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_world_model(tmp_path)
    weights = saved_directory / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)

    def broken_transformer(name: str, tensors: dict[str, torch.Tensor] | None, raw: bytes | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((saved_directory / "transformer" / "config.json").read_text())
        if raw is not None:
            (folder / weights.name).write_bytes(raw)
        elif tensors is not None:
            save_file(tensors, folder / weights.name)
        return folder

    cases = [
        (broken_transformer("no_weights", None), FileNotFoundError, "no_weights/diffusion_pytorch_model.safetensors"),
        (broken_transformer("truncated", None, weights.read_bytes()[:500]), CheckpointError, "truncated.*truncated"),
        (
            broken_transformer("missing", {k: v for k, v in state.items() if k != "proj_out.bias"}),
            CheckpointError,
            "missing keys.*'proj_out.bias'",
        ),
        (
            broken_transformer("extra", {**state, "blocks.0.extra.weight": torch.zeros(1)}),
            CheckpointError,
            "unexpected keys.*'blocks.0.extra.weight'",
        ),
        (
            broken_transformer("shape", {**state, "proj_out.bias": torch.zeros(5)}),
            CheckpointError,
            r"shape/diffusion_pytorch_model.safetensors: key 'proj_out.bias' has shape \(5,\)",
        ),
    ]
    for folder, error, message in cases:
        with pytest.raises(error, match=message):
            load_world_model(saved_directory, transformer_directory=folder, dtype="float32")
    index = json.loads((saved_directory / "model_index.json").read_text())
    (tmp_path / "t2v").mkdir()
    (tmp_path / "t2v" / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanPipeline"}))
    with pytest.raises(CheckpointError, match="_class_name.*WanPipeline"):
        load_world_model(tmp_path / "t2v")


def test_the_default_conversion_config_is_wan21_i2v_14b():
    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(WAN21_I2V_14B_TRANSFORMER_CONFIG)
    assert sum(parameter.numel() for parameter in transformer.parameters()) == 16_394_878_784


def test_convert_refuses_to_overwrite(world_model, saved_directory, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out"):
        convert_checkpoint(write_eva_checkpoint(world_model.transformer, tmp_path / "a.ckpt"), tmp_path / "out", "x")


# --- LoRA adapters ----------------------------------------------------------------------------------------


def test_lora_adapters_save_load_and_merge_reproduce_the_plan(saved_directory, image, tmp_path):
    adapted = lora_world_model()
    expected = adapted.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents
    base = build_tiny_world_model(seed=0).generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents
    assert not torch.allclose(expected, base, atol=1e-3)
    adapter = save_lora_adapter(adapted.transformer, tmp_path / "adapter")

    active = build_tiny_world_model(seed=0)
    load_lora_adapter(active.transformer, adapter)
    assert torch.equal(active.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents, expected)

    merged = build_tiny_world_model(seed=0)
    load_lora_adapter(merged.transformer, adapter, merge=True)
    assert not getattr(merged.transformer, "peft_config", None)
    torch.testing.assert_close(
        merged.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents, expected, rtol=1e-4, atol=1e-4
    )

    loaded = load_world_model(saved_directory, lora_adapters=[adapter], dtype="float32")
    assert loaded.model_id == "wan-i2v+adapter"
    torch.testing.assert_close(
        loaded.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents, expected, rtol=1e-4, atol=1e-4
    )


def test_a_lora_adapter_with_original_wan_names_loads(image, tmp_path):
    adapted = lora_world_model()
    expected = adapted.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents
    adapter = save_lora_adapter(adapted.transformer, tmp_path / "diffusers_names")
    original = tmp_path / "original_names"
    original.mkdir()
    prefix = "base_model.model."
    tensors = {
        prefix + diffusers_to_original_key(key.removeprefix(prefix)): value
        for key, value in load_file(adapter / "adapter_model.safetensors").items()
    }
    save_file(tensors, original / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q", "k", "v", "o", "k_img", "v_img"]
    (original / "adapter_config.json").write_text(json.dumps(config))

    model = build_tiny_world_model(seed=0)
    load_lora_adapter(model.transformer, original)
    assert torch.equal(model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents, expected)


def test_lora_errors_name_the_file_and_the_key(tmp_path):
    adapter = save_lora_adapter(lora_world_model().transformer, tmp_path / "adapter")
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="config_only/adapter_model.safetensors"):
        load_lora_adapter(build_tiny_world_model().transformer, tmp_path / "config_only")
    tensors = load_file(adapter / "adapter_model.safetensors")
    key = "base_model.model.blocks.0.attn1.to_q.lora_A.weight"
    tensors[key] = torch.zeros(4, 3)
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: key 'blocks.0.attn1.to_q.lora_A.weight'"):
        load_lora_adapter(build_tiny_world_model().transformer, adapter)
