"""Conversions between the ROS-free core types and eva_msgs messages.

These functions import message packages but never rclpy, so they can be used by tools that
only read or write bags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, JointState

from eva_idm.frames import EncodedFrame, FrameError, decode_frames, frames_sha256
from eva_msgs.msg import StageTiming, VisualPlan


def stage_timings(timings: dict[str, float]) -> list[StageTiming]:
    """Convert ``{stage: seconds}`` into ``StageTiming`` messages, keeping insertion order."""
    return [StageTiming(stage=stage, seconds=float(seconds)) for stage, seconds in timings.items()]


def joint_state(names: Sequence[str], positions: Iterable[float], stamp: Time | None = None) -> JointState:
    """Build a position-only ``JointState``."""
    message = JointState(name=list(names), position=[float(value) for value in positions])
    if stamp is not None:
        message.header.stamp = stamp
    return message


def compressed_frames(encoded: Sequence[EncodedFrame], stamp: Time, frame_id: str) -> list[CompressedImage]:
    """Wrap encoded frames in ``CompressedImage`` messages sharing the plan's stamp and frame."""
    frames = []
    for frame in encoded:
        message = CompressedImage(format=frame.format)
        message.header.stamp = stamp
        message.header.frame_id = frame_id
        message.data = frame.data
        frames.append(message)
    return frames


def encoded_frames(plan: VisualPlan) -> list[EncodedFrame]:
    """The plan's frames as :class:`EncodedFrame` values (no decoding)."""
    return [EncodedFrame(frame.format, bytes(frame.data)) for frame in plan.frames]


def decode_visual_plan(plan: VisualPlan) -> np.ndarray:
    """Check a ``VisualPlan``'s hash and sizes and decode its frames to ``T x H x W x 3`` RGB.

    Raises :class:`FrameError` naming the field at fault, so a node can publish the reason.
    """
    if plan.height == 0 or plan.width == 0:
        raise FrameError(f"height/width: plan size must be positive, got {plan.height}x{plan.width}")
    if not plan.frames:
        raise FrameError("frames: the plan has no frames")
    encoded = encoded_frames(plan)
    actual = frames_sha256(encoded)
    if actual != plan.frames_sha256:
        raise FrameError(f"frames_sha256: declared {plan.frames_sha256!r} but the frames hash to {actual!r}")
    return decode_frames(encoded, plan.height, plan.width)
