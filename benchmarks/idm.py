"""Benchmark: train the IDM on synthetic aloha-agilex episodes on this CPU and measure it (`make bench-idm`).

Steps, each a real `eva` command or the same library calls:
  1. `eva data synth`: 300 training and 50 held-out episodes (MuJoCo, 96x128, 50 frames, 0.06 s);
  2. `eva train idm` within a wall-clock budget (30 min by default), steps sized from a probe run;
  3. `eva eval idm` on the held-out episodes: per-joint MAE, accuracy, artifact AUC, calibration;
  4. the gate on held-out ground-truth videos: decode, plan-to-motion against the true start pose;
  5. decode throughput (frames/s through `decode_video`) beside the raw forward pass on ready windows.
Results: benchmarks/results/idm.json and idm_decode.png. Goals from the issue: held-out MAE
<= 0.08 rad on arm joints and <= 0.1 on grippers, artifact AUC >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from eva_training.cli import main as eva

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "scratch" / "idm"
IMAGE = ["--frames", "50", "--height", "96", "--width", "128"]
MODEL = ["--backbone-depth", "18", "--output-stride", "16", "--input-size", "96", "128", "--batch-size", "32"]


def run_eva(arguments: list[str]) -> float:
    """Run one `eva` command in-process, print it, fail loudly; returns its wall time."""
    print(f"\n$ eva {shlex.join(arguments)}", flush=True)
    started = time.monotonic()
    code = eva(arguments)
    if code != 0:
        raise SystemExit(f"eva {arguments[0]} failed with exit code {code}")
    return time.monotonic() - started


def synthesize(episodes: int, seed: int, out: Path) -> float:
    """Synthetic episodes, reused when a previous run left exactly these."""
    if out.is_dir() and len(list(out.rglob("episode*.hdf5"))) == episodes:
        print(f"reusing {episodes} episodes in {out}", flush=True)
        return 0.0
    shutil.rmtree(out, ignore_errors=True)
    return run_eva(["data", "synth", "--out", str(out), "--episodes", str(episodes), "--seed", str(seed), *IMAGE])


def steps_for_budget(train_data: Path, minutes: float) -> int:
    """Optimiser steps that fit ``minutes``, from a 12-step probe run (its first 2 steps are warm-up)."""
    probe = WORK / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    run_eva(["train", "idm", "--data", str(train_data), "--output-dir", str(probe), "--max-steps", "12",
             "--eval-every", "1000", "--save-every", "1000", *MODEL])
    rows = (probe / "metrics.csv").read_text().splitlines()[1:]
    elapsed = [float(row.split(",")[-1]) for row in rows]
    seconds_per_step = (elapsed[-1] - elapsed[1]) / (len(elapsed) - 2)
    # Validation passes and checkpointing take roughly a tenth of the budget.
    return max(50, int(0.9 * minutes * 60.0 / seconds_per_step))


def gate_on_ground_truth(checkpoint: Path, heldout: Path) -> dict:
    """Share of held-out ground-truth videos whose decode the gate accepts, and why others fail."""
    from eva_idm.data import ScanConfig, load_episode, scan_episodes
    from eva_idm.embodiment import load_embodiment
    from eva_idm.idm import load_checkpoint
    from eva_idm.idm.checkpoint import read_calibration
    from eva_idm.motion import GateConfig, plan_to_motion
    from eva_idm.plan_gate import capped_calibration

    embodiment = load_embodiment("aloha_agilex")
    model = load_checkpoint(checkpoint, embodiment.name, embodiment.joint_names)
    calibration = read_calibration(checkpoint, embodiment.joint_names)
    tolerances, _ = capped_calibration(calibration, embodiment)  # what the robot's gate would use
    gate = GateConfig.from_embodiment(embodiment, max_start_offset=tolerances)
    verdicts: Counter[str] = Counter()
    rewards = []
    for record in scan_episodes(heldout, ScanConfig(joint_names=embodiment.joint_names)).episodes:
        episode = load_episode(record)
        decoded = model.decode_video(episode.frames, fps=episode.fps).numpy()
        result = plan_to_motion(decoded, episode.fps, episode.actions[0], embodiment, gate)
        verdicts[result.verdict.name] += 1
        rewards.append(result.reward.reward if result.reward is not None else 0.0)
    total = sum(verdicts.values())
    return {"episodes": total, "accepted_share": verdicts["ACCEPTED"] / total, "verdicts": dict(verdicts),
            "median_reward": float(np.median(rewards)), "gate": {"max_start_offset": list(gate.max_start_offset),
                                                                 "min_reward": gate.min_reward}}


def decode_throughput(checkpoint: Path, repeats: int = 3) -> dict:
    """Frames/s of a 49-frame plan through `decode_video` vs the bare forward pass on ready windows."""
    from eva_idm.idm import load_checkpoint, preprocess_frames, window_indices
    from eva_idm.idm.model import frame_offsets

    model = load_checkpoint(checkpoint, "aloha_agilex")
    video = np.random.default_rng(0).integers(0, 256, size=(49, 96, 128, 3), dtype=np.uint8)
    windows = preprocess_frames(video, model.config.input_size)[
        window_indices(49, frame_offsets(model.config.window_s, 16.0, model.config.num_frames))]
    decode, forward = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            model.decode_video(video, fps=16.0, batch_size=49)
            decode.append(time.perf_counter() - started)
            started = time.perf_counter()
            model(windows)
            forward.append(time.perf_counter() - started)
    decode_s, forward_s = statistics.median(decode[1:]), statistics.median(forward[1:])
    return {"frames": 49, "decode_frames_per_s": 49 / decode_s, "forward_frames_per_s": 49 / forward_s,
            "decode_over_forward_time": decode_s / forward_s, "torch_threads": torch.get_num_threads()}


def main() -> None:
    """Run the benchmark end to end and write its JSON and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-episodes", type=int, default=300)
    parser.add_argument("--heldout-episodes", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget")
    args = parser.parse_args()

    train_data, heldout, run = WORK / "train", WORK / "heldout", WORK / "run"
    timings = {"synth_train_s": synthesize(args.train_episodes, 1, train_data),
               "synth_heldout_s": synthesize(args.heldout_episodes, 100_000, heldout)}
    max_steps = steps_for_budget(train_data, args.minutes)
    shutil.rmtree(run, ignore_errors=True)
    train_command = ["train", "idm", "--data", str(train_data), "--output-dir", str(run), "--max-steps", str(max_steps),
                     "--max-minutes", str(args.minutes), "--eval-every", "250", "--save-every", "500", *MODEL]
    timings["train_s"] = run_eva(train_command)
    checkpoint, evaluation = run / "checkpoint", WORK / "eval"
    timings["eval_s"] = run_eva(["eval", "idm", "--checkpoint", str(checkpoint), "--data", str(heldout), "--split",
                                 "all", "--output-dir", str(evaluation), "--plot-episodes", "1",
                                 "--calibrate", "true"])
    report = json.loads((evaluation / "eval.json").read_text())
    steps_done = int((run / "metrics.csv").read_text().splitlines()[-1].split(",")[0])
    results = {
        "data": {"train_episodes": args.train_episodes, "heldout_episodes": args.heldout_episodes,
                 "frames_per_episode": 50, "image": "96x128",
                 "source": "MuJoCo aloha-agilex synthetic (eva data synth)"},
        "training": {"command": ("eva " + shlex.join(train_command)).replace(f"{ROOT}/", ""),
                     "steps_planned": max_steps, "steps_done": steps_done, "budget_minutes": args.minutes},
        "heldout_accuracy": report["accuracy"],
        "goals": {"mae_arm_joints_max": 0.08, "mae_grippers_max": 0.1, "artifact_auc_min": 0.95},
        "separation": report["separation"],
        "median_reward_ground_truth_actions": report["median_reward_ground_truth_actions"],
        "gate_on_heldout_ground_truth": gate_on_ground_truth(checkpoint, heldout),
        "calibration": report["calibration"],
        "decode_throughput": decode_throughput(checkpoint),
        "timings_s": timings, "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "idm.json").write_text(json.dumps(results, indent=1) + "\n")
    for png in evaluation.glob("decode_*.png"):
        shutil.copy(png, RESULTS / "idm_decode.png")
    accuracy, separation = report["accuracy"], report["separation"]
    print(f"\nheld-out MAE arm {accuracy['mae_arm_joints']:.4f} rad, grippers {accuracy['mae_grippers']:.4f}; "
          f"artifact AUC {separation['auc']:.3f}; gate accepts "
          f"{results['gate_on_heldout_ground_truth']['accepted_share']:.0%} of held-out ground truth")
    print(f"checkpoint kept in {checkpoint.relative_to(ROOT)}; results in benchmarks/results/idm.json")


if __name__ == "__main__":
    main()
