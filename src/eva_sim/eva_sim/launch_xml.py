"""Read our XML launch files strictly and start the nodes they describe, without launch_ros.

``launch/*.launch.xml`` are written for ``ros2 launch`` on a robot (launch_ros's XML frontend).
Here launch_ros is not installed, so tests, demos and ``eva replay`` read the same files with
:func:`read_launch_file` and start the nodes with :func:`start_nodes`, using the command line
``ros2 launch`` would run. The reader understands exactly the subset our files use and refuses
everything else, naming the file, the line, and the tag, attribute or substitution: a file that
meant one thing to this reader and another to launch_ros would test one stack and run another.

Understood:

- ``<launch>`` holding ``<arg>`` and ``<node>`` elements (XML comments anywhere);
- ``<arg name="..." default="..." description="..."/>``; without ``default`` the caller must give it;
- ``<node pkg exec name namespace output ros_args>`` (``pkg`` and ``exec`` required) holding
  ``<param from="FILE"/>``, ``<param name="..." value="..."/>`` and ``<remap from="..." to="..."/>``;
- substitutions ``$(var NAME)`` (an arg declared above) and ``$(find-pkg-share PACKAGE)``, in every
  attribute but an arg's ``name`` and ``description``.

Inline parameter values are typed as launch_ros types them (YAML rules: ``true`` is a bool, ``3``
an int, ``3.0`` a float, anything else a string). One deliberate difference in the command line:
launch_ros writes each inline ``<param>`` to a temporary ``/**`` parameter file and passes it with
``--params-file`` at that position; this reader passes ``-p name:=value`` at the same position,
which rcl applies identically (to every node of the process; the later of two values wins).
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.parsers.expat
from collections.abc import Collection, Mapping
from pathlib import Path

import yaml

from eva_sim.processes import NodeProcess, find_executable, ros_environment

ParameterValue = bool | int | float | str

# tag -> (required attributes, optional attributes, child tags)
_SCHEMA: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "launch": (frozenset(), frozenset(), frozenset({"arg", "node"})),
    "arg": (frozenset({"name"}), frozenset({"default", "description"}), frozenset()),
    "node": (frozenset({"pkg", "exec"}), frozenset({"name", "namespace", "output", "ros_args"}),
             frozenset({"param", "remap"})),
    "param": (frozenset(), frozenset({"from", "name", "value"}), frozenset()),
    "remap": (frozenset({"from", "to"}), frozenset(), frozenset()),
}
_OUTPUTS = ("screen", "log", "both")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_ARG_NAME = re.compile(_IDENTIFIER)
_NODE_NAME = re.compile(_IDENTIFIER)
_NAMESPACE = re.compile(rf"/|/?{_IDENTIFIER}(/{_IDENTIFIER})*")
_PARAMETER_NAME = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*")
_SUBSTITUTION = re.compile(r"\$\((var|find-pkg-share) ([A-Za-z0-9_\-]+)\)")
_COMMAND_LINE_TOKEN = re.compile(r"(?:\$\([^)]*\)|\S)+")


class LaunchFileError(ValueError):
    """A launch file (or the arguments given to it) this reader does not understand; names file and line."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str):
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclasses.dataclass(frozen=True)
class InlineParameter:
    """A ``<param name value>``: the value typed as launch_ros types it."""

    name: str
    value: ParameterValue

    def rule(self) -> str:
        """``name:=value`` with the value written as YAML, so that rcl reads back the same type."""
        written = yaml.safe_dump(self.value).removesuffix("...\n").strip()
        return f"{self.name}:={written}"


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """One ``<node>`` with every substitution performed.

    ``parameters`` keeps the document order of parameter files (:class:`~pathlib.Path`) and inline
    parameters, because the later of two values for one parameter wins.
    """

    package: str
    executable: str
    name: str | None
    namespace: str | None
    output: str
    parameters: tuple[Path | InlineParameter, ...]
    remappings: tuple[tuple[str, str], ...]
    ros_arguments: tuple[str, ...]
    line: int

    @property
    def label(self) -> str:
        """The node's name, or its executable's when the launch file gives none."""
        return self.name or self.executable

    @property
    def parameter_files(self) -> tuple[Path, ...]:
        """The ``<param from>`` files, in order."""
        return tuple(item for item in self.parameters if isinstance(item, Path))

    @property
    def inline_parameters(self) -> dict[str, ParameterValue]:
        """The ``<param name value>`` values (the last one of a name wins)."""
        return {item.name: item.value for item in self.parameters if isinstance(item, InlineParameter)}

    def arguments(self) -> list[str]:
        """What ``ros2 launch`` puts after the executable, in its order (launch_ros ``Node``)."""
        arguments = ["--ros-args", *self.ros_arguments] if self.ros_arguments else []
        arguments.append("--ros-args")
        if self.name is not None:
            arguments += ["-r", f"__node:={self.name}"]
        if self.namespace is not None:
            arguments += ["-r", f"__ns:={self.namespace}"]
        for item in self.parameters:
            arguments += ["--params-file", str(item)] if isinstance(item, Path) else ["-p", item.rule()]
        for source, target in self.remappings:
            arguments += ["-r", f"{source}:={target}"]
        return arguments

    def command(self) -> list[str]:
        """The whole command line; the executable is found in the ament index."""
        return [str(find_executable(self.package, self.executable)), *self.arguments()]


