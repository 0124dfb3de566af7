"""IDM checkpoints: this project's directory format, and the authors' released pickle.

A checkpoint is a directory with two files:

* ``config.json``: the :class:`~eva_idm.idm.model.IDMConfig` plus a ``"format"`` marker. It
  records the embodiment and its joint names, so that a robot cannot run an IDM trained for
  another arm.
* ``model.safetensors``: every parameter and buffer, including the de-normalisation buffers
  ``action_mean`` / ``action_std``, which must agree with the config.

The released ``IDM_singleview.pt`` is a torch pickle ``{"model_state_dict", "optimizer_state_dict",
"step"}``. Unpickling can run arbitrary code, so it is only ever opened with ``weights_only=True``
(:func:`load_weights_only`, shared by every pickle loader of the project), and
:func:`convert_released_checkpoint` turns it into a directory once. The state dict may also be the
file itself or sit under ``state_dict``, ``model`` or ``module`` (:func:`find_state_dict`). Its keys
are mapped as follows (see :func:`map_released_key`):

* leading ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (``torch.compile``) are removed;
* the normalisation wrapper's buffers ``train_mean`` / ``train_std`` become ``action_mean`` /
  ``action_std``;
* the wrapper's prefix for the inner network, ``model.`` (the authors' ``IDM`` class) or ``net.``,
  is removed, and a ``_orig_mod.`` after it (the inner network compiled). What remains
  (``backbone.*``, ``spatial_softmax.temperature``, ``mlp_head.*``) matches
  :class:`~eva_idm.idm.model.ResNetPlusIDM` by name, so a plain state dict of it loads as it is;
* ``backbone.fc.weight`` / ``backbone.fc.bias`` are dropped. They are torchvision's unused ImageNet
  classifier, which the released network kept but never called.

Any other difference is an error: missing keys, unexpected keys, wrong shapes, non-finite values.

A checkpoint may also hold ``calibration.json``, written by ``eva eval idm``
(``eva_training.eval_idm``) from the IDM's measured first-frame error: ``joint_names`` and the
per-joint ``max_start_offset`` the gate may remove rather than reject (plus statistics that are
only reported). :func:`read_calibration` reads it; the IDM node uses it unless a parameter says
otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from eva_idm.idm.model import IDMConfig, ResNetPlusIDM

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CALIBRATION_FILE = "calibration.json"
CHECKPOINT_FORMAT = "eva_idm.resnet_plus.v1"
RELEASED_BUFFER_NAMES = {"train_mean": "action_mean", "train_std": "action_std"}
RELEASED_WRAPPER_PREFIXES = ("model.", "net.")
RELEASED_UNUSED_KEYS = ("backbone.fc.weight", "backbone.fc.bias")
MAX_KEYS_IN_MESSAGE = 5
# Keys under which trainers nest the state dict, searched in this order: the authors' IDM script,
# PyTorch Lightning, and the usual {"model": ...} / {"module": ...} of hand-written loops.
STATE_DICT_CONTAINERS = ("model_state_dict", "state_dict", "model", "module")
# Prefixes of wrappers that hold one module and add no parameters: torch.compile's OptimizedModule
# and (Distributed)DataParallel. They can nest, in either order.
TRANSPARENT_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# How a file torch.save wrote begins: a zip archive (PyTorch >= 1.6), or the legacy format, a
# protocol-2 pickle of torch's magic number (PROTO 2, LONG1 of 10 bytes, the number little-endian).
TORCH_ZIP_HEAD = b"PK\x03\x04"
TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + 0x1950A86A20F9469CFC6C.to_bytes(10, "little")
PICKLE_HEAD = b"\x80"  # the PROTO opcode every pickle of protocol 2 or later starts with
HEAD_BYTES_SHOWN = 16
# Sentences of torch's weights-only error that are advice, not the reason (among them "re-running
# with weights_only=False will likely succeed", wrong for a file from elsewhere).
TORCH_ADVICE_MARKERS = ("weights_only", "Weights only load failed", "safe_globals", "trusted source",
                        "torch.load", "file an issue", "still be loaded")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and, where it applies, the key."""


