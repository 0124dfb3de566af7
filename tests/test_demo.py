"""`make demo` end to end, as a newcomer runs it: the script, the sim stack over real DDS, its outputs.

This is also the oracle test of the closed loop with real motion: a synthetic episode's video is
served as the plan, decoded by the demo's trained IDM (trained on first use and cached, as on a
fresh clone), accepted by the gate with the robot's thresholds, re-checked by the bridge and
executed by the simulated arms, whose measured joints must follow the executed spline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
from rosbags.highlevel import AnyReader

ROOT = Path(__file__).resolve().parents[1]
# Stop-and-go over a few seconds of motion: the sim's first-order lag behind the spline is small.
MAX_TRACKING_ERROR = 0.1  # rad (grippers 0..1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """Run ``scripts/demo.py`` once (the first run on a machine also trains the demo's IDM)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout


@pytest.mark.ros
def test_the_demo_says_what_it_does_and_rejects_the_random_plan_with_the_gates_reason(demo):
    out, printed = demo
    for step in ("[1/3]", "[2/3]", "[3/3]", "reproduce it with:", "Summary"):
        assert step in printed
    rejected = json.loads((out / "report.json").read_text())["rejected_plan"]
    assert rejected["result"] == "REJECTED_BY_GATE", rejected
    reason = rejected["reason"]
    assert any(word in reason for word in ("min_reward", "limit", "start offset")), reason


@pytest.mark.ros
def test_the_oracle_plan_is_executed_on_the_simulated_arms_and_tracked(demo):
    out, _ = demo
    report = json.loads((out / "report.json").read_text())
    oracle = report["oracle_plan"]
    assert oracle["result"] == "SUCCEEDED", oracle
    assert oracle["model_id"].startswith("oracle") and oracle["reward"] >= 6.0
    assert 0.0 < report["tracking_error"]["max"] < MAX_TRACKING_ERROR, report["tracking_error"]
    assert report["bridge_max_tracking_error"] < MAX_TRACKING_ERROR


@pytest.mark.ros
def test_the_demo_leaves_a_video_a_joint_plot_and_a_recording_foxglove_opens(demo):
    out, _ = demo
    frames = iio.imread(out / "plan.gif")
    assert frames.ndim == 4 and len(frames) >= 2
    assert (out / "plan.mp4").stat().st_size > 0
    assert iio.imread(out / "joints.png").shape[-1] in (3, 4)
    with AnyReader([out / "run.mcap"]) as reader:  # opens from the schemas embedded in the MCAP alone
        topics = {connection.topic for connection in reader.connections}
        statuses = [reader.deserialize(data, connection.msgtype).state
                    for connection, _, data in reader.messages() if connection.topic == "/eva/execution_status"]
    assert {"/eva/plan", "/eva/executability", "/eva/gated_plan", "/joint_states",
            "/left_arm_controller/joint_trajectory", "/right_arm_controller/joint_trajectory"} <= topics
    assert statuses[-1] == 4  # SUCCEEDED
    assert {"tiny", "oracle"} <= {path.name for path in (out / "logs").iterdir()}
