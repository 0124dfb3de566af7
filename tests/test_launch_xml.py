"""The launch files and eva_sim.launch_xml, the strict reader that turns them into ros2 launch's command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from eva_sim.launch_xml import InlineParameter, LaunchFileError, read_launch_file, start_nodes
from eva_sim.processes import ExecutableNotFoundError, find_executable

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
LAUNCH = ROOT / "launch"
PACKAGES = {"sim_robot": "eva_sim", "controller_bridge": "eva_idm", "idm_node": "eva_idm",
            "planner_node": "eva_planner", "lifecycle_manager": "eva_idm"}
CHECKPOINT = "/data/eva/idm_aloha_agilex"


def expected_arguments(label: str, launch_file: str) -> list[str]:
    """The arguments ros2 launch gives ``label`` from ``launch_file`` with config_dir and idm_checkpoint set."""
    sim = launch_file == "sim"
    files = {"planner_node": "planner_tiny.yaml" if sim else "planner.yaml",
             "idm_node": "idm_node_tiny.yaml" if sim else "idm_node.yaml"}
    arguments = ["--ros-args", "--log-level", "info", "--ros-args", "-r", f"__node:={label}",
                 "--params-file", str(CONFIG / files.get(label, f"{label}.yaml"))]
    if label in ("sim_robot", "controller_bridge"):
        arguments += ["-p", f"controllers_file:={CONFIG / 'aloha_controllers.yaml'}"]
    if label == "idm_node" and launch_file != "robot":
        arguments += ["-p", f"checkpoint:={CHECKPOINT}"]
    if launch_file != "robot" and label != "sim_robot":  # sim_robot owns /clock
        arguments += ["-p", "use_sim_time:=true"]
    return arguments


@pytest.mark.parametrize(("launch_file", "labels", "arguments"), [
    ("robot", ["controller_bridge", "idm_node", "planner_node", "lifecycle_manager"], {}),
    ("sim", ["sim_robot", "controller_bridge", "idm_node", "planner_node", "lifecycle_manager"],
     {"idm_checkpoint": CHECKPOINT}),
    ("replay", ["controller_bridge", "idm_node", "planner_node", "lifecycle_manager"], {"idm_checkpoint": CHECKPOINT}),
])
def test_each_launch_file_runs_what_ros2_launch_would(launch_file, labels, arguments):
    description = read_launch_file(LAUNCH / f"{launch_file}.launch.xml", {"config_dir": str(CONFIG), **arguments})
    assert [spec.label for spec in description.nodes] == labels
    for spec in description.nodes:
        assert (spec.package, spec.executable, spec.output) == (PACKAGES[spec.label], spec.label, "screen")
        assert spec.arguments() == expected_arguments(spec.label, launch_file), spec.label
        assert spec.command() == [str(find_executable(spec.package, spec.label)), *spec.arguments()]
    if launch_file != "robot":
        assert description.node("planner_node").inline_parameters["use_sim_time"] is True
        with pytest.raises(LaunchFileError, match="launch argument 'idm_checkpoint' has no default and was not given"):
            read_launch_file(LAUNCH / f"{launch_file}.launch.xml", {"config_dir": str(CONFIG)})


def test_launch_arguments_choose_the_files_and_the_log_level(tmp_path):
    planner_file = tmp_path / "my_planner.yaml"
    planner_file.write_text("planner_node:\n  ros__parameters:\n    model: tiny\n")
    description = read_launch_file(LAUNCH / "sim.launch.xml", {
        "config_dir": str(CONFIG), "planner_config": str(planner_file), "idm_checkpoint": CHECKPOINT,
        "use_sim_time": "false", "log_level": "debug"})
    planner = description.node("planner_node")
    assert planner.parameter_files == (planner_file,)
    assert planner.arguments()[:4] == ["--ros-args", "--log-level", "debug", "--ros-args"]
    assert planner.arguments()[-2:] == ["-p", "use_sim_time:=false"]
    assert description.values["idm_config"] == f"{CONFIG}/idm_node_tiny.yaml"  # a default built from another arg


def test_the_config_directory_defaults_to_the_installed_share(tmp_path):
    from ament_index_python.packages import get_package_share_directory

    launch = write(tmp_path, '<arg name="config_dir" default="$(find-pkg-share eva_idm)/config"/>')
    assert read_launch_file(launch).values["config_dir"] == f"{get_package_share_directory('eva_idm')}/config"


def write(tmp_path: Path, body: str, name: str = "test.launch.xml") -> Path:
    path = tmp_path / name
    path.write_text(f'<?xml version="1.0"?>\n<launch>\n{body}\n</launch>\n')
    return path


PARAMS = CONFIG / "planner_tiny.yaml"
NODE = '<node pkg="eva_planner" exec="planner_node" name="planner"{attributes}>{children}</node>'


def node(attributes: str = "", children: str = "") -> str:
    return NODE.format(attributes=attributes, children=children)


def test_namespace_inline_parameters_and_remaps_go_where_launch_ros_puts_them(tmp_path):
    launch = write(tmp_path, node(' namespace="robot"', f"""
  <param name="steps" value="2"/>
  <param from="{PARAMS}"/>
  <param name="fps" value="8.0"/>
  <remap from="head_camera/image_raw" to="/camera/color/image_raw"/>"""))
    spec = read_launch_file(launch).node("planner")
    assert spec.arguments() == ["--ros-args", "-r", "__node:=planner", "-r", "__ns:=/robot", "-p", "steps:=2",
                                "--params-file", str(PARAMS), "-p", "fps:=8.0",
                                "-r", "head_camera/image_raw:=/camera/color/image_raw"]
    assert spec.output == "log"  # launch's default


@pytest.mark.parametrize(("text", "value", "rule"), [
    ("true", True, "true"), ("False", False, "false"), ("yes", True, "true"),  # YAML 1.1, as launch_ros reads it
    ("3", 3, "3"), ("-7", -7, "-7"), ("2.5", 2.5, "2.5"), ("1.0e-3", 0.001, "0.001"),
    ("tiny", "tiny", "tiny"), ("'3'", "3", "'3'"), ("1e-3", "1e-3", "1e-3"), ("", "", "''"),
    ("/opt/eva/model dir", "/opt/eva/model dir", "/opt/eva/model dir"),
])
def test_inline_values_are_typed_as_launch_ros_types_them(tmp_path, text, value, rule):
    launch = write(tmp_path, node(children=f'<param name="x" value="{text}"/>'))
    (parameter,) = read_launch_file(launch).node("planner").parameters
    assert parameter == InlineParameter("x", value) and type(parameter.value) is type(value)
    assert parameter.rule() == f"x:={rule}"


def test_a_substituted_value_is_typed_after_substitution_and_ros_args_keep_it_whole(tmp_path):
    launch = write(tmp_path, '<arg name="flag" default="true"/>\n<arg name="level" default="warn"/>\n'
                   + node(' ros_args="--log-level $(var level) --enable-rosout-logs"',
                          '<param name="use_sim_time" value="$(var flag)"/>'))
    spec = read_launch_file(launch, {"level": "planner:=debug"}).node("planner")
    assert spec.inline_parameters == {"use_sim_time": True}
    assert spec.ros_arguments == ("--log-level", "planner:=debug", "--enable-rosout-logs")


@pytest.mark.parametrize(("body", "message"), [
    ('<group><node pkg="a" exec="b"/></group>', "tag <group> inside <launch> is not understood"),
    (node(children='<env name="A" value="1"/>'), "tag <env> inside <node> is not understood"),
    (node(' respawn="true"'), "<node> attribute 'respawn' is not understood"),
    ('<arg name="a" default="1" choices="1"/>', "<arg> attribute 'choices' is not understood"),
    (node(children='<param name="a" value="1" type="str"/>'), "<param> attribute 'type' is not understood"),
    (node(children='<remap from="a" to="b" if="true"/>'), "<remap> attribute 'if' is not understood"),
    ('<let name="a" value="1"/>', "tag <let> inside <launch> is not understood"),
    (node(children=f'<param from="{PARAMS}" name="a"/>'), "<param from> takes no other attribute"),
    (node(children='<param name="a"/>'), "<param> needs either 'from' or both 'name' and 'value'"),
    (node(children='<param name="a" value="[1, 2]"/>'), "<param> value '[1, 2]' is not understood"),
    (node(children='<param name="a" value="null"/>'), "<param> value 'null' is not understood"),
    ('<node pkg="eva_planner"/>', "<node> needs the attribute 'exec'"),
    ('<arg default="1"/>', "<arg> needs the attribute 'name'"),
    (node(' output="own_log"'), "<node> output 'own_log' is not one of"),
    ('<node pkg="eva_planner" exec="planner_node" name="planner-node"/>', "name 'planner-node' is not a valid"),
    (node() + node(), "node name 'planner' is used more than once"),
    ('<arg name="a" default="1"/><arg name="a" default="2"/>', "<arg> 'a' is declared twice"),
    (node(' ros_args="--log-level \'debug\'"'), "ros_args: quotes and backslashes are not understood"),
    ('planner_node', "text 'planner_node' inside <launch> is not understood"),
    ('<node pkg="a" exec="b">', "not well-formed XML: mismatched tag"),
    ('<?robot fast?>', "processing instruction <?robot?> is not understood"),
])
def test_anything_not_understood_fails_naming_it_and_its_line(tmp_path, body, message):
    launch = write(tmp_path, body)
    with pytest.raises(LaunchFileError, match=rf"^{launch}:\d+: .*{escape(message)}") as failure:
        read_launch_file(launch)
    line = int(str(failure.value).split(":")[1])
    assert line in (3, 4) if "mismatched" in message else line == 3  # every defect above sits on line 3


@pytest.mark.parametrize(("text", "message"), [
    ("$(env HOME)", "substitution '$(env HOME)' is not understood"),
    ("$(eval 1 + 1)", "substitution '$(eval 1 + 1)' is not understood"),
    ("$(var $(var a))", "substitution '$(var $(var a)' is not understood"),
    ("$(var", "substitution '$(var' is not understood"),
    ("$(var b)", "$(var b) names no <arg> declared above"),
    ("$(find-pkg-share no_such_package)", "$(find-pkg-share no_such_package): package 'no_such_package' is not in"),
])
def test_a_substitution_not_understood_fails_naming_it(tmp_path, text, message):
    launch = write(tmp_path, f'<arg name="a" default="x"/>\n<node pkg="eva_planner" exec="planner_node" '
                             f'name="{text}"/>')
    with pytest.raises(LaunchFileError, match=rf"^{launch}:4: <node> name: {escape(message)}"):
        read_launch_file(launch)


def test_arguments_must_be_declared_and_required_ones_given(tmp_path):
    launch = write(tmp_path, '<arg name="config_dir"/>\n<arg name="rate" default="$(env RATE)"/>')
    with pytest.raises(LaunchFileError, match=rf"^{launch}:3: launch argument 'config_dir' has no default and was not"):
        read_launch_file(launch)
    with pytest.raises(LaunchFileError, match=r"substitution '\$\(env RATE\)' is not understood"):
        read_launch_file(launch, {"config_dir": "/x", "rate": "2"})  # a default is checked even when overridden
    launch = write(tmp_path, '<arg name="config_dir"/>\n<arg name="other" default="$(find-pkg-share nope)"/>')
    assert read_launch_file(launch, {"config_dir": "/x", "other": "y"}).values == {"config_dir": "/x", "other": "y"}
    with pytest.raises(LaunchFileError, match=rf"^{launch}: unknown launch argument\(s\) \['confg_dir'\]; it declares"):
        read_launch_file(launch, {"config_dir": "/x", "confg_dir": "/y"})


def test_a_parameter_file_that_does_not_exist_fails_naming_it(tmp_path):
    launch = write(tmp_path, node(children='\n  <param from="$(find-pkg-share eva_idm)/config/missing.yaml"/>'))
    with pytest.raises(LaunchFileError, match=rf"^{launch}:4: <param from> parameter file .*/share/eva_idm/config/"
                                              "missing.yaml does not exist"):
        read_launch_file(launch)
    with pytest.raises(LaunchFileError, match="config_dir/controller_bridge.yaml does not exist"):
        read_launch_file(LAUNCH / "robot.launch.xml", {"config_dir": "config_dir"})


def test_a_launch_file_is_a_launch_element(tmp_path):
    path = tmp_path / "wrong.launch.xml"
    path.write_text('<launchfile>\n  <arg name="a"/>\n</launchfile>\n')
    with pytest.raises(LaunchFileError, match=rf"^{path}:1: tag <launchfile> as the root element \(expected <launch>"):
        read_launch_file(path)
    path.write_text('<launch version="0.1"/>\n')
    with pytest.raises(LaunchFileError, match=r":1: <launch> attribute 'version' is not understood \(understood: none"):
        read_launch_file(path)


def test_no_node_starts_unless_every_executable_is_found(tmp_path):
    launch = write(tmp_path, node() + '\n<node pkg="eva_idm" exec="no_such_node"/>')
    description = read_launch_file(launch)
    with pytest.raises(ExecutableNotFoundError, match="executable 'no_such_node' of package 'eva_idm' not found"):
        start_nodes(description, tmp_path / "logs")
    assert not (tmp_path / "logs").exists()
    with pytest.raises(KeyError, match=r"starts no node 'planner_node'; it starts \['planner', 'no_such_node'\]"):
        start_nodes(description, tmp_path / "logs", only=["planner_node"])


def escape(text: str) -> str:
    import re

    return re.escape(text)
