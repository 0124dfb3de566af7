"""Benchmark: DDS latency and throughput of camera images and video plans (`make bench-transport`).

Each typed message is measured beside a raw byte message (std_msgs/UInt8MultiArray) of the same
size in the same run, so the ratio isolates what the message type costs over moving the bytes;
both are measured with Fast DDS's default transports and with the shared-memory profile
(config/fastdds_shm.xml). Publisher and subscriber are separate processes (transport_probe).
PNG encode/decode time per plan is measured in-process. Results: benchmarks/results/transport.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from domain_coordinator import domain_id

from eva_idm.frames import decode_frames, encode_frames
from eva_sim.processes import NodeProcess, find_executable, ros_environment
from eva_sim.test_patterns import moving_pattern

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "transport.json"
SHM_PROFILE = ROOT / "config" / "fastdds_shm.xml"
PLAN_SHAPE = (49, 480, 640)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``."""
    return float(np.percentile(values, q))


def run_stream(send_args: list[str], count: int, profile: Path | None, workdir: Path) -> dict:
    """Publish ``count`` messages from one process to another; latency and throughput at the receiver."""
    kind = send_args[send_args.index("--kind") + 1]
    extra = {"FASTRTPS_DEFAULT_PROFILES_FILE": str(profile)} if profile else {}
    probe = find_executable("eva_sim", "transport_probe")
    out = workdir / f"{kind}-{time.monotonic_ns()}.json"
    with domain_id() as domain:
        env = ros_environment(domain, extra)
        qos = ["--depth", "10"]
        with NodeProcess([probe, "receive", "--kind", kind, "--count", str(count), "--idle-timeout", "20",
                          "--json-out", str(out), *qos], workdir / "receive.log", env) as receiver, \
             NodeProcess([probe, "send", *send_args, "--count", str(count), *qos], workdir / "send.log", env) as sender:
            sender.wait(600)
            receiver.wait(600)
    records = json.loads(out.read_text())["records"]
    latencies = [record["latency_ms"] for record in records]
    times = sorted(record["received_ns"] for record in records)
    span = (times[-1] - times[0]) / 1e9 if len(times) > 1 else float("nan")
    return {
        "sent": count, "received": len(records),
        "latency_ms": {"median": statistics.median(latencies), "p99": percentile(latencies, 99),
                       "mean": statistics.fmean(latencies), "max": max(latencies)},
        "throughput_hz": (len(times) - 1) / span if len(times) > 1 else None,
    }


def paired(name: str, typed_args: list[str], payload_bytes: int, rate: float, count: int,
           profile: Path | None, workdir: Path) -> dict:
    """The typed message and a byte message of the same size at the same rate, one after the other."""
    common = ["--rate", str(rate)]
    typed = run_stream([*typed_args, *common], count, profile, workdir)
    raw = run_stream(["--kind", "bytes", "--size", str(payload_bytes), *common], count, profile, workdir)
    typed["throughput_mb_s"] = (typed["throughput_hz"] or 0) * payload_bytes / 1e6
    raw["throughput_mb_s"] = (raw["throughput_hz"] or 0) * payload_bytes / 1e6
    ratio = typed["latency_ms"]["median"] / raw["latency_ms"]["median"]
    print(f"  {name:<26} {typed['latency_ms']['median']:8.2f} ms median (p99 {typed['latency_ms']['p99']:.2f}), "
          f"bytes {raw['latency_ms']['median']:8.2f} ms -> ratio {ratio:.2f}; "
          f"{typed['received']}/{count} received at {typed['throughput_hz'] or 0:.2f} Hz", flush=True)
    return {"payload_bytes": payload_bytes, "rate_hz": rate, "typed": typed, "bytes": raw,
            "latency_ratio_typed_over_bytes": ratio}


def png_timing(repeats: int) -> dict:
    """Seconds to PNG-encode and decode one 49-frame 480x640 plan (median of ``repeats``)."""
    video = moving_pattern(*PLAN_SHAPE, seed=0)
    encode, decode = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        encoded = encode_frames(video, "png")
        encode.append(time.perf_counter() - started)
        started = time.perf_counter()
        decode_frames(encoded, *PLAN_SHAPE[1:])
        decode.append(time.perf_counter() - started)
    return {"encode_s": statistics.median(encode), "decode_s": statistics.median(decode),
            "encoded_bytes": sum(len(frame.data) for frame in encoded), "raw_bytes": int(np.prod(PLAN_SHAPE)) * 3}


def main() -> None:
    """Run every scenario with both transports and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="images per stream (30 Hz)")
    parser.add_argument("--plans", type=int, default=10, help="plans per stream (1 Hz)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    png = png_timing(repeats=3)
    print(f"PNG per 49-frame plan: encode {png['encode_s']:.3f} s, decode {png['decode_s']:.3f} s, "
          f"{png['encoded_bytes'] / 1e6:.1f} MB (raw {png['raw_bytes'] / 1e6:.1f} MB)", flush=True)
    frames, height, width = PLAN_SHAPE
    plan = ["--kind", "plan", "--frames", str(frames), "--height", str(height), "--width", str(width)]
    results = {"png": png, "transports": {}}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for transport, profile in (("default", None), ("shared_memory", SHM_PROFILE)):
            print(f"transport: {transport}", flush=True)
            results["transports"][transport] = {
                "image_640x480_rgb8_30hz": paired(
                    "Image 640x480 rgb8 @30Hz", ["--kind", "image", "--height", "480", "--width", "640"],
                    height * width * 3, 30.0, args.images, profile, workdir),
                "plan_49_png_1hz": paired(
                    "VisualPlan 49 PNG @1Hz", [*plan, "--format", "png"], png["encoded_bytes"], 1.0, args.plans,
                    profile, workdir),
                "plan_49_raw_1hz": paired(
                    "VisualPlan 49 raw @1Hz", [*plan, "--format", "rgb8"], png["raw_bytes"], 1.0, args.plans,
                    profile, workdir),
            }
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}
    results["date"] = time.strftime("%Y-%m-%d")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
