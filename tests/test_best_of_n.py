"""Best-of-N planning on the tiny world model and a tiny random IDM: seeds, selection, hashes, cancellation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from eva_idm.embodiment import load_embodiment
from eva_idm.frames import encode_frames, frames_sha256
from eva_idm.idm import IDMConfig, ResNetPlusIDM
from eva_idm.reward import RewardBreakdown
from eva_planner.best_of_n import CandidateScore, PlanScorer, best_of_n, select_best
from eva_planner.tiny import TINY_SAMPLER_CONFIG, build_tiny_world_model
from eva_planner.world_model import PlanningCancelled

# Another long CPU job shares this 2-core machine; one thread keeps the suite predictable.
torch.set_num_threads(1)

INSTRUCTION = "pick up the red block"
TINY_IDM = IDMConfig(backbone_depth=18, output_stride=16, input_size=(32, 48))
CONFIG = dataclasses.replace(TINY_SAMPLER_CONFIG, seed=11)


@pytest.fixture(scope="module")
def world_model():
    return build_tiny_world_model(seed=0)


@pytest.fixture(scope="module")
def embodiment():
    return load_embodiment("aloha_agilex")


@pytest.fixture(scope="module")
def scorer(embodiment) -> PlanScorer:
    torch.manual_seed(0)
    return PlanScorer(ResNetPlusIDM(TINY_IDM).eval(), embodiment)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pose(embodiment) -> np.ndarray:
    return np.zeros(embodiment.num_joints)


@pytest.fixture(scope="module")
def three(world_model, image, scorer, pose):
    return best_of_n(world_model, image, INSTRUCTION, CONFIG, 3, scorer, pose)


def candidate(reward: float, executable: bool, seed: int = 0) -> CandidateScore:
    breakdown = RewardBreakdown(reward, 0.0, 0.0, 0.0, 0.0, 0.0, True, "")
    verdict = "ACCEPTED" if executable else "LOW_REWARD"
    return CandidateScore(seed, reward, breakdown, verdict, executable, verdict.lower(), "0" * 64, 0.0)


# --- selection (a pure function) -------------------------------------------------------------------


def test_an_executable_candidate_beats_a_higher_reward_the_gate_rejects():
    candidates = [candidate(9.5, False), candidate(6.5, True), candidate(7.5, True), candidate(8.0, False)]
    assert select_best(candidates) == 2


def test_without_an_executable_candidate_the_highest_reward_wins():
    assert select_best([candidate(3.0, False), candidate(5.0, False), candidate(4.0, False)]) == 1


def test_ties_go_to_the_first_candidate():
    assert select_best([candidate(7.0, True), candidate(7.0, True)]) == 0


def test_selecting_from_no_candidates_is_an_error():
    with pytest.raises(ValueError, match="candidates"):
        select_best([])


# --- sampling and scoring --------------------------------------------------------------------------


def test_n_candidates_with_distinct_seeds_from_the_base_seed(three):
    assert [score.seed for score in three.candidates] == [11, 12, 13]
    assert len({score.frames_sha256 for score in three.candidates}) == 3, "other seeds, other plans"
    for score in three.candidates:
        assert 0.0 <= score.reward <= 10.0
        assert score.reward == score.breakdown.reward
        assert score.executable == (score.verdict == "ACCEPTED")
        assert score.reason
        assert score.decode_seconds > 0.0


def test_the_best_is_the_selected_candidate_and_its_plan(three):
    assert three.best_index == select_best(three.candidates)
    assert three.best_score is three.candidates[three.best_index]
    assert three.best.seed == three.best_score.seed
    assert three.executable == three.best_score.executable
    assert three.best.frames.shape == (CONFIG.num_frames, CONFIG.height, CONFIG.width, 3)


def test_the_hash_is_the_one_a_visual_plan_of_the_best_frames_carries(three):
    assert three.best_score.frames_sha256 == frames_sha256(encode_frames(three.best.frames, "png"))


def test_n_equal_one_is_a_plain_generate_with_the_same_seed(world_model, image, scorer, pose):
    single = best_of_n(world_model, image, INSTRUCTION, CONFIG, 1, scorer, pose)
    plain = world_model.generate(image, INSTRUCTION, CONFIG)
    assert single.best_index == 0 and len(single.candidates) == 1
    assert torch.equal(single.best.latents, plain.latents)
    assert np.array_equal(single.best.frames, plain.frames)
    rescored = scorer.score(plain.frames, plain.fps, pose)
    assert single.candidates[0] == dataclasses.replace(
        rescored, seed=CONFIG.seed, decode_seconds=single.candidates[0].decode_seconds
    )


def test_progress_and_cancellation_span_all_candidates(world_model, image, scorer, pose):
    progress: list[tuple[int, int]] = []
    with pytest.raises(PlanningCancelled) as cancelled:
        best_of_n(
            world_model, image, INSTRUCTION, CONFIG, 3, scorer, pose,
            should_stop=lambda: len(progress) == 6,
            on_step=lambda done, total: progress.append((done, total)),
        )  # fmt: skip
    assert progress == [(step, 12) for step in range(1, 7)]
    assert (cancelled.value.completed_steps, cancelled.value.steps) == (6, 12)


def test_batched_candidates_are_the_plans_of_their_seeds(world_model, image, scorer, pose, three):
    batched = best_of_n(world_model, image, INSTRUCTION, dataclasses.replace(CONFIG, candidate_batch=2), 3, scorer,
                        pose)  # a batch of two, then one
    assert [score.seed for score in batched.candidates] == [11, 12, 13]
    for together, alone in zip(batched.candidates, three.candidates, strict=True):
        assert together.reward == pytest.approx(alone.reward, abs=1e-3)
        assert together.verdict == alone.verdict
    assert batched.best_index == three.best_index and batched.best.seed == three.best.seed
    torch.testing.assert_close(batched.best.latents, three.best.latents, rtol=1e-4, atol=1e-4)


def test_progress_and_cancellation_count_every_candidate_of_a_batch(world_model, image, scorer, pose):
    progress: list[tuple[int, int]] = []
    with pytest.raises(PlanningCancelled) as cancelled:
        best_of_n(
            world_model, image, INSTRUCTION, dataclasses.replace(CONFIG, candidate_batch=2), 3, scorer, pose,
            should_stop=lambda: len(progress) == 5,
            on_step=lambda done, total: progress.append((done, total)),
        )  # fmt: skip
    assert progress == [(2, 12), (4, 12), (6, 12), (8, 12), (9, 12)]  # two candidates per step, then one
    assert (cancelled.value.completed_steps, cancelled.value.steps) == (9, 12)


def test_the_scorer_reports_a_missing_pose_as_a_verdict(scorer, three):
    score = scorer.score(three.best.frames, three.best.fps, None)
    assert (score.verdict, score.executable, score.seed) == ("NO_JOINT_STATE", False, None)
    assert score.reward == three.best_score.reward


def test_raw_frames_hash_like_raw_visual_plans(scorer, embodiment, three):
    raw = PlanScorer(scorer.idm, embodiment, frame_format="rgb8").score(three.best.frames, three.best.fps, None)
    assert raw.frames_sha256 == frames_sha256(encode_frames(three.best.frames, "rgb8"))
    assert raw.reward == three.best_score.reward, "both formats are lossless"


def test_bad_arguments_are_named(world_model, image, scorer, embodiment, pose):
    with pytest.raises(ValueError, match=r"n: .*0"):
        best_of_n(world_model, image, INSTRUCTION, CONFIG, 0, scorer, pose)
    with pytest.raises(ValueError, match=r"frame_format.*'jpeg'"):
        PlanScorer(scorer.idm, embodiment, frame_format="jpeg")
    other = ResNetPlusIDM(dataclasses.replace(TINY_IDM, embodiment="other_arm"))
    with pytest.raises(ValueError, match=r"'other_arm'.*'aloha_agilex'"):
        PlanScorer(other, embodiment)
