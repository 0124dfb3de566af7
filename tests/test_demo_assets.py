"""The demo's IDM recipe: the printed commands make the same data and training run as the demo."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from eva_training.cli import build_parser
from eva_training.config import load_config
from eva_training.demo_assets import DemoRecipe, demo_idm_cached, reproduce_commands
from eva_training.train_idm import IDMTrainConfig


def test_the_printed_train_command_is_the_demo_training_config(tmp_path):
    recipe = DemoRecipe()
    data, run = tmp_path / "data", tmp_path / "run"
    synth_command, train_command = reproduce_commands(recipe, data, run)
    arguments = build_parser().parse_args(shlex.split(train_command)[1:])
    assert load_config(IDMTrainConfig, arguments) == recipe.train_config(data, run)
    synth = build_parser().parse_args(shlex.split(synth_command)[1:])
    expected = recipe.synth_config(data)
    assert (Path(synth.out), synth.episodes, synth.frames, synth.height, synth.width, synth.seed,
            synth.gripper_toggle_probability) == (expected.out_dir, expected.episodes, expected.frames,
                                                  expected.height, expected.width, expected.seed,
                                                  expected.gripper_toggle_probability)


def test_a_changed_recipe_is_a_new_cache_entry(tmp_path):
    recipe = DemoRecipe()
    assert recipe.key() == DemoRecipe().key()
    assert dataclasses.replace(recipe, steps=recipe.steps + 1).key() != recipe.key()
    assert not demo_idm_cached(tmp_path, recipe)
