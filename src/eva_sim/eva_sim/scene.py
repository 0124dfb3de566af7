"""The MuJoCo aloha-agilex scene: set a 14-dim joint vector, render the head camera headless.

The model (``assets/aloha_agilex``) holds the two front arms, RoboTwin's table, wall, lights and
head camera. Poses are set kinematically (no physics): RoboTwin stores drive targets, so the
picture of a frame is the robot *at* that frame's joint vector.

The joint vector follows the embodiment (``fl_joint1..6, left_gripper, fr_joint1..6,
right_gripper``). Arm joints keep their names in the MJCF; each normalised gripper drives the
finger slide joint of its arm (``fl_joint7``/``fr_joint7``, metres via the embodiment's gripper
mapping) and the second finger follows through the model's joint equality (the URDF mimic).

Rendering runs without a display: ``MUJOCO_GL=egl`` unless set, ``osmesa`` when only OSMesa is
installed. Shadows and reflections are switched off; they are ~90 % of CPU render time.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from eva_idm.embodiment import Embodiment

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "aloha_agilex"
SCENE_XML = ASSET_DIR / "agilex_scene.xml"
HEAD_CAMERA = "head_camera"
# Point between the fingertips, in the wrist (last arm joint) body frame: the fingers reach
# x = 0.07..0.156 m along the wrist's x axis in this model's meshes.
FINGERTIP_OFFSET = np.array([0.13, 0.0, 0.0])
# Index, within an arm's joints, of the joint whose body is the elbow (joint4 -> link4).
ELBOW_JOINT_INDEX = 3
INSTALL_HINT = (
    "install Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0), "
    "or OSMesa (apt-get install libosmesa6) and set MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa"
)


def configure_gl_backend() -> str:
    """Choose MuJoCo's headless OpenGL backend; must run before ``mujoco`` is first imported.

    An explicit ``MUJOCO_GL`` wins. Otherwise EGL is used when its library is present (it needs
    no display and no extra package on Debian), then OSMesa.

    Raises:
        RuntimeError: neither library is installed; the message says what to install.
    """
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not backend:
        if ctypes.util.find_library("EGL"):
            backend = "egl"
        elif ctypes.util.find_library("OSMesa"):
            backend = "osmesa"
        else:
            raise RuntimeError(f"MuJoCo headless rendering: found neither libEGL nor libOSMesa; {INSTALL_HINT}")
        os.environ["MUJOCO_GL"] = backend
    if backend == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return backend


@functools.cache
def import_mujoco() -> ModuleType:
    """``mujoco``, imported after the GL backend is chosen (it reads ``MUJOCO_GL`` on import)."""
    configure_gl_backend()
    import mujoco

    return mujoco


@dataclass(frozen=True)
class Workspace:
    """Cheap geometric checks that keep random poses plausible and visible (world frame, metres).

    Link and fingertip points are body origins, not meshes: enough to reject poses that sink
    into the table, hit the head camera, cross the other arm, or leave the picture.

    Attributes:
        table_top_z: height of the table top.
        link_clearance: how far every link from link2 to the fingers stays above the table.
        min_camera_distance: how far every link stays from the head camera.
        max_elbow_z: highest allowed elbow (link4), so the forearm does not fill the view.
        tip_z, tip_y: ranges of the fingertip point in a target pose.
        view_margin: fraction of the image the fingertip keeps from each border in a target pose.
        view_aspect: width / height of the reference image the view check uses (RoboTwin's
            D435, 320x240), so motions do not depend on the render size.
        min_arm_separation: least distance between the two arms' forearm and gripper points.
    """

    table_top_z: float = 0.74
    link_clearance: float = 0.03
    min_camera_distance: float = 0.33
    max_elbow_z: float = 1.12
    tip_z: tuple[float, float] = (0.77, 1.15)
    tip_y: tuple[float, float] = (-0.3, 0.35)
    view_margin: float = 0.05
    view_aspect: float = 4.0 / 3.0
    min_arm_separation: float = 0.12


@dataclass(frozen=True)
class CameraMatrices:
    """A camera's matrices in RoboTwin's conventions (``observation/<camera>/...`` datasets).

    Attributes:
        intrinsic_cv: 3x3 pinhole matrix in pixels for the render size.
        extrinsic_cv: 3x4 world -> camera transform, OpenCV axes (x right, y down, z forward).
        cam2world_gl: 4x4 camera -> world transform, OpenGL axes (x right, y up, z backward).
    """

    intrinsic_cv: np.ndarray
    extrinsic_cv: np.ndarray
    cam2world_gl: np.ndarray


@dataclass(frozen=True)
class ArmChain:
    """Where one arm's joints and links live in the MuJoCo model.

    Attributes:
        name: the embodiment's arm name (``left``/``right``).
        joint_slice: the arm's slice of the embodiment joint vector.
        qpos_addresses: qpos index of each of the arm's joints, gripper -> finger slide joint.
        gripper_index: position of the gripper within the arm's joints.
        link_bodies: bodies checked against table and camera (link2 .. both fingers).
        arm_point_bodies: bodies checked against the other arm (elbow .. fingers).
        elbow_body: body of the elbow joint.
        wrist_body: body of the last arm joint; the fingertip point is fixed in it.
    """

    name: str
    joint_slice: slice
    qpos_addresses: np.ndarray
    gripper_index: int
    link_bodies: np.ndarray
    arm_point_bodies: np.ndarray
    elbow_body: int
    wrist_body: int


@dataclass(frozen=True)
class JointMimic:
    """A joint equality ``follower = poly(leader)`` (qpos addresses, MuJoCo's 5 polynomial coefficients)."""

    follower: int
    leader: int
    coefficients: np.ndarray


class AgilexScene:
    """The aloha-agilex scene with one offscreen renderer; not thread-safe (one per process/thread).

    Example::

        with AgilexScene(height=96, width=128) as scene:
            scene.set_joints(np.zeros(14))
            rgb = scene.render()          # (96, 128, 3) uint8, RGB
    """

    def __init__(
        self,
        embodiment: Embodiment | None = None,
        height: int = 96,
        width: int = 128,
        camera: str = HEAD_CAMERA,
        xml_path: Path = SCENE_XML,
        workspace: Workspace | None = None,
    ):
        if embodiment is None:
            from eva_idm.embodiment import load_embodiment

            embodiment = load_embodiment("aloha_agilex")
        _require_image_size(height, width)
        mujoco = import_mujoco()
        self.embodiment = embodiment
        self.height, self.width = height, width
        self.model = mujoco.MjModel.from_xml_path(str(xml_path))
        self.data = mujoco.MjData(self.model)
        self.camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self.camera_id < 0:
            raise ValueError(f"camera: {camera!r} is not a camera of {xml_path}")
        self.camera = camera
        self.workspace = workspace or Workspace()
        self.mimics = _joint_mimics(self.model)
        self.arms = {name: self._arm_chain(name, arm_slice) for name, arm_slice in embodiment.arm_slices().items()}
        mujoco.mj_forward(self.model, self.data)
        self._renderer = self._make_renderer()

    def _arm_chain(self, name: str, joint_slice: slice) -> ArmChain:
        mujoco = import_mujoco()
        joint_names = self.embodiment.joint_names[joint_slice]
        grippers = [index for index, joint in enumerate(joint_names) if joint in self.embodiment.gripper_joints]
        if len(grippers) != 1:
            raise ValueError(f"arms.{name}: expected exactly one gripper joint, got {list(joint_names)}")
        gripper_index = grippers[0]
        arm_joints = [joint for joint in joint_names if joint not in self.embodiment.gripper_joints]
        joint_ids = []
        for joint in arm_joints:
            joint_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, joint)
            if joint_id < 0:
                raise ValueError(f"joint_names: {joint!r} is not a joint of the MuJoCo model")
            joint_ids.append(joint_id)
        wrist_body = int(self.model.jnt_bodyid[joint_ids[-1]])
        finger = self._finger_joint(joint_names[gripper_index], wrist_body)
        joint_ids.insert(gripper_index, finger)
        finger_qpos = self.model.jnt_qposadr[finger]
        follower_joints = [self._joint_at(mimic.follower) for mimic in self.mimics if mimic.leader == finger_qpos]
        chain_bodies = [int(self.model.jnt_bodyid[joint_id]) for joint_id in joint_ids if joint_id != finger]
        finger_bodies = [int(self.model.jnt_bodyid[joint_id]) for joint_id in (finger, *follower_joints)]
        return ArmChain(
            name=name,
            joint_slice=joint_slice,
            qpos_addresses=self.model.jnt_qposadr[joint_ids].astype(int),
            gripper_index=gripper_index,
            link_bodies=np.array(chain_bodies[1:] + finger_bodies),
            arm_point_bodies=np.array(chain_bodies[ELBOW_JOINT_INDEX:] + finger_bodies),
            elbow_body=chain_bodies[ELBOW_JOINT_INDEX],
            wrist_body=wrist_body,
        )

    def _finger_joint(self, gripper: str, wrist_body: int) -> int:
        """The slide joint below the wrist that is not a mimic follower: the one the gripper drives."""
        mujoco = import_mujoco()
        follower_addresses = {mimic.follower for mimic in self.mimics}
        candidates = [
            joint_id
            for joint_id in range(self.model.njnt)
            if self.model.jnt_type[joint_id] == mujoco.mjtJoint.mjJNT_SLIDE
            and self.model.jnt_qposadr[joint_id] not in follower_addresses
            and _descends_from(self.model.body_parentid, int(self.model.jnt_bodyid[joint_id]), wrist_body)
        ]
        if len(candidates) != 1:
            names = [self.model.joint(joint_id).name for joint_id in candidates]
            raise ValueError(f"gripper_joints: {gripper!r} needs one finger slide joint below its wrist, found {names}")
        travel = self.model.jnt_range[candidates[0]][1]
        if self.embodiment.gripper_open_m > travel + 1e-3:
            raise ValueError(
                f"gripper_open_m: {self.embodiment.gripper_open_m} m exceeds the finger travel {travel} m of the model"
            )
        return candidates[0]

    def _joint_at(self, qpos_address: int) -> int:
        return int(np.flatnonzero(self.model.jnt_qposadr == qpos_address)[0])

    def _make_renderer(self) -> object:
        mujoco = import_mujoco()
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, self.width)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, self.height)
        self.model.vis.quality.shadowsize = 0
        self.model.vis.quality.offsamples = 0
        try:
            renderer = mujoco.Renderer(self.model, self.height, self.width)
        except Exception as error:  # the GL libraries fail in many ways; all mean "no context"
            backend = os.environ.get("MUJOCO_GL", "")
            raise RuntimeError(
                f"MuJoCo rendering with MUJOCO_GL={backend} could not create an OpenGL context ({error}); "
                f"{INSTALL_HINT}"
            ) from error
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        return renderer

    def set_joints(self, joints: np.ndarray) -> None:
        """Pose both arms from a joint vector in the embodiment's order (grippers 0 closed .. 1 open)."""
        joints = self._checked_joints(joints)
        for arm in self.arms.values():
            self._write_arm(arm, joints[arm.joint_slice])
        import_mujoco().mj_forward(self.model, self.data)

    def render(self) -> np.ndarray:
        """RGB ``(height, width, 3)`` uint8 picture of the current pose from the scene's camera."""
        self._renderer.update_scene(self.data, camera=self.camera)
        return self._renderer.render()

    def render_joints(self, joints: np.ndarray) -> np.ndarray:
        """Pose the arms, then render; see :meth:`set_joints` and :meth:`render`."""
        self.set_joints(joints)
        return self.render()

    def camera_matrices(self) -> CameraMatrices:
        """The render camera's matrices at the current pose and render size."""
        rotation_gl = self.data.cam_xmat[self.camera_id].reshape(3, 3).copy()
        position = self.data.cam_xpos[self.camera_id].copy()
        cam2world_gl = np.eye(4)
        cam2world_gl[:3, :3], cam2world_gl[:3, 3] = rotation_gl, position
        world2cam_cv = (rotation_gl @ np.diag([1.0, -1.0, -1.0])).T
        extrinsic_cv = np.hstack([world2cam_cv, (-world2cam_cv @ position)[:, None]])
        focal = 0.5 * self.height / np.tan(np.deg2rad(self.model.cam_fovy[self.camera_id]) / 2.0)
        intrinsic_cv = np.array([[focal, 0.0, self.width / 2.0], [0.0, focal, self.height / 2.0], [0.0, 0.0, 1.0]])
        return CameraMatrices(intrinsic_cv, extrinsic_cv, cam2world_gl)

    def fingertip(self, arm: str) -> np.ndarray:
        """World position of the point between ``arm``'s fingertips at the current kinematic pose."""
        chain = self.arms[arm]
        rotation = self.data.xmat[chain.wrist_body].reshape(3, 3)
        return self.data.xpos[chain.wrist_body] + rotation @ FINGERTIP_OFFSET

    def pose_is_valid(self, arm: str, arm_joints: np.ndarray) -> bool:
        """Whether ``arm`` at ``arm_joints`` (its slice of the joint vector) is a good target pose.

        Links clear the table and the camera, the elbow stays low, and the fingertip is inside
        the workspace box and the head camera's view. Moves only this arm of the scene's pose.
        """
        chain, workspace = self.arms[arm], self.workspace
        self._write_arm(chain, np.asarray(arm_joints, dtype=np.float64))
        self._update_kinematics()
        tip = self.fingertip(arm)
        return (
            self._links_clear(chain)
            and self.data.xpos[chain.elbow_body][2] < workspace.max_elbow_z
            and workspace.tip_z[0] < tip[2] < workspace.tip_z[1]
            and workspace.tip_y[0] < tip[1] < workspace.tip_y[1]
            and self._in_view(tip)
        )

    def path_is_clear(self, joints: np.ndarray) -> bool:
        """Whether a whole-robot pose on the way between targets is safe: links clear, arms apart."""
        joints, workspace = self._checked_joints(joints), self.workspace
        for chain in self.arms.values():
            self._write_arm(chain, joints[chain.joint_slice])
        self._update_kinematics()
        if not all(self._links_clear(chain) for chain in self.arms.values()):
            return False
        points = [self._arm_points(chain) for chain in self.arms.values()]
        for index, first in enumerate(points):
            for second in points[index + 1 :]:
                gaps = np.linalg.norm(first[:, None, :] - second[None, :, :], axis=-1)
                if gaps.min() < workspace.min_arm_separation:
                    return False
        return True

    def close(self) -> None:
        """Release the OpenGL context."""
        self._renderer.close()

    def __enter__(self) -> AgilexScene:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _checked_joints(self, joints: np.ndarray) -> np.ndarray:
        joints = np.asarray(joints, dtype=np.float64)
        if joints.shape != (self.embodiment.num_joints,) or not np.all(np.isfinite(joints)):
            raise ValueError(
                f"joints: expected {self.embodiment.num_joints} finite values in the order "
                f"{list(self.embodiment.joint_names)}, got shape {joints.shape}: {joints}"
            )
        return joints

    def _write_arm(self, chain: ArmChain, arm_joints: np.ndarray) -> None:
        qpos = arm_joints.copy()
        gripper = np.clip(arm_joints[chain.gripper_index], 0.0, 1.0)
        qpos[chain.gripper_index] = self.embodiment.gripper_to_metres(gripper)
        self.data.qpos[chain.qpos_addresses] = qpos
        for mimic in self.mimics:
            if mimic.leader in chain.qpos_addresses:
                offset = self.data.qpos[mimic.leader] - self.model.qpos0[mimic.leader]
                value = np.polynomial.polynomial.polyval(offset, mimic.coefficients)
                self.data.qpos[mimic.follower] = self.model.qpos0[mimic.follower] + value

    def _update_kinematics(self) -> None:
        """Body and camera poses only: enough for the geometric checks, far cheaper than rendering."""
        mujoco = import_mujoco()
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    def _links_clear(self, chain: ArmChain) -> bool:
        workspace = self.workspace
        links = self.data.xpos[chain.link_bodies]
        camera = self.data.cam_xpos[self.camera_id]
        above_table = links[:, 2].min() > workspace.table_top_z + workspace.link_clearance
        return bool(above_table and np.linalg.norm(links - camera, axis=1).min() >= workspace.min_camera_distance)

    def _arm_points(self, chain: ArmChain) -> np.ndarray:
        return np.vstack([self.data.xpos[chain.arm_point_bodies], self.fingertip(chain.name)])

    def _in_view(self, point: np.ndarray) -> bool:
        """Whether ``point`` projects inside the view, away from the borders by ``view_margin``."""
        rotation_gl = self.data.cam_xmat[self.camera_id].reshape(3, 3)
        local = rotation_gl.T @ (point - self.data.cam_xpos[self.camera_id])
        depth = -local[2]  # MuJoCo cameras look along their -z axis
        if depth <= 0.0:
            return False
        half_height = np.tan(np.deg2rad(self.model.cam_fovy[self.camera_id]) / 2.0)
        limit = 1.0 - 2.0 * self.workspace.view_margin
        horizontal = abs(local[0] / depth) / (half_height * self.workspace.view_aspect)
        vertical = abs(local[1] / depth) / half_height
        return bool(horizontal < limit and vertical < limit)


def _joint_mimics(model: object) -> list[JointMimic]:
    """Every active joint equality of the model, as qpos addresses and coefficients."""
    mujoco = import_mujoco()
    mimics = []
    for index in range(model.neq):
        is_joint_pair = model.eq_type[index] == mujoco.mjtEq.mjEQ_JOINT and model.eq_obj2id[index] >= 0
        if not is_joint_pair or not model.eq_active0[index]:
            continue
        follower = int(model.jnt_qposadr[model.eq_obj1id[index]])
        leader = int(model.jnt_qposadr[model.eq_obj2id[index]])
        mimics.append(JointMimic(follower, leader, model.eq_data[index, :5].copy()))
    return mimics


def _descends_from(parents: np.ndarray, body: int, ancestor: int) -> bool:
    while body != ancestor and body != 0:
        body = int(parents[body])
    return body == ancestor


def _require_image_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 16 <= value <= 4096:
            raise ValueError(f"{name}: must be a whole number of pixels in [16, 4096], got {value!r}")
