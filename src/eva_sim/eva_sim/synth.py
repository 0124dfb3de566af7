"""Synthetic episodes in RoboTwin 2.0's classic HDF5 layout, rendered from the MuJoCo aloha-agilex scene.

Lets the IDM, the data pipeline and the tests run on realistic data without RoboTwin or a GPU.
The output is real simulator output of this arm, not RoboTwin data: every episode directory says
so in ``scene_info.json`` and in the HDF5 file's attributes.

Layout under ``out_dir`` (as RoboTwin's collector writes it)::

    <task>/<task_config>/data/episode{i}.hdf5
    <task>/<task_config>/instructions/episode{i}.json     {"seen": [...], "unseen": [...]}
    <task>/<task_config>/seed.txt                         the episodes' seeds, space-separated
    <task>/<task_config>/scene_info.json                  {"episode_{i}": {...}}

Each episode's seed is derived from the run's seed and the episode index only, so any episode
can be regenerated on its own, and one run's episodes never repeat another's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eva_sim.motions import ROBOTWIN_FRAME_INTERVAL_S, MotionConfig, random_bimanual_motion

if TYPE_CHECKING:
    from eva_sim.scene import AgilexScene, CameraMatrices

SOURCE_NOTE = (
    "synthetic: eva_sim MuJoCo aloha-agilex front arms (RoboTwin's table, wall and head camera), "
    "random minimum-jerk motions; not RoboTwin data"
)
INSTRUCTIONS = {
    "synth_reach": {
        "seen": [
            "Move both arms to new poses above the table.",
            "Reach to different places over the table with the two grippers.",
            "Reposition both arms and open or close the grippers.",
        ],
        "unseen": [
            "Move the two grippers around in front of the camera.",
            "Shift both arms to another spot above the table.",
        ],
    },
}
GENERIC_INSTRUCTIONS = {"seen": ["Move both arms."], "unseen": ["Move the two arms."]}


@dataclass(frozen=True)
class SynthConfig:
    """What ``eva data synth`` writes; every field is validated, errors name the field and value.

    Attributes:
        out_dir: root directory (RoboTwin's ``data/``); ``<task>/<task_config>`` below it must
            not hold files yet, so earlier episodes are never overwritten.
        episodes: number of episodes.
        frames: frames per episode, ``dt`` seconds apart.
        height, width: head-camera image size in pixels.
        seed: seed of the whole run.
        task: task name (directory and instruction templates).
        task_config: RoboTwin task-config name (directory).
        jpeg_quality: JPEG quality of the stored frames, 1..100.
        dt: time between frames, s (RoboTwin: 0.06).
        embodiment: embodiment name or YAML path.
        gripper_toggle_probability: chance of a gripper toggle after each arm move (see
            :class:`~eva_sim.motions.MotionConfig`); 0 keeps each gripper where it starts.
    """

    out_dir: Path
    episodes: int = 10
    frames: int = 50
    height: int = 96
    width: int = 128
    seed: int = 0
    task: str = "synth_reach"
    task_config: str = "demo_clean"
    jpeg_quality: int = 90
    dt: float = ROBOTWIN_FRAME_INTERVAL_S
    embodiment: str = "aloha_agilex"
    gripper_toggle_probability: float = MotionConfig.gripper_toggle_probability

    def __post_init__(self) -> None:
        _require_int_in("episodes", self.episodes, 1, 1_000_000)
        _require_int_in("frames", self.frames, 2, 100_000)
        _require_int_in("height", self.height, 16, 4096)
        _require_int_in("width", self.width, 16, 4096)
        _require_int_in("seed", self.seed, 0, 2**63 - 1)
        _require_int_in("jpeg_quality", self.jpeg_quality, 1, 100)
        self.motion_config  # noqa: B018 (checks the motion fields now, naming them)
        if not self.dt > 0.0:
            raise ValueError(f"dt: must be > 0 seconds, got {self.dt}")
        for name in ("task", "task_config"):
            value = getattr(self, name)
            if not value or "/" in value or os.sep in value or value in {".", ".."}:
                raise ValueError(f"{name}: must be a plain directory name, got {value!r}")

    @property
    def motion_config(self) -> MotionConfig:
        """How the episodes' random motions are drawn (validates the motion fields)."""
        return MotionConfig(gripper_toggle_probability=self.gripper_toggle_probability)

    @property
    def episode_dir(self) -> Path:
        """``out_dir/<task>/<task_config>``: the directory the episodes go to."""
        return Path(self.out_dir) / self.task / self.task_config


@dataclass(frozen=True)
class Episode:
    """One rendered episode: joint vectors (drive targets) and the head camera's RGB frames."""

    seed: int
    joints: np.ndarray
    rgb: np.ndarray
    camera: CameraMatrices


def episode_seed(run_seed: int, index: int) -> int:
    """The seed of episode ``index`` of a run: a hash of both, so runs with nearby seeds never share episodes."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1)[0])


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB frame the way RoboTwin stores them.

    RoboTwin hands its RGB array straight to ``cv2.imencode``, which takes it for BGR, so
    ``cv2.imdecode`` returns RGB again (and PIL would swap red and blue). Writing the same way
    keeps one reader (:func:`eva_idm.data.decode_jpeg`) for RoboTwin's files and ours.
    """
    import cv2

    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"rgb: cv2 could not encode a frame of shape {rgb.shape} as JPEG")
    return encoded.tobytes()


