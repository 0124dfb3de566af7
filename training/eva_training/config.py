"""Training configs: frozen dataclasses loaded from YAML and overridden on the command line.

One path for every job: defaults in the dataclass < values in ``--config FILE.yaml`` < flags
such as ``--batch-size 64``. Unknown keys are errors (a typo must not silently train with a
default), and the resolved config is written next to the run's outputs so it can be repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar_type(annotation: Any) -> Any:
    """The concrete type behind ``X | None`` and ``tuple[X, ...]`` annotations."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _scalar_type(next(arg for arg in typing.get_args(annotation) if arg is not type(None)))
    if origin is tuple:
        return _scalar_type(typing.get_args(annotation)[0])
    return annotation


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--field-name`` flag per dataclass field (absent unless given)."""
    parser.add_argument("--config", type=Path, help="YAML file with any of the fields below")
    for field in dataclasses.fields(cls):
        annotation = _field_types(cls)[field.name]
        scalar = _scalar_type(annotation)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f"config_{field.name}"}
        if typing.get_origin(annotation) is tuple:
            kwargs["nargs"] = "+"
        kwargs["type"] = _parse_bool if scalar is bool else scalar
        help_text = field.metadata.get("help", "")
        parser.add_argument(f"--{field.name.replace('_', '-')}", help=f"{help_text} (default: {field.default})",
                            **kwargs)


def _coerce(cls: type, name: str, value: Any) -> Any:
    annotation = _field_types(cls)[name]
    if typing.get_origin(annotation) is tuple and isinstance(value, list):
        return tuple(value)
    if _scalar_type(annotation) is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_config(cls: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """Build ``cls`` from defaults, then ``args.config`` (YAML), then the command-line flags."""
    names = {field.name for field in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config: {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of field names to values, got {type(loaded).__name__}")
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}; known keys: {sorted(names)}")
        values.update(loaded)
    for name in names:
        if hasattr(args, f"config_{name}"):
            values[name] = getattr(args, f"config_{name}")
    try:
        return cls(**{name: _coerce(cls, name, value) for name, value in values.items()})
    except TypeError as error:
        raise ValueError(f"{cls.__name__}: {error}") from error


def save_config(config: Any, path: Path) -> None:
    """Write the resolved config as YAML (tuples as lists) so the run can be repeated."""
    data = {
        key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(config).items()
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