@dataclasses.dataclass(frozen=True)
class LaunchArgument:
    """One ``<arg>``: ``default`` is the unevaluated text, None when the caller must give a value."""

    name: str
    default: str | None
    description: str
    line: int


@dataclasses.dataclass(frozen=True)
class LaunchDescription:
    """A launch file read with the caller's arguments: its args, their values and its nodes."""

    path: Path
    arguments: tuple[LaunchArgument, ...]
    values: Mapping[str, str]
    nodes: tuple[NodeSpec, ...]

    def node(self, label: str) -> NodeSpec:
        """The node labelled ``label`` (its name, else its executable); KeyError lists the others."""
        for spec in self.nodes:
            if spec.label == label:
                return spec
        raise KeyError(f"{self.path} starts no node {label!r}; it starts {[spec.label for spec in self.nodes]}")


@dataclasses.dataclass
class _Element:
    tag: str
    attributes: dict[str, str]
    line: int
    children: list[_Element]


def read_launch_file(path: str | os.PathLike[str], arguments: Mapping[str, str] | None = None) -> LaunchDescription:
    """Read ``path`` given ``arguments`` (``ros2 launch`` would take them as ``name:=value``).

    Raises:
        LaunchFileError: on anything this reader does not understand, a missing required or an
            undeclared argument, a parameter file that does not exist, or a package that is not found.
    """
    path = Path(path)
    root = _parse_xml(path)
    _check_schema(path, root)
    given, values, declared, nodes = dict(arguments or {}), {}, [], []
    names = {element.attributes["name"] for element in root.children if element.tag == "arg"}
    unknown = sorted(set(given) - names)
    if unknown:
        raise LaunchFileError(path, None, f"unknown launch argument(s) {unknown}; it declares {sorted(names)}")
    for element in root.children:
        if element.tag == "arg":
            declared.append(_declare(path, element, given, values))
        else:
            nodes.append(_node(path, element, values))
    labels = [spec.label for spec in nodes]
    for spec in nodes:
        if labels.count(spec.label) > 1:
            raise LaunchFileError(path, spec.line, f"node name {spec.label!r} is used more than once")
    return LaunchDescription(path, tuple(declared), values, tuple(nodes))


