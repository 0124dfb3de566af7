"""Pictures people look at: joint trajectories per arm, several series overlaid (like EVA's Figure 2).

One colour per joint, one line style per series (e.g. IDM decode, ground truth, executed spline,
measured), so a reader can compare the series joint by joint. Uses matplotlib's Agg canvas
directly and never touches pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eva_idm.embodiment import Embodiment

LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Series:
    """One trajectory to draw: ``positions`` is ``(N, D)`` at ``times`` (s)."""

    label: str
    times: np.ndarray
    positions: np.ndarray

    @classmethod
    def at_fps(cls, label: str, positions: np.ndarray, fps: float) -> Series:
        """A series sampled uniformly at ``fps`` from t = 0."""
        return cls(label, np.arange(len(positions)) / fps, np.asarray(positions))


def plot_arm_trajectories(series: Sequence[Series], embodiment: Embodiment, title: str, path: Path) -> Path:
    """Write a PNG with one subplot per arm and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not series or len(series) > len(LINE_STYLES):
        raise ValueError(f"series: expected 1 to {len(LINE_STYLES)} trajectories, got {len(series)}")
    arms = embodiment.arm_slices()
    figure = Figure(figsize=(11, 3.2 * len(arms)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(arms), 1, sharex=True, squeeze=False)[:, 0]
    colours = [f"C{index}" for index in range(10)]
    for axis, (arm, joints) in zip(axes, arms.items(), strict=True):
        for offset, joint in enumerate(range(joints.start, joints.stop)):
            for style, item in zip(LINE_STYLES, series, strict=False):
                axis.plot(item.times, item.positions[:, joint], style, color=colours[offset % 10], linewidth=1.2)
        joint_handles = [Line2D([], [], color=colours[offset % 10], label=embodiment.joint_names[joint])
                         for offset, joint in enumerate(range(joints.start, joints.stop))]
        series_handles = [Line2D([], [], color="black", linestyle=style, label=item.label)
                          for style, item in zip(LINE_STYLES, series, strict=False)]
        axis.legend(handles=joint_handles + series_handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                    fontsize="small")
        axis.set_title(f"{arm} arm")
        axis.set_ylabel("rad (gripper 0..1)")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
