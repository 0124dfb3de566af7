"""PlannerNodeConfig: the planner node's parameters are checked before anything loads, and typos are errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from eva_idm.node_parameters import parameter_specs
from eva_planner.node_config import MAX_SEED, PlannerNodeConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
TINY = {"model": "tiny", "dtype": "float32", "device": "cpu"}


def yaml_parameters(name: str) -> dict:
    """A params file's planner_node parameters as rclpy hands them over (a YAML [] arrives unset)."""
    values = yaml.safe_load((CONFIG_DIR / name).read_text())["planner_node"]["ros__parameters"]
    return {key: None if value == [] else value for key, value in values.items()}


def test_robot_config_lists_every_parameter_with_the_dataclass_default():
    values = yaml_parameters("planner.yaml")
    assert list(values) == [spec.name for spec in parameter_specs(PlannerNodeConfig)]
    config = PlannerNodeConfig.from_parameters(values)
    defaults = {spec.name: spec.default for spec in parameter_specs(PlannerNodeConfig)}
    assert {**dataclasses.asdict(config), "model": ""} == defaults
    assert config.model and (config.steps, config.num_frames, config.device) == (40, 49, "cuda")


def test_tiny_config_is_small_and_single_threaded():
    config = PlannerNodeConfig.from_parameters(yaml_parameters("planner_tiny.yaml"))
    assert (config.model, config.num_frames, config.height, config.width) == ("tiny", 9, 64, 64)
    assert config.steps <= 4 and config.num_threads == 1 and config.device == "cpu"


def test_every_parameter_has_a_description_and_a_ros_type():
    for spec in parameter_specs(PlannerNodeConfig):
        assert spec.description, spec.name
        assert spec.kind in {"bool", "int", "float", "str", "str_list"}, spec.name


@pytest.mark.parametrize(("key", "hint"), [("stpes", "did you mean 'steps'?"), ("use_gpu", "'use_gpu'")])
def test_an_unknown_key_is_an_error_naming_it(key, hint):
    with pytest.raises(ValueError, match="unknown parameter") as error:
        PlannerNodeConfig.from_parameters({**TINY, key: 4})
    assert hint in str(error.value) and "config/planner.yaml" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fps": "16"}, "fps: expected a number, got '16'"),
        ({"steps": 4.0}, "steps: expected an integer, got 4.0"),
        ({"steps": True}, "steps: expected an integer, got True"),
        ({"merge_lora": 1}, "merge_lora: expected a boolean, got 1"),
        ({"lora_adapters": "adapter"}, "lora_adapters: expected a list of strings, got 'adapter'"),
        ({"lora_adapters": [""]}, r"lora_adapters: expected non-empty strings"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        PlannerNodeConfig.from_parameters({**TINY, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": ""}, "model: must be 'tiny', a model directory or 'oracle:<episode.hdf5>'"),
        ({"dtype": "bfloat16"}, "dtype: model 'tiny' is built in float32"),
        ({"dtype": "int8", "model": "/models/wan"}, "dtype: must be one of"),
        ({"transformer_directory": "/models/eva"}, "model 'tiny' takes neither"),
        ({"device": "gpu"}, "device: not a torch device, got 'gpu'"),
        ({"num_frames": 48}, "num_frames must be 4k\\+1"),
        ({"height": 50}, "height must be a positive multiple of 16"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"solver": "ddim"}, "solver must be one of"),
        ({"seed": -2}, "seed: must be -1"),
        ({"num_threads": -1}, "num_threads: must be >= 0"),
        ({"image_transport": "theora"}, "image_transport: must be one of \\['raw', 'compressed'\\]"),
        ({"frame_format": "jpeg"}, "frame_format: must be one of"),
        ({"max_image_age": 0.0}, "max_image_age: must be a finite number > 0"),
        ({"goal_timeout": math.inf}, "goal_timeout: must be a finite number > 0"),
        ({"image_timeout": -1.0}, "image_timeout: must be a finite number >= 0"),
        ({"best_of_n": 0}, "best_of_n: must be >= 1"),
        ({"best_of_n": 4}, "best_of_n: 4 candidates need an idm_checkpoint"),
        ({"embodiment": ""}, "embodiment: must name an embodiment"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_field_and_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        PlannerNodeConfig.from_parameters({**TINY, **overrides})


def test_integers_pass_as_floats_and_lists_become_tuples():
    config = PlannerNodeConfig.from_parameters({**TINY, "fps": 16, "lora_adapters": None})
    assert config.fps == 16.0 and isinstance(config.fps, float)
    assert config.lora_adapters == ()
    adapters = PlannerNodeConfig.from_parameters({"model": "/models/wan", "lora_adapters": ["/models/grpo"]})
    assert adapters.lora_adapters == ("/models/grpo",)


def test_the_config_is_frozen():
    config = PlannerNodeConfig(**TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 2


def test_sampler_config_carries_the_sampler_fields_and_the_seed():
    config = PlannerNodeConfig.from_parameters(yaml_parameters("planner_tiny.yaml"))
    sampler = config.sampler_config(seed=11)
    assert (sampler.num_frames, sampler.height, sampler.width, sampler.steps) == (9, 64, 64, config.steps)
    assert (sampler.seed, sampler.dtype, sampler.device, sampler.solver) == (11, "float32", "cpu", "unipc")


def test_plan_seed_prefers_the_goal_then_the_parameter_then_a_random_one():
    assert PlannerNodeConfig(**TINY, seed=5).plan_seed(9) == 9
    assert PlannerNodeConfig(**TINY, seed=5).plan_seed(-1) == 5
    random_seeds = {PlannerNodeConfig(**TINY).plan_seed() for _ in range(4)}
    assert len(random_seeds) > 1 and all(0 <= seed <= MAX_SEED for seed in random_seeds)