def start_nodes(description: LaunchDescription, log_dir: str | os.PathLike[str], domain_id: int | None = None,
                only: Collection[str] | None = None) -> list[NodeProcess]:
    """Start the described nodes (or those labelled in ``only``) in document order, as ``ros2 launch`` would.

    Each logs to ``<log_dir>/<label>.log`` and runs in :func:`~eva_sim.processes.ros_environment`.
    Every executable is found before the first process starts; if one cannot start, those already
    started are stopped. The caller stops the returned processes.
    """
    chosen = description.nodes if only is None else tuple(description.node(label) for label in only)
    commands = [(spec.label, spec.command()) for spec in chosen]
    environment, started = ros_environment(domain_id), []
    try:
        for label, command in commands:
            started.append(NodeProcess(command, Path(log_dir) / f"{label}.log", environment))
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise
    return started


def _parse_xml(path: Path) -> _Element:
    """The element tree with line numbers; text, processing instructions and bad XML are errors."""
    parser = xml.parsers.expat.ParserCreate()
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(tag: str, attributes: dict[str, str]) -> None:
        element = _Element(tag, attributes, parser.CurrentLineNumber, [])
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def text(data: str) -> None:
        if data.strip():
            raise LaunchFileError(path, parser.CurrentLineNumber, f"text {data.strip()!r} inside <{stack[-1].tag}> "
                                                                  "is not understood")

    def instruction(target: str, data: str) -> None:
        raise LaunchFileError(path, parser.CurrentLineNumber, f"processing instruction <?{target}?> is not understood")

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: stack.pop()
    parser.CharacterDataHandler = text
    parser.ProcessingInstructionHandler = instruction
    try:
        parser.Parse(path.read_bytes(), True)
    except xml.parsers.expat.ExpatError as error:
        message = xml.parsers.expat.ErrorString(error.code)
        raise LaunchFileError(path, error.lineno, f"not well-formed XML: {message}") from None
    return roots[0]


def _check_schema(path: Path, element: _Element, parent: str | None = None) -> None:
    if element.tag not in _SCHEMA or (parent is None) != (element.tag == "launch"):
        where = f"inside <{parent}>" if parent else "as the root element (expected <launch>)"
        raise LaunchFileError(path, element.line, f"tag <{element.tag}> {where} is not understood")
    required, optional, children = _SCHEMA[element.tag]
    for attribute in element.attributes:
        if attribute not in required | optional:
            known = ", ".join(sorted(required | optional)) or "none"
            raise LaunchFileError(path, element.line, f"<{element.tag}> attribute {attribute!r} is not understood "
                                                      f"(understood: {known})")
    missing = sorted(required - set(element.attributes))
    if missing:
        raise LaunchFileError(path, element.line, f"<{element.tag}> needs the attribute {missing[0]!r}")
    for child in element.children:
        if child.tag not in children:
            raise LaunchFileError(path, child.line, f"tag <{child.tag}> inside <{element.tag}> is not understood")
        _check_schema(path, child, element.tag)


def _declare(path: Path, element: _Element, given: Mapping[str, str], values: dict[str, str]) -> LaunchArgument:
    name, default = element.attributes["name"], element.attributes.get("default")
    if not _ARG_NAME.fullmatch(name):
        raise LaunchFileError(path, element.line, f"<arg> name {name!r} is not an identifier")
    if name in values:
        raise LaunchFileError(path, element.line, f"<arg> {name!r} is declared twice")
    if default is not None:  # checked even when the caller's value makes it unused
        default_value = _substitute(path, element, "default", values, evaluate=name not in given)
    if name in given:
        values[name] = given[name]
    elif default is not None:
        values[name] = default_value
    else:
        raise LaunchFileError(path, element.line, f"launch argument {name!r} has no default and was not given")
    return LaunchArgument(name, default, element.attributes.get("description", ""), element.line)


