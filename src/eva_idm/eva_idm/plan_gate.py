"""The IDM node's core, without ROS: its settings, its model and gate, and the verdict on one plan.

``idm_node`` (``eva_idm.ros.idm_node``) is a thin shell around :class:`PlanGate`:

* :class:`IDMNodeConfig` is the node's parameters (``config/idm_node.yaml``) as a frozen,
  validated dataclass (see :mod:`eva_idm.node_parameters`).
* :meth:`PlanGate.load` reads the IDM checkpoint, the embodiment (the checkpoint's unless a
  parameter names one) and the gate's thresholds.
* :meth:`PlanGate.judge` turns one plan's decoded frames and the joint state at image time into a
  :class:`PlanJudgement`: cheap checks first (fps, frame count, joint state), then
  :meth:`~eva_idm.idm.ResNetPlusIDM.decode_video` in batches and
  :func:`~eva_idm.motion.plan_to_motion`, with the time each stage took.

**Where ``max_start_offset`` comes from** (first that applies): the ``max_start_offset`` parameter
when it is not empty; else the checkpoint's ``calibration.json``, which ``eva eval idm
--calibrate true`` writes from the IDM's measured first-frame error; else the embodiment YAML's
``gate.max_start_offset``. **Neither may loosen the gate**: the embodiment's value is the ceiling
of each joint. A calibrated tolerance above it is capped at it (a worse IDM measures a larger
error, and must not get a more permissive gate), and the capping is said in the log and in the
reason of a plan rejected on a capped joint. A parameter above it is refused at configure: an
operator's explicit value that the node silently lowered would mislead, and loosening the gate
is a change to the embodiment YAML, which reports identify (below). ``min_reward`` and
``time_scale`` come from the parameter when it is not -1, else from the embodiment.

**Which thresholds judged a plan**: the report's ``idm_model_id`` is
``<checkpoint>@<weights hash>+gate:<embodiment>@<thresholds hash>`` (:func:`checkpoint_id`,
:func:`gate_id`). The thresholds hash covers the whole embodiment (limits and gate defaults) and
the gate's effective thresholds after calibration and parameters, so it changes with anything
that can change a verdict or the trajectory sent, and with nothing else (not with the device,
batch size or threads; not with a calibration whose every value is capped, which judges like none).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from eva_idm.embodiment import Embodiment, load_embodiment
from eva_idm.frames import FrameError
from eva_idm.idm import ResNetPlusIDM, frame_offsets, load_checkpoint, read_checkpoint_config
from eva_idm.idm.checkpoint import WEIGHTS_FILE, StartOffsetCalibration, check_embodiment, read_calibration
from eva_idm.motion import GateConfig, MotionResult, Verdict, plan_to_motion
from eva_idm.node_parameters import check_types, setting
from eva_idm.reward import MIN_FRAMES

YAML_HINT = "config/idm_node.yaml"
# A gate parameter at this value takes the embodiment's default (see the module docstring).
EMBODIMENT_DEFAULT = -1.0
# Plan frame rates the node accepts [Hz]. World models and cameras run at a few to a few tens of
# frames per second; a VisualPlan.fps outside this range is a corrupt field, and would turn into a
# trajectory lasting years or with points closer than a time_from_start can express.
MIN_PLAN_FPS = 1.0
MAX_PLAN_FPS = 1000.0
# Where the gate's max_start_offset came from (PlanGate.max_start_offset_source).
FROM_PARAMETER, FROM_CALIBRATION, FROM_EMBODIMENT = "parameter", "calibration", "embodiment"
_MIN_TIME_SCALE = next(field.default for field in dataclasses.fields(GateConfig) if field.name == "min_time_scale")


@dataclasses.dataclass(frozen=True)
class IDMNodeConfig:
    """Everything ``idm_node`` reads on configure; the defaults are the real robot's (a GPU)."""

    checkpoint: str = setting("", "IDM checkpoint directory: config.json, model.safetensors and, from "
                                  "`eva eval idm`, calibration.json; required")
    embodiment: str = setting("", "embodiment name or YAML path; '' = the one the checkpoint was trained for")
    device: str = setting("cuda", "torch device of the IDM, e.g. cuda, cuda:1 or cpu")
    num_threads: int = setting(2, "torch CPU threads of this process [threads]; 0 = torch's default")
    batch_size: int = setting(16, "IDM windows (one per frame) decoded per forward pass [windows]")
    min_reward: float = setting(EMBODIMENT_DEFAULT, "lowest EVA reward of the raw decode that passes, in [0, 10] "
                                                    "[dimensionless]; -1 = the embodiment's gate.min_reward")
    time_scale: float = setting(EMBODIMENT_DEFAULT, "retiming factor the gate starts from, in "
                                                    f"[{_MIN_TIME_SCALE}, 1] (0.5 = half the planned speed) "
                                                    "[dimensionless]; -1 = the embodiment's gate.time_scale")
    max_start_offset: tuple[float, ...] = setting((), "per joint in embodiment order, the largest start offset "
                                                      "removed rather than rejected, at most the embodiment's [rad; "
                                                      "grippers 0..1]; [] = the checkpoint's calibration.json capped "
                                                      "at the embodiment's, else the embodiment's")
    emit_accelerations: bool = setting(False, "fill the trajectory's accelerations too (JTC then interpolates "
                                              "quintic; the motion is the same)")
    diagnostics_period: float = setting(1.0, "period of the /diagnostics status [s]")

    def __post_init__(self) -> None:
        check_types(self)
        if not self.checkpoint:
            raise ValueError("checkpoint: required, the IDM checkpoint directory (see config/idm_node.yaml)")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device: not a torch device, got {self.device!r}") from None
        if self.num_threads < 0:
            raise ValueError(f"num_threads: must be >= 0 (0 = torch's default), got {self.num_threads}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.min_reward != EMBODIMENT_DEFAULT and not 0.0 <= self.min_reward <= 10.0:
            raise ValueError(f"min_reward: must lie in [0, 10] or be -1 (the embodiment's), got {self.min_reward}")
        if self.time_scale != EMBODIMENT_DEFAULT and not _MIN_TIME_SCALE <= self.time_scale <= 1.0:
            raise ValueError(
                f"time_scale: must lie in [{_MIN_TIME_SCALE}, 1] or be -1 (the embodiment's), got {self.time_scale}"
            )
        if not all(math.isfinite(value) and value > 0.0 for value in self.max_start_offset):
            raise ValueError(
                f"max_start_offset: every value must be a finite number > 0, got {list(self.max_start_offset)}"
            )
        if not (math.isfinite(self.diagnostics_period) and self.diagnostics_period > 0.0):
            raise ValueError(f"diagnostics_period: must be a finite number > 0 [s], got {self.diagnostics_period}")

    def gate_thresholds(
        self, embodiment: Embodiment, calibration: StartOffsetCalibration | None = None
    ) -> GateThresholds:
        """The gate's thresholds, where ``max_start_offset`` came from and what was capped (module docstring).

        Raises:
            ValueError: ``max_start_offset`` has not one value per joint of ``embodiment``, or
                exceeds the embodiment's on a joint (a parameter may only tighten the gate).
        """
        overrides: dict[str, object] = {"emit_accelerations": self.emit_accelerations}
        for name in ("min_reward", "time_scale"):
            if getattr(self, name) != EMBODIMENT_DEFAULT:
                overrides[name] = getattr(self, name)
        source, capped = FROM_EMBODIMENT, ()
        if self.max_start_offset:
            _check_tightens(self.max_start_offset, embodiment)
            overrides["max_start_offset"], source = self.max_start_offset, FROM_PARAMETER
        elif calibration is not None:
            overrides["max_start_offset"], capped = capped_calibration(calibration, embodiment)
            source = FROM_CALIBRATION
        return GateThresholds(GateConfig.from_embodiment(embodiment, **overrides), source, capped)


def _check_tightens(max_start_offset: Sequence[float], embodiment: Embodiment) -> None:
    """Raise ValueError unless the parameter has one value per joint, none above the embodiment's."""
    if len(max_start_offset) != embodiment.num_joints:
        raise ValueError(
            f"max_start_offset: expected {embodiment.num_joints} values, one per joint of embodiment "
            f"{embodiment.name} {list(embodiment.joint_names)}, got {len(max_start_offset)}"
        )
    looser = [
        f"{name} {value:g} > {ceiling:g}"
        for name, value, ceiling in zip(embodiment.joint_names, max_start_offset, embodiment.gate.max_start_offset,
                                        strict=True)
        if value > ceiling
    ]
    if looser:
        raise ValueError(
            f"max_start_offset: above the embodiment {embodiment.name}'s gate.max_start_offset at {', '.join(looser)}; "
            "the parameter may only tighten the gate (a looser tolerance is a change to the embodiment YAML)"
        )


@dataclasses.dataclass(frozen=True)
class CappedTolerance:
    """A calibrated start-offset tolerance above the embodiment's, which the gate uses instead.

    Attributes:
        joint: joint name.
        calibrated: the tolerance ``calibration.json`` asked for [rad; grippers 0..1].
        embodiment: the embodiment's tolerance, the one in force.
    """

    joint: str
    calibrated: float
    embodiment: float

    def __str__(self) -> str:
        return f"{self.joint} {self.calibrated:.3g} capped at the embodiment's {self.embodiment:g}"


@dataclasses.dataclass(frozen=True)
class GateThresholds:
    """What :meth:`IDMNodeConfig.gate_thresholds` decides: the thresholds and how ``max_start_offset`` came about.

    Attributes:
        config: the thresholds the gate judges with.
        max_start_offset_source: FROM_PARAMETER, FROM_CALIBRATION or FROM_EMBODIMENT.
        capped: the calibrated tolerances the embodiment's replaced, in joint order.
    """

    config: GateConfig
    max_start_offset_source: str
    capped: tuple[CappedTolerance, ...] = ()


def capped_calibration(
    calibration: StartOffsetCalibration, embodiment: Embodiment
) -> tuple[tuple[float, ...], tuple[CappedTolerance, ...]]:
    """The calibrated start-offset tolerances capped at the embodiment's, and the joints where the cap applied.

    Element-wise minimum: a calibration can only tighten the gate, whatever the IDM measured.

    Raises:
        ValueError: the calibration's joint names are not the embodiment's.
    """
    if calibration.joint_names != embodiment.joint_names:
        raise ValueError(
            f"calibration: joint_names {list(calibration.joint_names)} differ from embodiment {embodiment.name}'s "
            f"{list(embodiment.joint_names)}"
        )
    calibrated, ceilings = calibration.max_start_offset, embodiment.gate.max_start_offset
    capped = tuple(
        CappedTolerance(name, value, ceiling)
        for name, value, ceiling in zip(embodiment.joint_names, calibrated, ceilings, strict=True)
        if value > ceiling
    )
    return tuple(map(min, calibrated, ceilings)), capped


def gate_id(embodiment: Embodiment, gate_config: GateConfig) -> str:
    """``<embodiment name>@<first 12 hex digits of a SHA-256>`` of the embodiment and the gate's thresholds.

    Names the thresholds that judge a plan (see the module docstring): reports carry it in
    ``idm_model_id`` beside the weights' hash, so a verdict can be traced to its limits and
    calibration as well as to its IDM.
    """
    judged_by = {"embodiment": dataclasses.asdict(embodiment), "gate": dataclasses.asdict(gate_config)}
    digest = hashlib.sha256(json.dumps(judged_by, sort_keys=True).encode()).hexdigest()
    return f"{embodiment.name}@{digest[:12]}"


class PlanRejected(Exception):  # noqa: N818 (a verdict, not a failure)
    """A plan judged unusable before the gate runs; ``verdict`` and ``reason`` go into the report."""

    def __init__(self, verdict: Verdict, reason: str):
        super().__init__(reason)
        self.verdict, self.reason = verdict, reason


@dataclasses.dataclass(frozen=True, eq=False)
class PlanJudgement:
    """Everything an ``ExecutabilityReport`` (and, when accepted, a ``GatedPlan``) carries about one plan.

    Attributes:
        verdict: ACCEPTED or why not.
        reason: human-readable explanation naming the field, joint, value and limit at fault.
        joint_names: the embodiment's joint order (of ``motion.start_offset`` and the trajectory).
        num_frames: frames the plan has.
        fps: the plan's frame rate as given [Hz].
        time_scale: the retiming factor applied, else the configured one.
        motion: the gate's full result; None when the plan was rejected before the gate ran.
        timings: seconds per stage (``idm_decode``, ``gate``; callers may add theirs), steady clock.
    """

    verdict: Verdict
    reason: str
    joint_names: tuple[str, ...]
    num_frames: int
    fps: float
    time_scale: float
    motion: MotionResult | None = None
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def executable(self) -> bool:
        """True only when the verdict is ACCEPTED."""
        return self.verdict is Verdict.ACCEPTED


class PlanGate:
    """An IDM and the plan-to-motion gate of one embodiment: frames + joint state in, :class:`PlanJudgement` out.

    Args:
        idm: the inverse dynamics model; it must have been trained for ``embodiment``.
        embodiment: joint names and limits.
        gate_config: the gate's thresholds, sized for ``embodiment``.
        batch_size: windows per IDM forward pass.
        model_id: identifies the IDM's weights and the gate's thresholds in reports (``idm_model_id``;
            :meth:`load` gives ``<checkpoint_id>+gate:<gate_id>``).
        max_start_offset_source: where ``gate_config.max_start_offset`` came from, for logs.
        capped_start_offsets: calibrated tolerances the embodiment's replaced, for logs and reasons.
    """

    def __init__(
        self,
        idm: ResNetPlusIDM,
        embodiment: Embodiment,
        gate_config: GateConfig,
        *,
        batch_size: int = 16,
        model_id: str = "",
        max_start_offset_source: str = FROM_EMBODIMENT,
        capped_start_offsets: Sequence[CappedTolerance] = (),
    ):
        check_embodiment(idm.config, embodiment.name, embodiment.joint_names, "PlanGate idm")
        gate_config.check_width(embodiment)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a whole number >= 1, got {batch_size!r}")
        self.idm, self.embodiment, self.gate_config = idm, embodiment, gate_config
        self.batch_size, self.model_id = batch_size, model_id
        self.max_start_offset_source = max_start_offset_source
        self.capped_start_offsets = tuple(capped_start_offsets)

    @classmethod
    def load(cls, config: IDMNodeConfig) -> PlanGate:
        """Load the checkpoint, its embodiment (or the configured one) and calibration, and build the gate.

        Raises:
            ValueError: naming the parameter at fault (``checkpoint``, ``embodiment``, ``device``,
                ``max_start_offset``) and the file or value.
        """
        directory = Path(config.checkpoint)
        try:
            trained_for = read_checkpoint_config(directory).embodiment
        except (OSError, ValueError) as error:
            raise ValueError(f"checkpoint: {error}") from error
        try:
            embodiment = load_embodiment(config.embodiment or trained_for)
        except (OSError, ValueError) as error:
            raise ValueError(f"embodiment: {error}") from error
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {config.device!r}, but this torch sees no CUDA device (use cpu)")
        try:
            idm = load_checkpoint(directory, embodiment.name, embodiment.joint_names, device=device)
            calibration = read_calibration(directory, embodiment.joint_names)
        except (OSError, ValueError) as error:
            raise ValueError(f"checkpoint: {error}") from error
        thresholds = config.gate_thresholds(embodiment, calibration)
        model_id = f"{checkpoint_id(directory)}+gate:{gate_id(embodiment, thresholds.config)}"
        return cls(idm, embodiment, thresholds.config, batch_size=config.batch_size, model_id=model_id,
                   max_start_offset_source=thresholds.max_start_offset_source,
                   capped_start_offsets=thresholds.capped)

    def max_start_offset_origin(self) -> str:
        """Where ``max_start_offset`` came from and, for a calibration, which joints the embodiment capped."""
        origin = f"from the {self.max_start_offset_source}"
        if not self.capped_start_offsets:
            return origin
        return f"{origin}; {', '.join(map(str, self.capped_start_offsets))} (calibration only tightens the gate)"

    def min_frames(self, fps: float) -> int:
        """Fewest frames a plan at ``fps`` needs: EVA's reward (jerk) and one whole IDM window."""
        offsets = frame_offsets(self.idm.config.window_s, fps, self.idm.config.num_frames)
        return max(MIN_FRAMES, offsets[-1] - offsets[0] + 1)

    def check_frame_count(self, num_frames: int, fps: float) -> None:
        """Raise :class:`PlanRejected` (TOO_FEW_FRAMES) unless ``num_frames`` suffice at ``fps`` (already checked)."""
        needed = self.min_frames(fps)
        if num_frames < needed:
            raise PlanRejected(
                Verdict.TOO_FEW_FRAMES,
                f"frames: the plan has {num_frames}; EVA's reward and the IDM's window "
                f"({self.idm.config.num_frames} frames {self.idm.config.window_s:g} s apart) need at least "
                f"{needed} at {fps:g} fps",
            )

    def measured_pose(self, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
        """The joint state at image time in embodiment order, looked up by name; extra joints are ignored.

        Raises:
            PlanRejected: NO_JOINT_STATE when it is empty, its positions and names differ in number,
                it repeats a name, lacks a joint of the embodiment or has a non-finite position.
        """
        names, positions = list(names), list(positions)
        field = "joint_state_at_image"
        if not names:
            raise PlanRejected(Verdict.NO_JOINT_STATE, f"{field}.name: empty; the plan carries no joint state")
        if len(positions) != len(names):
            raise PlanRejected(
                Verdict.NO_JOINT_STATE, f"{field}.position: {len(positions)} values for {len(names)} names"
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise PlanRejected(Verdict.NO_JOINT_STATE, f"{field}.name: repeated {repeated}")
        missing = [name for name in self.embodiment.joint_names if name not in names]
        if missing:
            raise PlanRejected(
                Verdict.NO_JOINT_STATE,
                f"{field}.name: lacks {missing} of embodiment {self.embodiment.name}; got {names}",
            )
        by_name = dict(zip(names, positions, strict=True))
        pose = np.array([by_name[name] for name in self.embodiment.joint_names], dtype=np.float64)
        for name, value in zip(self.embodiment.joint_names, pose, strict=True):
            if not math.isfinite(value):
                raise PlanRejected(Verdict.NO_JOINT_STATE, f"{field}.position: {value} at {name} is not finite")
        return pose

    def judge(
        self, frames: np.ndarray, fps: float, joint_names: Sequence[str], joint_positions: Sequence[float]
    ) -> PlanJudgement:
        """Decode ``frames`` (``(T, H, W, 3)`` uint8 RGB at ``fps``) and gate them against the joint state.

        ``joint_names``/``joint_positions`` are the measured joint state at image time, looked up by
        name (:meth:`measured_pose`). A plan the gate rejects is a verdict, not an error.
        """
        num_frames = len(frames) if isinstance(frames, np.ndarray) and frames.ndim else 0
        try:
            rate = check_plan_fps(fps)
            _check_rgb_video(frames)
            self.check_frame_count(num_frames, rate)
            measured = self.measured_pose(joint_names, joint_positions)
        except PlanRejected as rejection:
            return self.rejected(rejection.verdict, rejection.reason, num_frames, fps)
        started = time.perf_counter()
        decoded = self.idm.decode_video(frames, rate, batch_size=self.batch_size).numpy().astype(np.float64)
        decoded_at = time.perf_counter()
        motion = plan_to_motion(decoded, rate, measured, self.embodiment, self.gate_config)
        timings = {"idm_decode": decoded_at - started, "gate": time.perf_counter() - decoded_at}
        return PlanJudgement(motion.verdict, self._reason(motion), self.embodiment.joint_names, num_frames, rate,
                             motion.time_scale, motion, timings)

    def _reason(self, motion: MotionResult) -> str:
        """The gate's reason, plus the capping of a calibrated tolerance at a joint that rejected the plan.

        Whoever reads the report of a START_OFFSET rejection may hold the IDM's calibration, which
        allowed more; the reason says why it did not count.
        """
        if motion.verdict is not Verdict.START_OFFSET:
            return motion.reason
        capped = [str(cap) for cap in self.capped_start_offsets if cap.joint in motion.offending_joints]
        if not capped:
            return motion.reason
        return f"{motion.reason}; calibration.json: {', '.join(capped)} (calibration only tightens the gate)"

    def rejected(
        self, verdict: Verdict, reason: str, num_frames: int, fps: float, timings: Mapping[str, float] | None = None
    ) -> PlanJudgement:
        """The judgement on a plan rejected before the gate ran (or that failed with INTERNAL_ERROR)."""
        rate = float(fps) if isinstance(fps, numbers.Real) else math.nan  # as given, if it is a number at all
        return PlanJudgement(Verdict(verdict), reason, self.embodiment.joint_names, num_frames, rate,
                             self.gate_config.time_scale, None, dict(timings or {}))


def check_plan_fps(fps: object) -> float:
    """``fps`` as a float; :class:`PlanRejected` (MALFORMED_PLAN) outside [MIN_PLAN_FPS, MAX_PLAN_FPS] Hz."""
    rate = float(fps) if isinstance(fps, numbers.Real) and not isinstance(fps, bool) else math.nan
    if not MIN_PLAN_FPS <= rate <= MAX_PLAN_FPS:  # NaN fails too
        raise PlanRejected(
            Verdict.MALFORMED_PLAN, f"fps: must lie in [{MIN_PLAN_FPS:g}, {MAX_PLAN_FPS:g}] Hz, got {fps!r}"
        )
    return rate


def _check_rgb_video(frames: object) -> None:
    """Raise :class:`PlanRejected` (MALFORMED_PLAN) unless ``frames`` is a ``(T, H, W, 3)`` uint8 array."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        shape, dtype = getattr(frames, "shape", None), getattr(frames, "dtype", type(frames).__name__)
        raise PlanRejected(Verdict.MALFORMED_PLAN, f"frames: expected (T, H, W, 3) uint8 RGB, got {shape} of {dtype}")


def frame_error_verdict(error: FrameError) -> Verdict:
    """HASH_MISMATCH for a :class:`FrameError` about ``frames_sha256``, else MALFORMED_PLAN.

    Frame errors name the field at fault first (see :mod:`eva_idm.frames`), so the field decides.
    """
    return Verdict.HASH_MISMATCH if str(error).startswith("frames_sha256:") else Verdict.MALFORMED_PLAN


def checkpoint_id(directory: str | Path) -> str:
    """``<directory name>@<first 12 hex digits of the weights' SHA-256>``: names the weights, not just the path.

    A retrained checkpoint written over the same directory gets a new id, so reports say which
    weights judged a plan.
    """
    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return f"{Path(directory).resolve().name}@{digest.hexdigest()[:12]}"
