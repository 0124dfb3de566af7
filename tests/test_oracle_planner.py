"""The oracle planner serves a recorded episode's video as the plan, like the world model would."""

from __future__ import annotations

import numpy as np
import pytest

from eva_idm.data.robotwin import EpisodeError, ScanConfig, decode_frames, episode_files, inspect_episode
from eva_idm.embodiment import load_embodiment
from eva_planner.node_config import PlannerNodeConfig, build_world_model
from eva_planner.oracle import OracleWorldModel
from eva_planner.world_model import PlanningCancelled, SamplerConfig
from eva_sim.synth import SynthConfig, synthesize

JOINTS = load_embodiment("aloha_agilex").joint_names


@pytest.fixture(scope="module")
def episode_path(tmp_path_factory):
    root = synthesize(SynthConfig(out_dir=tmp_path_factory.mktemp("oracle"), episodes=1, frames=12, height=48,
                                  width=64, seed=3), progress=False)
    return root / "data" / "episode0.hdf5"


def test_oracle_plan_is_the_episode_video_at_its_own_rate(episode_path):
    oracle = OracleWorldModel(episode_path, JOINTS)
    record = inspect_episode(episode_files(episode_path), ScanConfig())
    steps = []
    result = oracle.generate(np.zeros((48, 64, 3), np.uint8), "move", SamplerConfig(num_frames=9, height=48, width=64,
                                                                                     steps=1, seed=5),
                             on_step=lambda done, total: steps.append((done, total)))
    np.testing.assert_array_equal(result.frames, decode_frames(record)[:9])
    assert result.fps == pytest.approx(1 / 0.06)
    assert result.seed == 5 and steps == [(1, 1)]
    assert oracle.model_id == f"oracle:{record.episode_id}"
    np.testing.assert_array_equal(oracle.first_pose, record.actions[0])


def test_oracle_refuses_more_frames_than_the_episode_has_and_honours_cancellation(episode_path):
    oracle = OracleWorldModel(episode_path, JOINTS)
    image = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="num_frames: the oracle episode .* has 12 frames, fewer than the 13"):
        oracle.generate(image, "move", SamplerConfig(num_frames=13, height=48, width=64, steps=1))
    with pytest.raises(PlanningCancelled):
        oracle.generate(image, "move", SamplerConfig(num_frames=9, height=48, width=64, steps=1),
                        should_stop=lambda: True)


def test_planner_config_builds_the_oracle_and_names_a_missing_episode(episode_path, tmp_path):
    config = PlannerNodeConfig(model=f"oracle:{episode_path}", device="cpu", num_frames=9, height=48, width=64)
    assert isinstance(build_world_model(config), OracleWorldModel)
    with pytest.raises(ValueError, match="'oracle:' needs an episode file"):
        PlannerNodeConfig(model="oracle:", device="cpu")
    missing = tmp_path / "task" / "cfg" / "data" / "episode0.hdf5"
    with pytest.raises(EpisodeError, match="episode0.hdf5"):
        build_world_model(PlannerNodeConfig(model=f"oracle:{missing}", device="cpu"))
