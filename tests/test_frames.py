"""Plan frames encode losslessly and the hash catches any change."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from eva_idm.frames import EncodedFrame, FrameError, decode_frames, encode_frames, frames_sha256
from eva_sim.test_patterns import moving_pattern


@pytest.mark.parametrize("fmt", ["png", "rgb8"])
def test_frames_round_trip_exactly(fmt):
    video = moving_pattern(4, 32, 48, seed=1)
    encoded = encode_frames(video, fmt)
    assert {frame.format for frame in encoded} == {fmt}
    np.testing.assert_array_equal(decode_frames(encoded, 32, 48), video)


def test_png_keeps_red_and_blue_in_place():
    frame = np.zeros((1, 8, 8, 3), np.uint8)
    frame[..., 0] = 255  # pure red
    decoded = decode_frames(encode_frames(frame, "png"), 8, 8)
    assert decoded[0, 0, 0].tolist() == [255, 0, 0]


def test_hash_changes_when_frames_are_reordered_truncated_or_altered():
    encoded = encode_frames(moving_pattern(3, 16, 16, seed=2), "png")
    reference = frames_sha256(encoded)
    altered = EncodedFrame("png", encoded[1].data[:-1] + bytes([encoded[1].data[-1] ^ 1]))
    assert frames_sha256(list(encoded)) == reference
    assert frames_sha256(encoded[::-1]) != reference
    assert frames_sha256(encoded[:2]) != reference
    assert frames_sha256([encoded[0], altered, encoded[2]]) != reference


def test_hash_distinguishes_frame_boundaries():
    assert frames_sha256([EncodedFrame("rgb8", b"ab"), EncodedFrame("rgb8", b"c")]) != frames_sha256(
        [EncodedFrame("rgb8", b"a"), EncodedFrame("rgb8", b"bc")]
    )


@pytest.mark.parametrize(
    ("video", "message"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), "dtype must be uint8"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"shape must be \(height, width, 3\)"),
        (np.zeros((8, 8, 3), np.uint8), r"expected a \(T, H, W, 3\) uint8 array"),
    ],
)
def test_encoding_rejects_malformed_frames_naming_the_fault(video, message):
    with pytest.raises(FrameError, match=message):
        encode_frames(video)


def test_encoding_rejects_an_unknown_format():
    with pytest.raises(FrameError, match="unsupported frame format 'jpeg'"):
        encode_frames(moving_pattern(1, 8, 8), "jpeg")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (EncodedFrame("png", b"not a png"), r"frames\[1\]\.data: 9 bytes do not start with the PNG signature"),
        (EncodedFrame("png", b""), r"frames\[1\]\.data: 0 bytes do not start with the PNG signature"),
        (EncodedFrame("png", cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()),
         r"frames\[1\]\.data: \d+ bytes do not start with the PNG signature"),
        (EncodedFrame("png", b"\x89PNG\r\n\x1a\n" + bytes(20)), r"frames\[1\]\.data: 28 bytes are not a decodable PNG"),
        (EncodedFrame("rgb8", bytes(10)), r"frames\[1\]\.data: rgb8 frame has 10 bytes, expected 192"),
        (EncodedFrame("bgr8", bytes(192)), r"frames\[1\]\.format: unsupported frame format 'bgr8'"),
    ],
)
def test_decoding_names_the_bad_frame(frame, message):
    good = encode_frames(moving_pattern(1, 8, 8), "png")[0]
    with pytest.raises(FrameError, match=message):
        decode_frames([good, frame], 8, 8)


def test_decoding_rejects_a_png_of_the_wrong_size():
    encoded = encode_frames(moving_pattern(1, 16, 16), "png")
    with pytest.raises(FrameError, match="PNG is 16x16, expected 8x8"):
        decode_frames(encoded, 8, 8)