def save_checkpoint(model: ResNetPlusIDM, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a checkpoint directory (created if needed) and return its path.

    Each file is written under a temporary name and then renamed. An interrupted save therefore
    leaves the previous file or no file, never a truncated one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    _write_atomically(directory / WEIGHTS_FILE, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    config = {"format": CHECKPOINT_FORMAT, **model.config.to_dict()}
    _write_atomically(directory / CONFIG_FILE, lambda path: path.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def read_checkpoint_config(directory: str | os.PathLike[str]) -> IDMConfig:
    """The :class:`IDMConfig` of a checkpoint directory, without loading any weights."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IDM checkpoint config not found")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    found_format = data.pop("format", None)
    if found_format != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: format is {found_format!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        return IDMConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from error


@dataclasses.dataclass(frozen=True)
class StartOffsetCalibration:
    """The start-offset tolerance ``eva eval idm`` measured for an IDM (its ``calibration.json``).

    Attributes:
        joint_names: joint order of ``max_start_offset``.
        max_start_offset: per joint, the largest decoded-first-pose error the gate treats as IDM
            error (removed) rather than a wrong plan (rejected) [rad; grippers 0..1].
    """

    joint_names: tuple[str, ...]
    max_start_offset: tuple[float, ...]


def read_calibration(
    directory: str | os.PathLike[str], expected_joint_names: Sequence[str] | None = None
) -> StartOffsetCalibration | None:
    """The checkpoint's ``calibration.json``, or None when it has none (an IDM not yet evaluated).

    Keys other than ``joint_names`` and ``max_start_offset`` are statistics and are not read.

    Raises:
        CheckpointError: the file is not valid JSON, a key is missing or malformed, a tolerance is
            not a finite number > 0, or its joint names differ from ``expected_joint_names``.
    """
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    names, tolerances = data.get("joint_names"), data.get("max_start_offset")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise CheckpointError(f"{path}: joint_names must be a non-empty list of names, got {names!r}")
    if not isinstance(tolerances, list) or len(tolerances) != len(names):
        raise CheckpointError(
            f"{path}: max_start_offset must be a list of {len(names)} numbers (one per joint), got {tolerances!r}"
        )
    for name, value in zip(names, tolerances, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
            raise CheckpointError(f"{path}: max_start_offset of {name} must be a finite number > 0, got {value!r}")
    if expected_joint_names is not None and tuple(expected_joint_names) != tuple(names):
        raise CheckpointError(
            f"{path}: joint_names {names} differ from the embodiment's {list(expected_joint_names)}"
        )
    return StartOffsetCalibration(tuple(names), tuple(float(value) for value in tolerances))


def check_embodiment(
    config: IDMConfig,
    expected_embodiment: str,
    expected_joint_names: Sequence[str] | None,
    source: str | os.PathLike[str],
) -> None:
    """Refuse an IDM trained for another robot: its commands would mean other joints."""
    if config.embodiment != expected_embodiment:
        raise CheckpointError(
            f"{source}: the IDM was trained for embodiment {config.embodiment!r}, expected {expected_embodiment!r}"
        )
    if expected_joint_names is not None and tuple(expected_joint_names) != config.joint_names:
        raise CheckpointError(
            f"{source}: the IDM's joint_names {list(config.joint_names)} differ from the expected "
            f"{list(expected_joint_names)}"
        )


def load_checkpoint(
    directory: str | os.PathLike[str],
    expected_embodiment: str,
    expected_joint_names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> ResNetPlusIDM:
    """Load a checkpoint directory for ``expected_embodiment``; the model comes back in eval mode.

    ``expected_joint_names`` (e.g. from the embodiment YAML) is compared too when given.
    """
    config = read_checkpoint_config(directory)
    weights_path = Path(directory) / WEIGHTS_FILE
    check_embodiment(config, expected_embodiment, expected_joint_names, Path(directory) / CONFIG_FILE)
    model = ResNetPlusIDM(config)
    _load_checked_state(model, _read_safetensors(weights_path), weights_path)
    for name in ("action_mean", "action_std"):
        if not torch.equal(getattr(model, name), torch.tensor(getattr(config, name), dtype=torch.float32)):
            raise CheckpointError(f"{weights_path}: buffer {name!r} differs from {name} in {CONFIG_FILE}")
    return model.to(device).eval()


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IDM weights file not found")
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from error


def _load_checked_state(model: ResNetPlusIDM, state: Mapping[str, Tensor], source: Path) -> None:
    """Strict ``load_state_dict`` whose errors name the file and the keys."""
    check_state_against_model(state, model.state_dict(), source)
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: key {key!r} contains non-finite values")
    model.load_state_dict(state)


def check_state_against_model(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    source: str | os.PathLike[str],
    describe_key: Callable[[str], str] | None = None,
) -> None:
    """Missing keys, unexpected keys and wrong shapes as one :class:`CheckpointError` naming ``source``.

    Shared by every loader of the project (IDM and world model), so a bad weights file reads the
    same way whatever it belongs to. ``describe_key`` adds another name for a key (e.g. the
    original checkpoint's) to the messages.
    """
    shown = (lambda key: f"{key!r} (original {describe_key(key)!r})") if describe_key else repr
    missing = [key for key in expected if key not in state]
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {listed_keys(missing, shown)}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key(s) {listed_keys(unexpected, shown)}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: key {shown(key)} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected[key].shape)}"
            )


def listed_keys(keys: Sequence[str], shown: Callable[[str], str] = repr) -> str:
    """The first few keys for an error message, with how many more there are."""
    listed = ", ".join(shown(key) for key in keys[:MAX_KEYS_IN_MESSAGE])
    return listed if len(keys) <= MAX_KEYS_IN_MESSAGE else f"{listed} and {len(keys) - MAX_KEYS_IN_MESSAGE} more"


def without_wrapper_prefixes(key: str) -> str:
    """``key`` without the leading prefixes of :data:`TRANSPARENT_WRAPPER_PREFIXES` (nested in any order)."""
    while key.startswith(TRANSPARENT_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def map_released_key(key: str) -> str | None:
    """This project's name for a key of the released state dict, or ``None`` for a key that is dropped."""
    key = without_wrapper_prefixes(key)
    if key in RELEASED_BUFFER_NAMES:
        return RELEASED_BUFFER_NAMES[key]
    for prefix in RELEASED_WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = without_wrapper_prefixes(key.removeprefix(prefix))
            break
    return None if key in RELEASED_UNUSED_KEYS else key


def load_weights_only(path: Path, *, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that say what is wrong with the file.

    Every pickle of the project is opened here, because torch's own messages mislead about a file
    from elsewhere: a refused pickle ends with the advice to re-run with ``weights_only=False``
    (which would run whatever the file asks), and an empty or text file is reported as a refused
    pickle. Here a refusal names what the file asked for (e.g. ``GLOBAL os.makedirs``) and never
    suggests turning the check off; an empty, text, foreign-pickle, legacy or truncated file is
    named as such. Nothing of a refused file runs: the weights-only unpickler stops at the request.

    Raises:
        CheckpointError: naming ``path`` and what is wrong with it.
    """
    with open(path, "rb") as file:
        head = file.read(max(HEAD_BYTES_SHOWN, len(TORCH_LEGACY_HEAD)))
    _check_torch_file_head(path, head, mmap)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:  # the weights-only unpickler refused something
        # "from None": the chained torch error would print the advice to turn the check off.
        raise CheckpointError(
            f"{path}: refused by weights-only loading, before anything in it ran: {weights_only_refusal(str(error))}. "
            "A checkpoint from elsewhere may hold only tensors and containers of them; ask its source for "
            "safetensors or a state dict saved with torch.save"
        ) from None
    except Exception as error:  # noqa: BLE001 (whatever a damaged file makes torch's reader raise: struct.error too)
        damage = _first_sentence(str(error), error)
        raise CheckpointError(f"{path}: damaged or truncated PyTorch file: {damage}") from error


def _check_torch_file_head(path: Path, head: bytes, mmap: bool) -> None:
    """Refuse, by what it is, a file whose first bytes are not those of a file torch.save wrote."""
    shown = head[:HEAD_BYTES_SHOWN]
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes); the download or copy did not complete")
    if head.startswith(TORCH_ZIP_HEAD):
        return
    if head.startswith(TORCH_LEGACY_HEAD[: len(head)]):
        if len(head) < len(TORCH_LEGACY_HEAD):
            raise CheckpointError(f"{path}: truncated PyTorch file: {len(head)} bytes")
        if mmap:
            raise CheckpointError(
                f"{path}: a torch.save file in the legacy format (the default before PyTorch 1.6); it is "
                "memory-mapped here, which needs the zip format: re-save it with torch.save's default"
            )
        return
    if head.startswith(PICKLE_HEAD):
        raise CheckpointError(f"{path}: a Python pickle, but not a file torch.save wrote: starts with {shown!r}")
    raise CheckpointError(f"{path}: not a PyTorch checkpoint: starts with {shown!r}")


def weights_only_refusal(message: str) -> str:
    """What torch's weights-only unpickler refused, from its error ``message``, without torch's advice."""
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked", message)
    if blocked:
        return (f"the file asks for the Python object {blocked[1]} (pickle GLOBAL {blocked[1]}), from module "
                f"{blocked[2]}, which weights-only loading never imports")
    unsupported = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    if unsupported:
        return (f"the file asks for the Python object {unsupported[1]} (pickle GLOBAL {unsupported[1]}), which is "
                "neither a tensor nor a container; rebuilding it could run code")
    detail = message.rsplit("WeightsUnpickler error:", 1)[-1]
    sentences = [sentence for line in detail.splitlines() for sentence in re.split(r"(?<=\.)\s+", line.strip())]
    reason = " ".join(s for s in sentences if s and not any(marker in s for marker in TORCH_ADVICE_MARKERS))
    return reason.rstrip(".") or "the file holds something other than tensors and containers of them"


def _first_sentence(message: str, error: Exception) -> str:
    """The first sentence of ``message`` (torch appends paragraphs of advice), else the error's type."""
    first = re.split(r"(?<=\.)\s", message.strip(), maxsplit=1)[0] if message.strip() else ""
    return first.rstrip(".") or type(error).__name__


def find_state_dict(loaded: object, source: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict in a loaded torch file: the file itself, or nested under :data:`STATE_DICT_CONTAINERS`.

    A dict holding one of those keys with a dict value is a container (a state dict's values are
    tensors, so it never is one); descend into the first such key, as often as it nests.

    Raises:
        CheckpointError: the file is no dict, holds no tensor, or a key is not a name of a tensor.
    """
    where = "the file"
    while isinstance(loaded, dict):
        container = next((key for key in STATE_DICT_CONTAINERS if isinstance(loaded.get(key), dict)), None)
        if container is None:
            break
        loaded, where = loaded[container], f"{where}[{container!r}]"
    expected = f"a state dict (tensors by name), the file itself or under one of {list(STATE_DICT_CONTAINERS)}"
    if not isinstance(loaded, dict) or not loaded:
        found = "an empty dict" if isinstance(loaded, dict) else f"of type {type(loaded).__name__}"
        raise CheckpointError(f"{source}: expected {expected}; {where} is {found}")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source}: expected {expected}; {where}[{key!r}] is of type {type(value).__name__}, not a tensor"
            )
    return loaded


def renamed_state(
    state: Mapping[str, Tensor], rename: Callable[[str], str | None], source: str | os.PathLike[str]
) -> dict[str, Tensor]:
    """``state`` with each key renamed (``None`` drops it); two keys with one new name are an error."""
    renamed: dict[str, Tensor] = {}
    original: dict[str, str] = {}
    for key, value in state.items():
        name = rename(key)
        if name is None:
            continue
        if name in renamed:
            raise CheckpointError(f"{source}: keys {original[name]!r} and {key!r} both map to {name!r}")
        renamed[name], original[name] = value, key
    return renamed


def read_released_state_dict(pt_path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The released pickle's state dict with keys mapped to this project's names (see module docstring).

    The file is opened weights-only (:func:`load_weights_only`): a file that needs more than
    tensors and containers is refused rather than trusted.
    """
    path = Path(pt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: released IDM checkpoint not found")
    return renamed_state(find_state_dict(load_weights_only(path), path), map_released_key, path)


def load_released_checkpoint(pt_path: str | os.PathLike[str], config: IDMConfig) -> ResNetPlusIDM:
    """Build the model described by ``config`` and fill it from the released pickle (eval mode).

    The file's normalisation buffers win over ``config.action_mean`` / ``action_std``, because the
    weights were trained with them. The returned model's ``config`` records the values actually used.
    """
    model = ResNetPlusIDM(config)
    _load_checked_state(model, read_released_state_dict(pt_path), Path(pt_path))
    model.config = dataclasses.replace(
        config, action_mean=tuple(model.action_mean.tolist()), action_std=tuple(model.action_std.tolist())
    )
    return model.eval()


def convert_released_checkpoint(
    pt_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], config: IDMConfig
) -> Path:
    """One-time conversion of the released pickle into a checkpoint directory; returns ``out_dir``."""
    return save_checkpoint(load_released_checkpoint(pt_path, config), out_dir)
