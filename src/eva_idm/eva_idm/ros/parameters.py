"""Declare a node's config dataclass as ROS parameters and read it back (see :mod:`eva_idm.node_parameters`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.parameter import Parameter

from eva_idm.node_parameters import config_from_parameters, parameter_specs

Config = TypeVar("Config")
ROS_TYPES = {
    "bool": ParameterType.PARAMETER_BOOL,
    "int": ParameterType.PARAMETER_INTEGER,
    "float": ParameterType.PARAMETER_DOUBLE,
    "str": ParameterType.PARAMETER_STRING,
    "str_list": ParameterType.PARAMETER_STRING_ARRAY,
    "float_list": ParameterType.PARAMETER_DOUBLE_ARRAY,
}
# An empty list says nothing of its type: such parameters are declared statically typed, unset until given.
_EMPTY_LIST_TYPES = {"str_list": Parameter.Type.STRING_ARRAY, "float_list": Parameter.Type.DOUBLE_ARRAY}


def declare_parameters(node: Node, config_type: type) -> list[str]:
    """Declare one typed, described parameter per field of ``config_type``; the type errors, as text.

    A value of the wrong type is reported, not raised, so that it fails configure like every other
    parameter problem instead of killing the process before the lifecycle manager can see why.
    """
    errors = []
    for spec in parameter_specs(config_type):
        default = spec.default
        if spec.kind in _EMPTY_LIST_TYPES:
            default = list(spec.default) or _EMPTY_LIST_TYPES[spec.kind]
        try:
            node.declare_parameter(spec.name, default, ParameterDescriptor(description=spec.description,
                                                                           type=ROS_TYPES[spec.kind]))
        except InvalidParameterTypeException as error:
            errors.append(str(error))
    return errors


def read_config(node: Node, config_type: type[Config], declaration_errors: Sequence[str], yaml_hint: str) -> Config:
    """The node's ``config_type``; ValueError names the unknown, mistyped or invalid parameter.

    rclpy drops parameters nobody declared without a word. The config refuses unknown keys, so it
    gets every key the user set (``--params-file``, ``-p``); rclpy keeps those in the node's
    ``_parameter_overrides`` (no public accessor), already narrowed to this node's name.
    """
    if declaration_errors:
        raise ValueError("; ".join(declaration_errors))
    overrides = node._parameter_overrides  # noqa: SLF001 (see the docstring)
    values = {name: override.value for name, override in overrides.items() if not node.has_parameter(name)}
    values.update({spec.name: node.get_parameter_or(spec.name).value for spec in parameter_specs(config_type)})
    return config_from_parameters(config_type, values, yaml_hint)