def render_episode(
    scene: AgilexScene, seed: int, num_frames: int, dt: float, motion_config: MotionConfig | None = None
) -> Episode:
    """Draw a random motion for ``seed`` and render its ``num_frames`` frames."""
    rng = np.random.default_rng(seed)
    motion = random_bimanual_motion(scene.embodiment, scene, rng, (num_frames - 1) * dt, motion_config)
    joints = motion.sample(num_frames, dt)
    rgb = np.stack([scene.render_joints(pose) for pose in joints])
    return Episode(seed=seed, joints=joints, rgb=rgb, camera=scene.camera_matrices())


def write_episode_hdf5(path: Path, episode: Episode, arm_slices: dict[str, slice], jpeg_quality: int) -> None:
    """Write one episode in RoboTwin's classic layout; atomically, so a crash leaves no half file."""
    import h5py

    frames = len(episode.joints)
    jpegs = [encode_jpeg(frame, jpeg_quality) for frame in episode.rgb]
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w") as file:
        file.attrs["source"] = SOURCE_NOTE
        camera = file.create_group("observation/head_camera")
        # A fixed-length bytes array, as RoboTwin writes it; h5py strips the padding on read.
        camera.create_dataset("rgb", data=np.array(jpegs, dtype=np.bytes_))
        camera.create_dataset("intrinsic_cv", data=_per_frame(episode.camera.intrinsic_cv, frames))
        camera.create_dataset("extrinsic_cv", data=_per_frame(episode.camera.extrinsic_cv, frames))
        camera.create_dataset("cam2world_gl", data=_per_frame(episode.camera.cam2world_gl, frames))
        actions = file.create_group("joint_action")
        for arm, joints in arm_slices.items():
            arm_joints = episode.joints[:, joints]
            actions.create_dataset(f"{arm}_arm", data=arm_joints[:, :-1])
            actions.create_dataset(f"{arm}_gripper", data=arm_joints[:, -1])
        actions.create_dataset("vector", data=episode.joints)
        file.create_dataset("pointcloud", data=np.zeros((frames, 0)))
    os.replace(partial, path)


def synthesize(config: SynthConfig, progress: bool = True) -> Path:
    """Render and write ``config.episodes`` episodes; returns ``config.episode_dir``.

    Raises:
        ValueError: the episode directory already holds files.
    """
    from tqdm import tqdm

    from eva_idm.embodiment import load_embodiment
    from eva_sim.scene import AgilexScene

    embodiment = load_embodiment(config.embodiment)
    _check_arm_layout(embodiment.arm_slices(), embodiment.gripper_mask())
    root = config.episode_dir
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"out: {root} already holds files; choose another --out, --task or --config")
    for directory in (root / "data", root / "instructions"):
        directory.mkdir(parents=True, exist_ok=True)
    seeds = [episode_seed(config.seed, index) for index in range(config.episodes)]
    scene_info = {}
    with AgilexScene(embodiment, height=config.height, width=config.width) as scene:
        for index, seed in enumerate(tqdm(seeds, desc=f"synth {config.task}", unit="episode", disable=not progress)):
            episode = render_episode(scene, seed, config.frames, config.dt, config.motion_config)
            write_episode_hdf5(
                root / "data" / f"episode{index}.hdf5", episode, embodiment.arm_slices(), config.jpeg_quality
            )
            instructions = INSTRUCTIONS.get(config.task, GENERIC_INSTRUCTIONS)
            _write_json(root / "instructions" / f"episode{index}.json", instructions)
            scene_info[f"episode_{index}"] = _episode_info(config, seed, embodiment.name)
    (root / "seed.txt").write_text(" ".join(str(seed) for seed in seeds), encoding="utf-8")
    _write_json(root / "scene_info.json", scene_info)
    return root


def _episode_info(config: SynthConfig, seed: int, embodiment: str) -> dict[str, object]:
    return {
        "source": SOURCE_NOTE,
        "seed": seed,
        "run_seed": config.seed,
        "embodiment": embodiment,
        "frames": config.frames,
        "dt": config.dt,
        "image_size": [config.height, config.width],
        "jpeg_quality": config.jpeg_quality,
    }


def _check_arm_layout(arm_slices: dict[str, slice], gripper_mask: np.ndarray) -> None:
    """RoboTwin stores ``<arm>_arm`` and ``<arm>_gripper``: each arm must end with its gripper."""
    for arm, joints in arm_slices.items():
        arm_mask = gripper_mask[joints]
        if not arm_mask[-1] or arm_mask[:-1].any():
            raise ValueError(f"arms.{arm}: RoboTwin's layout needs the arm's gripper as its last joint")


def _per_frame(matrix: np.ndarray, frames: int) -> np.ndarray:
    return np.repeat(matrix[None], frames, axis=0)


def _write_json(path: Path, content: object) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _require_int_in(name: str, value: object, lowest: int, highest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lowest <= value <= highest:
        raise ValueError(f"{name}: must be a whole number in [{lowest}, {highest}], got {value!r}")