def _node(path: Path, element: _Element, values: Mapping[str, str]) -> NodeSpec:
    def attribute(name: str, pattern: re.Pattern[str] | None = None, of: _Element = element) -> str | None:
        if name not in of.attributes:
            return None
        value = _substitute(path, of, name, values)
        if pattern is not None and not pattern.fullmatch(value):
            raise LaunchFileError(path, of.line, f"<{of.tag}> {name} {value!r} is not a valid ROS {name}")
        return value

    namespace, output = attribute("namespace", _NAMESPACE), attribute("output") or "log"
    if output not in _OUTPUTS:
        raise LaunchFileError(path, element.line, f"<node> output {output!r} is not one of {list(_OUTPUTS)}")
    parameters: list[Path | InlineParameter] = []
    remappings = []
    for child in element.children:
        if child.tag == "remap":
            remappings.append((attribute("from", of=child), attribute("to", of=child)))
        elif "from" in child.attributes:
            if child.attributes.keys() != {"from"}:
                raise LaunchFileError(path, child.line, "<param from> takes no other attribute")
            parameters.append(Path(attribute("from", of=child)))
            if not parameters[-1].is_file():
                raise LaunchFileError(path, child.line, f"<param from> parameter file {parameters[-1]} does not exist")
        elif child.attributes.keys() == {"name", "value"}:
            parameters.append(InlineParameter(attribute("name", _PARAMETER_NAME, child),
                                              _typed(path, child, attribute("value", of=child))))
        else:
            raise LaunchFileError(path, child.line, "<param> needs either 'from' or both 'name' and 'value'")
    command_line = element.attributes.get("ros_args", "")
    if any(mark in command_line for mark in "'\"\\"):
        raise LaunchFileError(path, element.line, "<node> ros_args: quotes and backslashes are not understood")
    # Split at whitespace outside substitutions, as launch splits a command line: a value stays one argument.
    ros_arguments = tuple(_substitute(path, element, "ros_args", values, text=token)
                          for token in _COMMAND_LINE_TOKEN.findall(command_line))
    return NodeSpec(attribute("pkg"), attribute("exec"), attribute("name", _NODE_NAME),
                    None if namespace is None else "/" + namespace.lstrip("/"), output, tuple(parameters),
                    tuple(remappings), ros_arguments, element.line)


def _substitute(path: Path, element: _Element, attribute: str, values: Mapping[str, str], *, evaluate: bool = True,
                text: str | None = None) -> str:
    """``element``'s ``attribute`` (or ``text`` taken from it) with its substitutions performed.

    With ``evaluate`` false they are only checked (an arg default the caller's value replaces).
    """
    text = element.attributes[attribute] if text is None else text
    where = f"<{element.tag}> {attribute}"
    pieces, position = [], 0
    for start in (match.start() for match in re.finditer(r"\$\(", text)):  # a known one holds no "$("
        found = _SUBSTITUTION.match(text, start)
        if found is None:
            end = text.find(")", start)
            unknown = text[start:end + 1] if end >= 0 else text[start:]
            raise LaunchFileError(path, element.line, f"{where}: substitution {unknown!r} is not understood "
                                                      "(understood: $(var NAME), $(find-pkg-share PACKAGE))")
        kind, name = found.groups()
        if kind == "var" and name not in values:
            raise LaunchFileError(path, element.line, f"{where}: $(var {name}) names no <arg> declared above")
        pieces += [text[position:start], _evaluate(path, element, where, kind, name, values) if evaluate else ""]
        position = found.end()
    return "".join(pieces) + text[position:]


def _evaluate(path: Path, element: _Element, where: str, kind: str, name: str, values: Mapping[str, str]) -> str:
    if kind == "var":
        return values[name]
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory  # ROS tooling, on use

    try:
        return get_package_share_directory(name)
    except PackageNotFoundError:
        raise LaunchFileError(path, element.line, f"{where}: $(find-pkg-share {name}): package {name!r} is not in "
                                                  "AMENT_PREFIX_PATH") from None


def _typed(path: Path, element: _Element, text: str) -> ParameterValue:
    """``text`` typed by YAML rules, as launch_ros types an inline parameter; '' stays a string."""
    if not text:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, (bool, int, float, str)):
        return value
    raise LaunchFileError(path, element.line, f"<param> value {text!r} is not understood: only booleans, integers, "
                                              "numbers and strings are")
