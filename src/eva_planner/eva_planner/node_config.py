"""The planner node's settings as one validated, frozen dataclass, and what it builds from them, without ROS.

``config/planner.yaml`` -> declared ROS parameters -> :meth:`PlannerNodeConfig.from_parameters`
-> :class:`PlannerNodeConfig` -> the core. Every field is one ROS parameter of the same name; its
``description`` metadata (with the unit) becomes the parameter's descriptor. rclpy silently ignores
parameters nobody declares, so :meth:`~PlannerNodeConfig.from_parameters` is given every key the
user set and refuses the ones it does not know: a misspelt ``num_inference_steps`` fails configure
instead of planning with the default.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eva_idm.frames import SUPPORTED_FORMATS
from eva_idm.node_parameters import check_types, config_from_parameters, setting
from eva_planner.loading import load_world_model
from eva_planner.oracle import ORACLE_PREFIX, OracleWorldModel
from eva_planner.tiny import build_tiny_world_model
from eva_planner.world_model import DTYPES, PlanResult, SamplerConfig, WorldModel

if TYPE_CHECKING:  # best-of-N is optional and imported on use
    from eva_planner.best_of_n import PlanScorer

TINY_MODEL = "tiny"
IMAGE_TRANSPORTS = ("raw", "compressed")
MAX_SEED = 2**63 - 1  # seeds travel as int64 parameters and goal fields



@dataclasses.dataclass(frozen=True)
class PlannerNodeConfig:
    """Everything ``planner_node`` reads on configure; the defaults are the real robot's.

    The sampler fields mean what they mean in :class:`~eva_planner.world_model.SamplerConfig` and
    are checked by it. Model fields are passed to :func:`~eva_planner.loading.load_world_model`.
    """

    # World model.
    model: str = setting("", "'tiny' (random weights built in code), a diffusers-format Wan2.1 I2V directory, or "
                                "'oracle:<episode.hdf5>' (a recorded episode's video as the plan)")
    transformer_directory: str = setting("", "transformer directory used instead of <model>/transformer; '' = none")
    lora_adapters: tuple[str, ...] = setting((), "PEFT LoRA adapter directories, applied in order")
    merge_lora: bool = setting(True, "merge the LoRA adapters into the weights (faster sampling)")
    dtype: str = setting("bfloat16", "transformer and text-encoder dtype: float32, bfloat16 or float16")
    vae_dtype: str = setting("float32", "VAE dtype: float32, bfloat16 or float16")
    device: str = setting("cuda", "torch device of the world model (and of the IDM for best-of-N)")
    cpu_offload: str = setting("none", "components kept on the CPU until their stage runs: none, text_encoder "
                                       "(the umT5 encoder) or model (each on the device only while its stage runs)")
    attention_backend: str = setting("native", "diffusers attention backend of the transformer, e.g. native, "
                                               "_native_cudnn, flash, _flash_3, sage; tried on the device at configure")
    num_threads: int = setting(4, "torch CPU threads of this process [threads]; 0 = torch's default")
    # Sampler.
    num_frames: int = setting(49, "frames per plan, 4k+1 [frames]")
    height: int = setting(480, "plan frame height, multiple of 16 [px]")
    width: int = setting(640, "plan frame width, multiple of 16 [px]")
    fps: float = setting(16.0, "plan frame rate [Hz]")
    steps: int = setting(40, "denoising steps [steps]")
    solver: str = setting("unipc", "sampler: unipc or euler")
    shift: float = setting(3.0, "flow-matching sigma shift [dimensionless]")
    guidance_history: float = setting(1.5, "history guidance weight lambda_h [dimensionless]")
    guidance_language: float = setting(2.5, "language guidance weight lambda_l [dimensionless]")
    negative_prompt: str = setting("", "prompt of the no-language guidance pass")
    history_timestep: str = setting("last", "timestep of the clean first latent: last or zero")
    clip_preprocessing: str = setting("eva", "CLIP image preprocessing: eva or processor")
    modulation: str = setting("per_frame", "AdaLN modulation: per_frame or per_token")
    batch_guidance: bool = setting(False, "run the guidance passes as one batch (faster on a GPU, more memory)")
    vae_decode: str = setting("full", "VAE decode: full, or tiled (less memory, slower, blended seams)")
    vae_tile_size: int = setting(256, "tiled decode: tile side, multiple of 8 [px]")
    vae_tile_stride: int = setting(192, "tiled decode: distance between tiles, multiple of 8, <= vae_tile_size [px]")
    seed: int = setting(-1, "sampler seed when a goal asks for none; -1 = a fresh random seed per plan")
    # Inputs.
    image_transport: str = setting("raw", "head camera input: raw (head_camera/image_raw) or compressed")
    max_image_age: float = setting(5.0, "newest image older than this is not planned from [s, steady clock]")
    image_timeout: float = setting(5.0, "how long a goal waits for a fresh image before NO_IMAGE [s]")
    # Outputs and goals.
    frame_format: str = setting("png", "encoding of the plan's frames: png or rgb8")
    goal_timeout: float = setting(900.0, "overall limit of an eva/execute goal that sets none [s]")
    best_of_n: int = setting(1, "candidates sampled and ranked by executability per plan; > 1 needs idm_checkpoint")
    candidate_batch: int = setting(1, "best-of-N candidates denoised together (faster on a GPU, more memory)")
    idm_checkpoint: str = setting("", "IDM checkpoint directory used to rank best-of-N candidates; '' = none")
    embodiment: str = setting("aloha_agilex", "embodiment name or YAML path (best-of-N, the oracle's joint order)")
    diagnostics_period: float = setting(1.0, "period of the /diagnostics status [s]")

    def __post_init__(self) -> None:
        check_types(self)
        if not self.model:
            raise ValueError(f"model: must be {TINY_MODEL!r}, a model directory or "
                             f"'{ORACLE_PREFIX}<episode.hdf5>', got {self.model!r}")
        if self.model.startswith(ORACLE_PREFIX) and not self.model[len(ORACLE_PREFIX):]:
            raise ValueError(f"model: {ORACLE_PREFIX!r} needs an episode file, e.g. 'oracle:data/episode0.hdf5'")
        for name in ("dtype", "vae_dtype"):
            _check_choice(name, getattr(self, name), tuple(DTYPES))
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device: not a torch device, got {self.device!r}") from None
        if self.model == TINY_MODEL:
            if self.dtype != "float32":
                raise ValueError(f"dtype: model 'tiny' is built in float32, got {self.dtype!r}")
            if self.transformer_directory or self.lora_adapters:
                raise ValueError("transformer_directory/lora_adapters: model 'tiny' takes neither")
        if self.num_threads < 0:
            raise ValueError(f"num_threads: must be >= 0 (0 = torch's default), got {self.num_threads}")
        if not -1 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed: must be -1 (random) or in [0, {MAX_SEED}], got {self.seed}")
        self.sampler_config(seed=0)  # SamplerConfig checks the sampler fields, naming them
        _check_choice("image_transport", self.image_transport, IMAGE_TRANSPORTS)
        _check_choice("frame_format", self.frame_format, SUPPORTED_FORMATS)
        for name in ("max_image_age", "goal_timeout", "diagnostics_period"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name}: must be a finite number > 0 [s], got {getattr(self, name)}")
        if not (math.isfinite(self.image_timeout) and self.image_timeout >= 0):
            raise ValueError(f"image_timeout: must be a finite number >= 0 [s], got {self.image_timeout}")
        if self.best_of_n < 1:
            raise ValueError(f"best_of_n: must be >= 1, got {self.best_of_n}")
        if self.best_of_n > 1 and not self.idm_checkpoint:
            raise ValueError(f"best_of_n: {self.best_of_n} candidates need an idm_checkpoint to rank them")
        if not self.embodiment:
            raise ValueError("embodiment: must name an embodiment or a YAML file, got ''")

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> PlannerNodeConfig:
        """Build from ``{parameter name: value}``; unknown names, wrong types and bad values raise ValueError.

        ``values`` must hold every key the user set (not only the declared ones), so that a misspelt
        key is reported instead of silently ignored. ``None`` for a list stands for an empty list
        (a YAML ``[]`` reaches rclpy as an unset parameter).
        """
        return config_from_parameters(cls, values, "config/planner.yaml")

    def sampler_config(self, seed: int) -> SamplerConfig:
        """The :class:`SamplerConfig` of one plan sampled with ``seed``."""
        return SamplerConfig(
            num_frames=self.num_frames,
            height=self.height,
            width=self.width,
            fps=self.fps,
            steps=self.steps,
            solver=self.solver,
            shift=self.shift,
            guidance_history=self.guidance_history,
            guidance_language=self.guidance_language,
            negative_prompt=self.negative_prompt,
            seed=seed,
            dtype=self.dtype,
            device=self.device,
            history_timestep=self.history_timestep,
            clip_preprocessing=self.clip_preprocessing,
            modulation=self.modulation,
            batch_guidance=self.batch_guidance,
            candidate_batch=self.candidate_batch,
            cpu_offload=self.cpu_offload,
            vae_decode=self.vae_decode,
            vae_tile_size=self.vae_tile_size,
            vae_tile_stride=self.vae_tile_stride,
            attention_backend=self.attention_backend,
        )

    def plan_seed(self, requested: int = -1) -> int:
        """The seed of the next plan: ``requested`` if >= 0, else the configured one, else a fresh random one."""
        if requested > MAX_SEED:
            raise ValueError(f"seed: must be -1 (random) or in [0, {MAX_SEED}], got {requested}")
        for seed in (requested, self.seed):
            if seed >= 0:
                return seed
        return secrets.randbelow(MAX_SEED + 1)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {list(choices)}, got {value!r}")


def build_world_model(config: PlannerNodeConfig) -> WorldModel | OracleWorldModel:
    """The configured world model: the random ``tiny`` preset, an oracle episode, or loaded from local files.

    A network model's ``attention_backend`` is tried on the device here, so that an unusable one
    fails configure rather than the first goal.
    """
    if config.model.startswith(ORACLE_PREFIX):
        from eva_idm.embodiment import load_embodiment

        joint_names = load_embodiment(config.embodiment).joint_names
        return OracleWorldModel(config.model[len(ORACLE_PREFIX):], joint_names)
    if config.model == TINY_MODEL:
        world_model = build_tiny_world_model()
    else:
        world_model = load_world_model(
            config.model,
            transformer_directory=config.transformer_directory or None,
            lora_adapters=config.lora_adapters,
            merge_lora=config.merge_lora,
            dtype=config.dtype,
            vae_dtype=config.vae_dtype,
            device=config.device,
            cpu_offload=config.cpu_offload,
        )
    world_model.check_attention_backend(config.sampler_config(seed=0))
    return world_model


def build_plan_scorer(config: PlannerNodeConfig) -> PlanScorer | None:
    """The best-of-N scorer (the IDM of ``idm_checkpoint`` and the embodiment's gate), or None without a checkpoint."""
    if not config.idm_checkpoint:
        return None
    from eva_idm.embodiment import load_embodiment
    from eva_idm.idm.checkpoint import load_checkpoint
    from eva_planner.best_of_n import PlanScorer

    embodiment = load_embodiment(config.embodiment)
    idm = load_checkpoint(config.idm_checkpoint, embodiment.name, embodiment.joint_names, device=config.device)
    return PlanScorer(idm, embodiment, frame_format=config.frame_format)


def sample_plan(
    world_model: WorldModel | OracleWorldModel,
    scorer: PlanScorer | None,
    image: np.ndarray,
    instruction: str,
    config: SamplerConfig,
    n: int,
    measured_positions: np.ndarray | None,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[PlanResult, dict[str, float]]:
    """One plan and its stage timings [s]: ``generate``, or for ``n`` > 1 the best of ``n`` ranked by ``scorer``.

    Best-of-N adds the stage ``best_of_n``: the whole search, scoring included.
    """
    if n == 1:
        result = world_model.generate(image, instruction, config, should_stop=should_stop, on_step=on_step)
        return result, dict(result.timings)
    if scorer is None:
        raise ValueError(f"best_of_n: {n} candidates need an idm_checkpoint to rank them")
    from eva_planner.best_of_n import best_of_n

    started = time.perf_counter()
    best = best_of_n(
        world_model, image, instruction, config, n, scorer, measured_positions, should_stop=should_stop, on_step=on_step
    ).best
    return best, {**best.timings, "best_of_n": time.perf_counter() - started}
