"""Video-plan frames as bytes: lossless encoding, decoding and the integrity hash.

Plans travel as PNG by default so that every consumer (IDM node, replay, Foxglove) decodes
exactly the pixels the planner scored. The hash covers the encoded bytes, so a consumer can
check a plan before spending time on decoding it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

FORMAT_PNG = "png"
FORMAT_RGB8 = "rgb8"
SUPPORTED_FORMATS = (FORMAT_PNG, FORMAT_RGB8)


class FrameError(ValueError):
    """A frame that cannot be encoded or decoded; the message names the frame and the fault."""


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded frame: ``format`` is ``"png"`` or ``"rgb8"``, ``data`` the bytes."""

    format: str
    data: bytes


def check_rgb_frame(frame: np.ndarray, name: str = "frame") -> None:
    """Raise :class:`FrameError` unless ``frame`` is an ``H x W x 3`` uint8 array."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"{name}: expected a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FrameError(f"{name}: dtype must be uint8, got {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f"{name}: shape must be (height, width, 3), got {frame.shape}")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_frame(frame: np.ndarray, fmt: str = FORMAT_PNG, png_compression: int = 1) -> EncodedFrame:
    """Encode one RGB frame.

    ``png_compression`` is zlib's level 0-9; level 1 is several times faster than the default 3
    for a few percent more bytes, which is the right trade for plans published once.
    """
    check_rgb_frame(frame)
    if fmt == FORMAT_RGB8:
        return EncodedFrame(FORMAT_RGB8, np.ascontiguousarray(frame).tobytes())
    if fmt != FORMAT_PNG:
        raise FrameError(f"format: unsupported frame format {fmt!r}; use one of {SUPPORTED_FORMATS}")
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)])
    if not ok:
        raise FrameError(f"frame: PNG encoding failed for shape {frame.shape}")
    return EncodedFrame(FORMAT_PNG, buffer.tobytes())


def decode_frame(encoded: EncodedFrame, height: int, width: int) -> np.ndarray:
    """Decode one frame to an ``height x width x 3`` RGB uint8 array, checking its size."""
    if encoded.format == FORMAT_RGB8:
        expected = height * width * 3
        if len(encoded.data) != expected:
            raise FrameError(
                f"data: rgb8 frame has {len(encoded.data)} bytes, expected {expected} "
                f"for {height}x{width}x3"
            )
        return np.frombuffer(encoded.data, np.uint8).reshape(height, width, 3)
    if encoded.format != FORMAT_PNG:
        raise FrameError(f"format: unsupported frame format {encoded.format!r}; use one of {SUPPORTED_FORMATS}")
    # imdecode sniffs the content and would accept a JPEG (lossy pixels) labelled png, or raise on no bytes.
    if not encoded.data.startswith(PNG_SIGNATURE):
        raise FrameError(f"data: {len(encoded.data)} bytes do not start with the PNG signature")
    bgr = cv2.imdecode(np.frombuffer(encoded.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameError(f"data: {len(encoded.data)} bytes are not a decodable PNG image")
    if bgr.shape[:2] != (height, width):
        raise FrameError(f"data: PNG is {bgr.shape[0]}x{bgr.shape[1]}, expected {height}x{width}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_frames(frames: np.ndarray, fmt: str = FORMAT_PNG) -> list[EncodedFrame]:
    """Encode a ``T x H x W x 3`` uint8 video frame by frame."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4:
        shape = getattr(frames, "shape", None)
        raise FrameError(f"frames: expected a (T, H, W, 3) uint8 array, got shape {shape}")
    return [encode_frame(frame, fmt) for frame in frames]


def decode_frames(encoded: Sequence[EncodedFrame], height: int, width: int) -> np.ndarray:
    """Decode frames into one ``T x H x W x 3`` array; errors name the failing frame index."""
    video = np.empty((len(encoded), height, width, 3), np.uint8)
    for index, frame in enumerate(encoded):
        try:
            video[index] = decode_frame(frame, height, width)
        except FrameError as error:
            raise FrameError(f"frames[{index}].{error}") from error
    return video


def frames_sha256(encoded: Sequence[EncodedFrame]) -> str:
    """SHA-256 (lowercase hex) over the frames' formats and bytes, in order.

    Each frame contributes its format, its length and its bytes, so reordering, truncating or
    re-encoding any frame changes the hash.
    """
    digest = hashlib.sha256()
    for frame in encoded:
        fmt = frame.format.encode()
        digest.update(len(fmt).to_bytes(2, "little"))
        digest.update(fmt)
        digest.update(len(frame.data).to_bytes(8, "little"))
        digest.update(frame.data)
    return digest.hexdigest()
