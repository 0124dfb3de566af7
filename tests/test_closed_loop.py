"""The whole stack of launch/sim.launch.xml, started as the launch file says, over real DDS.

The IDM here is ``still_idm_checkpoint``: a real checkpoint whose decode is the robot's home pose,
so every plan becomes a still, executable motion and the test is about the plumbing between the
processes (launch file, lifecycle manager, planner, IDM node, bridge, simulated robot), not about
decoding. ``make demo`` runs the same loop with a trained IDM and real motion.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eva_sim.sim_config import HOME_POSE

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "sim.launch.xml"
MANAGED = ("controller_bridge", "idm_node", "planner_node")


@pytest.fixture
def stack(ros_domain, tmp_path):
    """Start sim.launch.xml with a still IDM (and a planner config of the test's choice); yield a client."""
    from idm_checkpoints import still_idm_checkpoint

    from eva_sim.ros.stack import StackClient, launched_stack

    checkpoint = still_idm_checkpoint(tmp_path / "still_idm", HOME_POSE)
    opened = []

    def start(**planner_overrides):
        planner = yaml.safe_load((ROOT / "config" / "planner_tiny.yaml").read_text())
        planner["planner_node"]["ros__parameters"].update(planner_overrides)
        planner_config = tmp_path / "planner.yaml"
        planner_config.write_text(yaml.safe_dump(planner))
        arguments = {"config_dir": str(ROOT / "config"), "planner_config": str(planner_config),
                     "idm_checkpoint": str(checkpoint)}
        launched = launched_stack(LAUNCH, arguments, tmp_path / "logs", ros_domain)
        processes = launched.__enter__()
        client = StackClient(ros_domain)
        opened.append((launched, client))
        client.wait_active(MANAGED, timeout=240)
        client.wait_for_joint_states()
        return client, {process.log_path.stem: process for process in processes}

    yield start
    for launched, client in opened:
        client.close()
        launched.__exit__(None, None, None)


@pytest.mark.ros
def test_an_instruction_is_planned_gated_and_executed_on_the_simulated_arms(stack):
    from eva_msgs.action import ExecuteInstruction
    from eva_msgs.msg import ExecutionStatus

    client, _ = stack()
    outcome = client.execute(timeout=180, instruction="hold still")

    assert outcome.succeeded, outcome.result.error_msg
    assert outcome.result.error_code == ExecuteInstruction.Result.NONE
    plan_id = outcome.result.plan_id
    assert client.recorded.report_for(plan_id).executable
    states = [status.state for status in client.recorded.statuses_for(plan_id)]
    assert states[0] == ExecutionStatus.ACCEPTED and states[-1] == ExecutionStatus.SUCCEEDED
    assert ExecutionStatus.EXECUTING in states
    sent = [(topic, message) for _, topic, message in client.recorded.commands if message.points]
    assert sorted(topic for topic, _ in sent) == ["left_arm_controller/joint_trajectory",
                                                  "right_arm_controller/joint_trajectory"]
    left, right = (message for _, message in sent)
    assert left.header.stamp == right.header.stamp and left.header.stamp.sec > 0  # one future start for both arms
    assert [list(message.points[0].positions) for message in (left, right)] == [list(HOME_POSE[:7]),
                                                                                  list(HOME_POSE[7:])]
    phases = [feedback.phase for feedback in outcome.feedback]
    assert phases.index(ExecuteInstruction.Feedback.PLANNING) < phases.index(ExecuteInstruction.Feedback.EXECUTING)


@pytest.mark.ros
def test_a_planner_killed_mid_plan_leaves_the_bridge_holding_with_no_new_command(stack):
    import signal

    from eva_msgs.action import ExecuteInstruction

    client, processes = stack(steps=1000)  # minutes of planning
    pending = client.send_goal(instruction="fold the towel")
    client.spin_until(lambda: any(feedback.phase == ExecuteInstruction.Feedback.PLANNING and feedback.progress > 0
                                  for feedback in pending.feedback), 120, "denoising to start")
    processes["planner_node"].process.send_signal(signal.SIGKILL)
    client.spin_until(lambda: client.lifecycle_state("controller_bridge") != "active", 60,
                      "the lifecycle manager to deactivate the bridge")
    client.spin_for(2.0)

    assert processes["controller_bridge"].poll() is None and processes["sim_robot"].poll() is None
    assert not [message for _, _, message in client.recorded.commands if message.points]
    assert "planner_node" in processes["lifecycle_manager"].log()
