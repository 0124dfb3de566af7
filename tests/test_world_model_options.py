"""Memory and speed options of the world model on the tiny preset (CPU): offload, tiled decode, attention backends.

The device here is the CPU, so offloading cannot save anything; what is checked is that it changes
no number and that every component is moved back after the stage that ran it (the order of moves
and runs, recorded per component). Tiled decoding and other attention kernels change rounding
only, so their plans are compared with tolerances; invalid values must name the parameter.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eva_planner.loading import load_world_model, save_world_model
from eva_planner.node_config import PlannerNodeConfig, build_world_model
from eva_planner.tiny import TINY_SAMPLER_CONFIG, build_tiny_world_model
from eva_planner.world_model import (
    COMPONENTS,
    STAGE_COMPONENTS,
    PlanningCancelled,
    SamplerConfig,
    WorldModel,
    resident_components,
)
from eva_training.cli import main

# Another long CPU job shares this 2-core machine; one thread keeps the suite predictable.
torch.set_num_threads(1)

INSTRUCTION = "pick up the red block"
TINY = {"model": "tiny", "dtype": "float32", "device": "cpu"}
SMALL_TILES = {"vae_decode": "tiled", "vae_tile_size": 32, "vae_tile_stride": 24}  # 3x3 tiles on a 64x64 plan


@pytest.fixture(scope="module")
def world_model() -> WorldModel:
    return build_tiny_world_model(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(world_model: WorldModel, image: np.ndarray):
    return world_model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)


def options(**changes) -> SamplerConfig:
    return dataclasses.replace(TINY_SAMPLER_CONFIG, **changes)


@contextmanager
def moves_and_runs(world_model: WorldModel) -> Iterator[dict[str, list[str]]]:
    """Per component, in order: ``"to"`` for every ``.to()`` call, ``"run"`` for every stretch of forward passes.

    On the CPU a move to the device and a move back are the same call, so what shows offloading is
    the order: a component that is moved after its last run went back to the CPU.
    """
    events: dict[str, list[str]] = {name: [] for name in COMPONENTS}
    vae = world_model.vae
    runners = {
        "text_encoder": [world_model.text_encoder],
        "image_encoder": [world_model.image_encoder],
        "transformer": [world_model.transformer.patch_embedding],
        "vae": [vae.encoder, vae.decoder],
    }

    def record(name: str, event: str) -> None:
        if event == "to" or events[name][-1:] != ["run"]:
            events[name].append(event)

    handles = []
    for name, component in world_model.components.items():
        real_to = component.to

        def recording_to(*args, name=name, real_to=real_to, **kwargs):
            record(name, "to")
            return real_to(*args, **kwargs)

        component.to = recording_to  # an instance attribute: the real move still happens
        for module in runners[name]:
            handles.append(module.register_forward_pre_hook(lambda *_, name=name: record(name, "run")))
    try:
        yield events
    finally:
        for handle in handles:
            handle.remove()
        for component in world_model.components.values():
            del component.to


# --- cpu_offload -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cpu_offload", ["text_encoder", "model"])
def test_offloading_gives_the_identical_plan(world_model, image, reference, cpu_offload):
    plan = world_model.generate(image, INSTRUCTION, options(cpu_offload=cpu_offload))
    assert torch.equal(plan.latents, reference.latents)
    np.testing.assert_array_equal(plan.frames, reference.frames)
    assert plan.config.cpu_offload == cpu_offload


def test_model_offload_moves_each_component_back_after_the_stage_that_ran_it(image):
    world_model = build_tiny_world_model(seed=0)  # nothing cached: the text encoder runs too
    with moves_and_runs(world_model) as events:
        world_model.generate(image, INSTRUCTION, options(cpu_offload="model"))
    # placement, then per stage: moved there, run, moved back (the VAE encodes and later decodes;
    # the text encoder encodes the instruction and the empty negative prompt).
    assert events == {
        "text_encoder": ["to", "to", "run", "to", "to", "run", "to"],
        "image_encoder": ["to", "to", "run", "to"],
        "transformer": ["to", "to", "run", "to"],
        "vae": ["to", "to", "run", "to", "to", "run", "to"],
    }
    assert all(parameter.device.type == "cpu" for parameter in world_model.transformer.parameters())


@pytest.mark.parametrize(("cpu_offload", "offloaded"), [("none", set()), ("text_encoder", {"text_encoder"})])
def test_without_model_offload_only_the_offloaded_components_move_after_running(image, cpu_offload, offloaded):
    world_model = build_tiny_world_model(seed=0)
    with moves_and_runs(world_model) as events:
        world_model.generate(image, INSTRUCTION, options(cpu_offload=cpu_offload))
    moved_back = {name for name, sequence in events.items() if sequence[-1] == "to"}
    assert moved_back == offloaded
    assert events["transformer"] == ["to", "run"], "placed once, then only run"
    assert world_model.prompt_cache.offload_text_encoder == bool(offloaded)


def test_a_cancelled_plan_still_moves_the_transformer_back(world_model, image):
    with moves_and_runs(world_model) as events, pytest.raises(PlanningCancelled):
        calls = iter([False, True])
        world_model.generate(image, INSTRUCTION, options(cpu_offload="model"), should_stop=lambda: next(calls))
    assert events["transformer"] == ["to", "to", "run", "to"]
    assert events["vae"] == ["to", "to", "run", "to"], "encoded the image, never decoded"


def test_resident_components_per_mode():
    assert resident_components("none") == COMPONENTS
    assert set(resident_components("text_encoder")) == set(COMPONENTS) - {"text_encoder"}
    assert resident_components("model") == ()
    assert all(set(names) <= set(COMPONENTS) for names in STAGE_COMPONENTS.values())
    with pytest.raises(ValueError, match="cpu_offload must be one of"):
        resident_components("disk")


def test_a_loaded_model_with_offload_reproduces_the_plan(world_model, image, reference, tmp_path):
    directory = save_world_model(world_model, tmp_path / "tiny")
    loaded = load_world_model(directory, dtype="float32", device="cpu", cpu_offload="model")
    plan = loaded.generate(image, INSTRUCTION, options(cpu_offload="model"))
    assert torch.equal(plan.latents, reference.latents)
    with pytest.raises(ValueError, match="cpu_offload must be one of .*got 'disk'"):
        load_world_model(directory, dtype="float32", device="cpu", cpu_offload="disk")


# --- vae_decode ------------------------------------------------------------------------------------


@contextmanager
def decoder_input_sizes(world_model: WorldModel) -> Iterator[list[tuple[int, int]]]:
    sizes: list[tuple[int, int]] = []
    handle = world_model.vae.decoder.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        yield sizes
    finally:
        handle.remove()


def test_tiled_decode_runs_the_decoder_on_tiles_and_only_changes_the_frames_a_little(world_model, image, reference):
    with decoder_input_sizes(world_model) as full_sizes:
        world_model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG)
    with decoder_input_sizes(world_model) as tiled_sizes:
        tiled = world_model.generate(image, INSTRUCTION, options(**SMALL_TILES))
    assert set(full_sizes) == {(8, 8)}, "the whole 64x64 plan at once"
    assert max(tiled_sizes) == (4, 4) and len(tiled_sizes) > len(full_sizes), "32 px tiles, several per frame"
    assert torch.equal(tiled.latents, reference.latents), "tiling changes the decode, not the sampling"
    difference = np.abs(tiled.frames.astype(int) - reference.frames.astype(int))
    # A 4-px latent tile is smaller than the random tiny VAE's receptive field, so tiles differ
    # visibly; blended into place they still track the full decode (a misplaced tile would not).
    assert 0 < difference.mean() < 20 and difference.shape == reference.frames.shape


def test_a_tile_larger_than_the_plan_decodes_in_full_and_the_vae_settings_are_restored(world_model, image, reference):
    plan = world_model.generate(image, INSTRUCTION, options(vae_decode="tiled", vae_tile_size=64, vae_tile_stride=64))
    np.testing.assert_array_equal(plan.frames, reference.frames)
    world_model.generate(image, INSTRUCTION, options(**SMALL_TILES))
    vae = world_model.vae
    assert not vae.use_tiling and (vae.tile_sample_min_height, vae.tile_sample_stride_width) == (256, 192)


# --- attention_backend -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["_native_math", "_native_flash"])
def test_other_attention_kernels_give_the_same_plan_up_to_rounding(world_model, image, reference, backend):
    plan = world_model.generate(image, INSTRUCTION, options(attention_backend=backend))
    torch.testing.assert_close(plan.latents, reference.latents, rtol=0, atol=1e-4)
    assert np.abs(plan.frames.astype(int) - reference.frames.astype(int)).max() <= 1


def test_an_unusable_attention_backend_fails_before_sampling_naming_the_parameter(world_model, image, reference):
    with pytest.raises(ValueError, match="attention_backend 'flash' cannot run on cpu with torch.float32"):
        world_model.generate(image, INSTRUCTION, options(attention_backend="flash"))
    assert torch.equal(world_model.generate(image, INSTRUCTION, TINY_SAMPLER_CONFIG).latents, reference.latents)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpu_offload": "disk"}, "cpu_offload must be one of .*got 'disk'"),
        ({"vae_decode": "sliced"}, "vae_decode must be one of .*got 'sliced'"),
        ({"vae_tile_size": 100}, "vae_tile_size must be a positive multiple of 8 .*got 100"),
        ({"vae_tile_stride": 0}, "vae_tile_stride must be a positive multiple of 8 .*got 0"),
        ({"vae_tile_stride": 320}, "vae_tile_stride must be at most vae_tile_size \\(256\\).*got 320"),
        ({"attention_backend": "fast"}, "attention_backend must be one of .*got 'fast'"),
        ({"attention_backend": "flash_hub"}, "attention_backend .flash_hub. downloads its kernel from the Hugging"),
    ],
)
def test_invalid_options_name_the_field_and_value(changes, message):
    with pytest.raises(ValueError, match=message):
        options(**changes)


# --- planner node parameters and the eva plan CLI --------------------------------------------------


def test_node_parameters_reach_the_sampler_config():
    config = PlannerNodeConfig(**TINY, cpu_offload="model", vae_decode="tiled", vae_tile_size=32, vae_tile_stride=24,
                               attention_backend="_native_math")  # fmt: skip
    sampler = config.sampler_config(seed=3)
    assert (sampler.cpu_offload, sampler.vae_decode, sampler.vae_tile_size, sampler.vae_tile_stride) == (
        "model", "tiled", 32, 24)  # fmt: skip
    assert sampler.attention_backend == "_native_math"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cpu_offload": "gpu"}, "cpu_offload must be one of"),
        ({"vae_decode": "sliced"}, "vae_decode must be one of"),
        ({"vae_tile_stride": 264}, "vae_tile_stride must be at most vae_tile_size"),
        ({"attention_backend": "sage_hub"}, "attention_backend 'sage_hub' downloads"),
        ({"offload_text_encoder": True}, "unknown parameter.*'offload_text_encoder'"),
    ],
)
def test_bad_node_parameters_name_the_parameter(overrides, message):
    with pytest.raises(ValueError, match=message):
        PlannerNodeConfig.from_parameters({**TINY, **overrides})


def test_configure_tries_the_attention_backend_on_the_device():
    assert isinstance(build_world_model(PlannerNodeConfig(**TINY, attention_backend="_native_math")), WorldModel)
    with pytest.raises(ValueError, match="attention_backend '_native_efficient' cannot run on cpu"):
        build_world_model(PlannerNodeConfig(**TINY, attention_backend="_native_efficient"))


@pytest.fixture(scope="module")
def image_path(tmp_path_factory, image) -> Path:
    path = tmp_path_factory.mktemp("camera") / "head.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def plan(*argv: object) -> int:
    return main(["plan", *map(str, argv), "--threads", "1", "--formats", "png"])


def test_the_cli_passes_the_options_to_the_sampler(image_path, tmp_path, reference):
    out = tmp_path / "plan"
    assert plan(image_path, INSTRUCTION, "--out", out, "--cpu-offload", "model", "--attention-backend", "native") == 0
    summary = json.loads((out / "plan.json").read_text())
    assert (summary["sampler"]["cpu_offload"], summary["sampler"]["attention_backend"]) == ("model", "native")
    frame = cv2.cvtColor(cv2.imread(str(out / "frames" / "frame_004.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(frame, reference.frames[4])
    tiled = tmp_path / "tiled"
    assert plan(image_path, INSTRUCTION, "--out", tiled, "--vae-decode", "tiled", "--vae-tile-size", 32,
                "--vae-tile-stride", 16) == 0  # fmt: skip
    sampler = json.loads((tiled / "plan.json").read_text())["sampler"]
    assert (sampler["vae_decode"], sampler["vae_tile_size"], sampler["vae_tile_stride"]) == ("tiled", 32, 16)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cpu-offload", "disk"], "--cpu-offload must be one of"),
        (["--vae-decode", "sliced"], "--vae-decode must be one of"),
        (["--vae-tile-size", "20"], "--vae-tile-size must be a positive multiple of 8"),
        (["--attention-backend", "flash"], "--attention-backend 'flash' cannot run on cpu"),
    ],
)
def test_bad_option_flags_fail_naming_the_flag_and_write_nothing(image_path, tmp_path, capsys, extra, message):
    assert plan(image_path, INSTRUCTION, "--out", tmp_path / "plan", *extra) == 2
    assert not list(tmp_path.iterdir())
    assert message in capsys.readouterr().err
