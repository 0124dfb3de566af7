"""Node settings as frozen dataclasses whose fields are ROS parameters, without ROS.

One config path for every node (DESIGN.md §2): ``config/<node>.yaml`` -> declared ROS parameters
-> :func:`config_from_parameters` -> a frozen dataclass -> the core. Each field of a node's config
dataclass is one parameter of the same name, declared with :func:`setting` so that its description
(with the unit) becomes the parameter's descriptor. rclpy silently ignores parameters nobody
declared, so :func:`config_from_parameters` is given every key the user set and refuses the ones
the dataclass does not know: a misspelt key fails configure instead of running with the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

Config = TypeVar("Config")

# Field type -> parameter kind; the ROS layer maps kinds to parameter types.
_KINDS = {bool: "bool", int: "int", float: "float", str: "str", tuple[str, ...]: "str_list",
          tuple[float, ...]: "float_list"}
_KIND_NAMES = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "str_list": "a list of strings",
    "float_list": "a list of numbers",
}
_LISTS = ("str_list", "float_list")


def setting(default: Any, description: str) -> Any:
    """A config field that is a ROS parameter: its default and its description (with the unit)."""
    return dataclasses.field(default=default, metadata={"description": description})


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """How a node declares one field: ``kind`` is bool, int, float, str, str_list or float_list."""

    name: str
    kind: str
    default: Any
    description: str


@functools.cache
def parameter_specs(config_type: type) -> tuple[ParameterSpec, ...]:
    """One :class:`ParameterSpec` per field of the dataclass ``config_type``, in field order."""
    hints = typing.get_type_hints(config_type)
    return tuple(
        ParameterSpec(field.name, _KINDS[hints[field.name]], field.default, field.metadata["description"])
        for field in dataclasses.fields(config_type)
    )


def check_types(config: object) -> None:
    """Raise ValueError naming the first field whose value has the wrong type; normalise the rest.

    Call it first in a config's ``__post_init__``. An int passes as a float (16 -> 16.0) and lists
    become tuples, the types the fields declare.
    """
    accepted = {"bool": (bool,), "int": (int,), "float": (float, int), "str": (str,),
                "str_list": (tuple, list), "float_list": (tuple, list)}
    for spec in parameter_specs(type(config)):
        name, kind, value = spec.name, spec.kind, getattr(config, spec.name)
        wrong_bool = isinstance(value, bool) and kind != "bool"
        if wrong_bool or not isinstance(value, accepted[kind]):
            raise ValueError(f"{name}: expected {_KIND_NAMES[kind]}, got {value!r}")
        if kind == "str_list" and not all(isinstance(item, str) and item for item in value):
            raise ValueError(f"{name}: expected non-empty strings, got {list(value)!r}")
        if kind == "float_list":
            if not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
                raise ValueError(f"{name}: expected numbers, got {list(value)!r}")
            value = tuple(float(item) for item in value)
        elif kind == "float":
            value = float(value)
        elif kind == "str_list":
            value = tuple(value)
        object.__setattr__(config, name, value)


def config_from_parameters(config_type: type[Config], values: Mapping[str, Any], yaml_hint: str) -> Config:
    """Build ``config_type`` from ``{parameter name: value}``; unknown names, wrong types, bad values raise.

    ``values`` must hold every key the user set (not only the declared ones), so that a misspelt
    key is reported instead of silently ignored. ``None`` for a list stands for an empty list
    (a YAML ``[]`` reaches rclpy as an unset parameter). ``yaml_hint`` names the file that lists
    the known parameters, for the error message.

    Raises:
        ValueError: naming the parameter and the value.
    """
    known = {spec.name for spec in parameter_specs(config_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [
            f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, known, 1))
            else repr(name)
            for name in unknown
        ]
        raise ValueError(f"unknown parameter(s) {', '.join(hints)}; see {yaml_hint} for the known ones")
    lists = {spec.name for spec in parameter_specs(config_type) if spec.kind in _LISTS}
    return config_type(**{name: () if name in lists and value is None else value for name, value in values.items()})
