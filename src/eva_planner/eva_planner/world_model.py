"""EVA's video world model: Wan2.1 image-to-video components from diffusers, EVA's sampler on top.

Diffusers' ``WanImageToVideoPipeline`` conditions on the first frame through the extra input
channels. EVA's model was trained differently (diffusion forcing, ``notes/eva_method.md`` §1.3), so
:meth:`WorldModel.generate` runs its own loop over the same components:

1. the conditioning image is resized (cover, then centre-crop) to the plan's size, VAE-encoded
   (distribution mode) and normalised: the clean history latent;
2. latent frame 0 is overwritten with the history latent before every transformer pass and
   before decoding; its timestep is the *last* inference timestep (``history_timestep="last"``,
   as EVA samples) or 0 (``"zero"``, as EVA trains); the other frames get the current timestep;
3. the 20 extra I2V input channels are zeros, CLIP features enter every pass through the image
   cross-attention, and each latent frame gets its own AdaLN modulation
   (:mod:`eva_planner.transformer_forward`);
4. three passes per step, ``f = (1+λl+λh)·f_c − λl·f_nolang − λh·f_nohist``: ``f_nolang`` uses the
   negative prompt, ``f_nohist`` replaces the history latent with fresh noise (drawn every step)
   at the first, maximum-noise timestep. A pass whose λ is 0 is skipped;
5. UniPC (flow prediction, order 2, bh2) or flow-matching Euler over EVA's sigma table
   (:func:`eva_sigmas`), with a fresh scheduler per plan;
6. VAE decode, clamp to [-1, 1], uint8.

Memory and speed options (``SamplerConfig.cpu_offload``, ``vae_decode``, ``attention_backend``,
``num_threads``; costs and numbers in ``docs/world_model_options.md``) change where the
components live and which kernels run, never the sampler's arithmetic: offloading gives identical
plans, another attention kernel the same plan up to rounding, and tiled decoding the same latents
with slightly different frames.

All noise comes from a CPU ``torch.Generator`` seeded with ``SamplerConfig.seed``: first the
initial latents ``(1, z_dim, latent_frames, height/8, width/8)``, then, per step, the history
noise of the ``f_nohist`` pass. A plan is therefore reproducible on any device. Latents and the
guidance combination stay float32 between transformer passes (EVA keeps them in bf16); only the
transformer's inputs are cast to its dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend, dispatch_attention_fn
from torch import Tensor, nn
from transformers.image_utils import PILImageResampling

from eva_planner.prompt_cache import TEXT_CONTEXT_LENGTH, PromptEmbeddingCache
from eva_planner.transformer_forward import MODULATIONS, Modulation, predict_velocity

SOLVERS = ("unipc", "euler")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HISTORY_TIMESTEPS = ("last", "zero")
CLIP_PREPROCESSING = ("eva", "processor")
NUM_TRAIN_TIMESTEPS = 1000
SIGMA_TOLERANCE = 1e-5
CPU_OFFLOADS = ("none", "text_encoder", "model")
VAE_DECODES = ("full", "tiled")
VAE_SPATIAL_STRIDE = 8
# Diffusers' attention backends, less the "*_hub" ones: those download kernels from the Hugging Face
# Hub at run time, and this stack only ever reads local files.
HUB_ATTENTION_SUFFIX = "_hub"
ATTENTION_BACKENDS = tuple(
    name.value for name in AttentionBackendName if not name.value.endswith(HUB_ATTENTION_SUFFIX)
)
COMPONENTS = ("text_encoder", "image_encoder", "transformer", "vae")
# What each stage of a plan runs; with cpu_offload="model" only these are on the device meanwhile.
# The text encoder is not listed: the prompt cache moves it, and only to encode a prompt it has not seen.
STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "encode_image": ("image_encoder", "vae"),
    "denoise": ("transformer",),
    "decode": ("vae",),
}


class PlanningCancelled(RuntimeError):  # noqa: N818 (the name the planner's callers use)
    """``should_stop`` asked the sampler to stop; ``completed_steps`` of ``steps`` had run."""

    def __init__(self, completed_steps: int, steps: int):
        super().__init__(f"planning cancelled after {completed_steps} of {steps} denoising steps")
        self.completed_steps = completed_steps
        self.steps = steps


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How one plan is sampled. The defaults are EVA's inference settings on the 14B model.

    Choices where EVA's sources disagree (``notes/eva_method.md`` §1.5, §7):

    * ``guidance_history`` / ``guidance_language``: the README's 1.5 / 2.5, not the config's 2.0 / 3.0;
    * ``history_timestep``: ``"last"`` (≈71.4, what EVA's sampler does) or ``"zero"`` (what SFT saw);
    * ``clip_preprocessing``: ``"eva"`` squashes the whole frame to the CLIP input size with bicubic
      resampling and no crop, as EVA does; ``"processor"`` uses the image processor's own
      shortest-edge resize and centre crop (the diffusers pipeline's behaviour);
    * ``modulation``: ``"per_frame"`` (one AdaLN modulation per latent frame) or ``"per_token"``
      (diffusers' stock per-token path; same numbers, far more memory);
    * ``batch_guidance``: run the guidance passes as one batch (faster on a GPU, more memory)
      instead of one after the other.
    * ``candidate_batch``: how many best-of-N candidates :meth:`WorldModel.generate_batch` samples
      together through the transformer (one batch per step instead of one plan after the other;
      the transformer's activation memory grows with it). Each candidate keeps its own seed's
      noise, so a batched candidate is the plan :meth:`WorldModel.generate` makes with that seed
      (equal up to floating-point reordering).

    Memory and speed options (``docs/world_model_options.md``):

    * ``cpu_offload``: which components wait on the CPU (see :func:`resident_components`):
      ``"none"`` keeps all four on ``device``; ``"text_encoder"`` keeps the umT5 encoder on the CPU
      except while it encodes a new prompt; ``"model"`` does that too and moves every other
      component to ``device`` only for the stage that runs it (:data:`STAGE_COMPONENTS`), so the
      transformer is never there with another component.
    * ``vae_decode``: ``"full"`` or ``"tiled"``: spatial tiles of ``vae_tile_size`` pixels every
      ``vae_tile_stride`` pixels, blended over the overlap (diffusers' ``AutoencoderKLWan`` tiling;
      a plan no larger than one tile decodes in full). Diffusers' Wan VAE already decodes one latent
      frame at a time, so there is no separate frame-sliced mode.
    * ``attention_backend``: diffusers' attention dispatcher backend of the transformer, e.g.
      ``"native"`` (torch SDPA), ``"_native_cudnn"``, ``"flash"``, ``"_flash_3"``, ``"sage"``;
      :meth:`WorldModel.check_attention_backend` tries it on the device before a plan.

    ``dtype`` must be the dtype the transformer was loaded in (it is checked, not converted);
    ``num_threads`` bounds torch's CPU threads during a plan (None leaves them alone).
    """

    num_frames: int = 49
    height: int = 480
    width: int = 640
    fps: float = 16.0
    steps: int = 40
    solver: Literal["unipc", "euler"] = "unipc"
    shift: float = 3.0
    guidance_history: float = 1.5
    guidance_language: float = 2.5
    negative_prompt: str = ""
    seed: int = 0
    dtype: str = "bfloat16"
    device: str = "cuda"
    history_timestep: Literal["last", "zero"] = "last"
    clip_preprocessing: Literal["eva", "processor"] = "eva"
    modulation: Modulation = "per_frame"
    batch_guidance: bool = False
    candidate_batch: int = 1
    num_threads: int | None = None
    cpu_offload: Literal["none", "text_encoder", "model"] = "none"
    vae_decode: Literal["full", "tiled"] = "full"
    vae_tile_size: int = 256
    vae_tile_stride: int = 192
    attention_backend: str = "native"

    def __post_init__(self):
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (the VAE's temporal stride is 4), got {self.num_frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < 16 or value % 16:
                raise ValueError(f"{name} must be a positive multiple of 16 (VAE 8 x patch 2), got {value}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        _check_choice("solver", self.solver, SOLVERS)
        _check_choice("dtype", self.dtype, tuple(DTYPES))
        _check_choice("history_timestep", self.history_timestep, HISTORY_TIMESTEPS)
        _check_choice("clip_preprocessing", self.clip_preprocessing, CLIP_PREPROCESSING)
        _check_choice("modulation", self.modulation, MODULATIONS)
        if not self.shift > 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        for name in ("guidance_history", "guidance_language"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if isinstance(self.candidate_batch, bool) or not isinstance(self.candidate_batch, int) \
                or self.candidate_batch < 1:
            raise ValueError(f"candidate_batch must be a whole number >= 1, got {self.candidate_batch!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be at least 1 (or None for torch's default), got {self.num_threads}")
        _check_choice("cpu_offload", self.cpu_offload, CPU_OFFLOADS)
        _check_choice("vae_decode", self.vae_decode, VAE_DECODES)
        for name in ("vae_tile_size", "vae_tile_stride"):
            value = getattr(self, name)
            if value < VAE_SPATIAL_STRIDE or value % VAE_SPATIAL_STRIDE:
                raise ValueError(f"{name} must be a positive multiple of {VAE_SPATIAL_STRIDE} (the VAE's stride) [px], "
                                 f"got {value}")
        if self.vae_tile_stride > self.vae_tile_size:
            raise ValueError(f"vae_tile_stride must be at most vae_tile_size ({self.vae_tile_size}) so that tiles "
                             f"overlap [px], got {self.vae_tile_stride}")
        if self.attention_backend.endswith(HUB_ATTENTION_SUFFIX):
            raise ValueError(f"attention_backend {self.attention_backend!r} downloads its kernel from the Hugging Face "
                             f"Hub at run time; choose a locally installed one of {ATTENTION_BACKENDS}")
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The transformer's compute dtype."""
        return DTYPES[self.dtype]

    @property
    def latent_frames(self) -> int:
        """Latent frames of a plan: the first pixel frame, then one per 4."""
        return 1 + (self.num_frames - 1) // 4


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def resident_components(cpu_offload: str) -> tuple[str, ...]:
    """The components that stay on the device between stages (and between plans) under ``cpu_offload``."""
    _check_choice("cpu_offload", cpu_offload, CPU_OFFLOADS)
    if cpu_offload == "none":
        return COMPONENTS
    if cpu_offload == "text_encoder":
        return tuple(name for name in COMPONENTS if name != "text_encoder")
    return ()


def check_attention_backend(backend: str, device: str, dtype: torch.dtype, heads: int, head_dim: int) -> None:
    """Try attention ``backend`` on ``device``; a ValueError naming ``attention_backend`` if it cannot run.

    One call on a ``(1, 16, heads, head_dim)`` query in ``dtype``. Diffusers checks a backend's
    package when it is selected, but a missing GPU kernel or an unsupported dtype or head size only
    shows in the first attention call: here, rather than in the middle of a plan. A bad ``device``
    fails as it would anywhere else.
    """
    query = torch.zeros((1, 16, heads, head_dim), device=device, dtype=dtype)
    try:
        with attention_backend(backend):
            dispatch_attention_fn(query, query, query)
    except (RuntimeError, ValueError, TypeError, ImportError, NotImplementedError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"attention_backend {backend!r} cannot run on {device} with {dtype} and head size {head_dim}: {reason}"
        ) from error


@dataclasses.dataclass(frozen=True)
class PlanResult:
    """One generated video plan.

    ``frames`` is ``(num_frames, height, width, 3)`` uint8 RGB; frame 0 reconstructs the
    conditioning image. ``latents`` are the final normalised latents ``(1, z_dim, latent_frames,
    height/8, width/8)`` on the CPU (a few MB), for re-decoding or training. ``timings`` maps each
    stage (``encode_prompt``, ``encode_image``, ``denoise``, ``decode``, ``total``) to seconds.
    """

    frames: np.ndarray
    latents: Tensor
    fps: float
    seed: int
    instruction: str
    timings: dict[str, float]
    config: SamplerConfig


def eva_sigmas(steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """EVA's ``steps + 1`` sigmas, from ≈1 down to a final 0 (``notes/eva_method.md`` §1.5).

    ``σ = s·u / (1 + (s−1)·u)`` with ``u = linspace(u_max, 0, steps + 1)[:steps]``. EVA's Wan
    scheduler is built with the shift already applied to its largest training sigma ``1 − 1/N``,
    and then shifts the inference schedule again, so ``u_max = shifted(1 − 1/N)`` (≈0.99967 for
    s = 3). For 40 steps and s = 3 this gives 0.9999, 0.9914, 0.9826, …, 0.4999 (k = 30), …,
    0.1363, 0.0714, 0.
    """
    return np.append(_shifted(_eva_unshifted_sigmas(steps, shift, num_train_timesteps), shift), 0.0)


def _eva_unshifted_sigmas(steps: int, shift: float, num_train_timesteps: int) -> np.ndarray:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    u_max = _shifted(np.float64(1.0 - 1.0 / num_train_timesteps), shift)
    return np.linspace(u_max, 0.0, steps + 1)[:steps]


def _shifted(sigma: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def make_scheduler(config: SamplerConfig, scheduler_config: Mapping[str, Any] | None = None):
    """A fresh scheduler whose sigmas are exactly :func:`eva_sigmas` (checked, not assumed).

    UniPC keeps solver state between steps, so every plan needs its own instance. Settings that
    EVA's sampler fixes (flow prediction, order 2, bh2, predict-x0, final sigma 0, the shift)
    override whatever ``scheduler_config`` says; its other entries (e.g. ``num_train_timesteps``)
    are kept.
    """
    base = {key: value for key, value in (scheduler_config or {}).items() if not key.startswith("_")}
    num_train_timesteps = int(base.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS))
    if config.solver == "unipc":
        scheduler = UniPCMultistepScheduler.from_config(
            base,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=config.shift,
            solver_order=2,
            solver_type="bh2",
            predict_x0=True,
            final_sigmas_type="zero",
            use_dynamic_shifting=False,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=config.shift)
    scheduler.set_timesteps(sigmas=_eva_unshifted_sigmas(config.steps, config.shift, num_train_timesteps))
    expected = eva_sigmas(config.steps, config.shift, num_train_timesteps)
    actual = scheduler.sigmas.double().cpu().numpy()
    if actual.shape != expected.shape or not np.allclose(actual, expected, rtol=0, atol=SIGMA_TOLERANCE):
        raise RuntimeError(f"{type(scheduler).__name__} did not adopt EVA's sigma table: got {actual[:3]}...")
    return scheduler


@contextlib.contextmanager
def bounded_threads(num_threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads (at most the machine's cores) for the block, then restore them.

    On a robot computer the simulator, the controller bridge and DDS need cores too.
    """
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(num_threads, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prepare_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (HxWx3 uint8 RGB) scaled to cover ``height`` x ``width`` and centre-cropped.

    EVA's validation transform resizes then centre-crops; an image already at the plan's size is
    returned unchanged.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have shape (height, width, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.shape[:2] == (height, width):
        return image
    scale = max(height / image.shape[0], width / image.shape[1])
    resized_size = (max(height, round(image.shape[0] * scale)), max(width, round(image.shape[1] * scale)))
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    pixels = nn.functional.interpolate(pixels, size=resized_size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (resized_size[0] - height) // 2, (resized_size[1] - width) // 2
    pixels = pixels[0, :, top : top + height, left : left + width]
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


class WorldModel:
    """The Wan2.1 I2V components (diffusers / transformers objects) and EVA's sampler over them."""

    def __init__(
        self,
        *,
        transformer: WanTransformer3DModel,
        vae: AutoencoderKLWan,
        text_encoder: nn.Module,
        tokenizer,
        image_encoder: nn.Module,
        image_processor,
        scheduler_config: Mapping[str, Any],
        model_id: str = "",
    ):
        if transformer.config.added_kv_proj_dim is None:
            raise ValueError(
                "transformer.config.added_kv_proj_dim is None: without it the CLIP tokens are read as text "
                "(EVA's image cross-attention needs the k_img/v_img projections)"
            )
        if transformer.config.out_channels != vae.config.z_dim:
            raise ValueError(
                f"transformer.config.out_channels={transformer.config.out_channels} differs from "
                f"vae.config.z_dim={vae.config.z_dim}"
            )
        self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.image_encoder = image_encoder.eval()
        self.image_processor = image_processor
        self.scheduler_config = dict(scheduler_config)
        self.model_id = model_id
        # 512 text tokens, always: diffusers' Wan attention takes everything before the last 512
        # context tokens to be image tokens. Whether the cache offloads the encoder follows each
        # plan's SamplerConfig.cpu_offload (see _place).
        self.prompt_cache = PromptEmbeddingCache(
            tokenizer, text_encoder.eval(), max_sequence_length=TEXT_CONTEXT_LENGTH
        )

    @property
    def tokenizer(self):
        """The umT5 tokenizer."""
        return self.prompt_cache.tokenizer

    @property
    def text_encoder(self) -> nn.Module:
        """The umT5 encoder (on the CPU between prompts when offloading is on)."""
        return self.prompt_cache.text_encoder

    @property
    def components(self) -> dict[str, nn.Module]:
        """The four networks by name (:data:`COMPONENTS`), the units that ``cpu_offload`` moves."""
        return {
            "text_encoder": self.text_encoder,
            "image_encoder": self.image_encoder,
            "transformer": self.transformer,
            "vae": self.vae,
        }

    def check_attention_backend(self, config: SamplerConfig) -> None:
        """Fail now, naming ``attention_backend``, if ``config.attention_backend`` cannot run on ``config.device``.

        Tried with the transformer's dtype, head count and head size (:func:`check_attention_backend`).
        """
        check_attention_backend(
            config.attention_backend,
            config.device,
            self.transformer.dtype,
            self.transformer.config.num_attention_heads,
            self.transformer.config.attention_head_dim,
        )

    def generate(
        self,
        image: np.ndarray,
        instruction: str,
        config: SamplerConfig | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> PlanResult:
        """Imagine ``config.num_frames`` frames of the robot doing ``instruction``, starting from ``image``.

        ``should_stop`` is polled before every denoising step and before decoding; when it returns
        True, :class:`PlanningCancelled` is raised. ``on_step(completed, total)`` runs after each step.
        """
        config = config or SamplerConfig()
        (plan,) = self.generate_batch(image, instruction, config, (config.seed,), should_stop=should_stop,
                                      on_step=on_step)
        return plan

    def generate_batch(
        self,
        image: np.ndarray,
        instruction: str,
        config: SamplerConfig,
        seeds: Sequence[int],
        *,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[PlanResult]:
        """One plan per seed of ``seeds``, denoised together as one batch (``config.seed`` is not used).

        The prompt and the image are encoded once; each plan is decoded on its own, so decode
        memory does not grow with the batch. Every plan carries the timings of the whole batch.
        """
        if not seeds:
            raise ValueError("seeds: need at least one seed")
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        frame = prepare_image(image, config.height, config.width)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with bounded_threads(config.num_threads), torch.no_grad(), self._released_after(config):
            self.check_attention_backend(config)  # before any weights move
            self._place(config)
            with _timed(timings, "encode_prompt", config.device):
                prompt = self.encode_prompt(instruction, config)
                negative = self.encode_prompt(config.negative_prompt, config) if config.guidance_language else None
            with _timed(timings, "encode_image", config.device), self._stage("encode_image", config):
                history = self.encode_history_latent(frame, config)
                clip_features = self.encode_clip_image(frame, config)
            with (
                _timed(timings, "denoise", config.device),
                self._stage("denoise", config),
                attention_backend(config.attention_backend),
            ):
                latents = self._denoise(history, prompt, negative, clip_features, config, seeds, should_stop,
                                        on_step)
            _raise_if_stopped(should_stop, config.steps, config.steps)
            with _timed(timings, "decode", config.device), self._stage("decode", config):
                videos = [self.decode_latents(latents[index : index + 1], config) for index in range(len(seeds))]
        timings["total"] = time.perf_counter() - started
        return [PlanResult(frames, latents[index : index + 1].cpu(), config.fps, seed, instruction, timings,
                           dataclasses.replace(config, seed=seed))
                for index, (seed, frames) in enumerate(zip(seeds, videos, strict=True))]

    def encode_prompt(self, text: str, config: SamplerConfig) -> Tensor:
        """The cached umT5 embedding of ``text``, ``(1, 512, text_dim)``, on ``config.device``."""
        return self.prompt_cache.get(text, config.device).to(config.device)

    def encode_history_latent(self, frame: np.ndarray, config: SamplerConfig) -> Tensor:
        """The normalised VAE latent of ``frame`` (HxWx3 uint8 at the plan's size), ``(1, z, 1, h, w)``."""
        pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 127.5 - 1.0
        pixels = pixels[None, :, None].to(config.device, self.vae.dtype)
        latent = self.vae.encode(pixels).latent_dist.mode().float()
        mean, std = self._latent_statistics(latent)
        return (latent - mean) / std

    def encode_clip_image(self, frame: np.ndarray, config: SamplerConfig) -> Tensor:
        """CLIP features of ``frame`` from the penultimate block, ``(1, tokens, image_dim)``."""
        overrides: dict[str, Any] = {}
        if config.clip_preprocessing == "eva":
            side = self.image_encoder.config.image_size
            overrides = {
                "size": {"height": side, "width": side},
                "do_center_crop": False,
                "resample": PILImageResampling.BICUBIC,
            }
        pixel_values = self.image_processor(images=frame, return_tensors="pt", **overrides).pixel_values
        pixel_values = pixel_values.to(config.device, self.image_encoder.dtype)
        return self.image_encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]

    def decode_latents(self, latents: Tensor, config: SamplerConfig | None = None) -> np.ndarray:
        """Normalised latents ``(1, z, frames, h, w)`` to uint8 video ``(T, H, W, 3)``.

        ``config.vae_decode`` chooses full or tiled decoding (full without a config).
        """
        mean, std = self._latent_statistics(latents)
        with self._vae_tiling(config):
            video = self.vae.decode((latents.float() * std + mean).to(self.vae.dtype), return_dict=False)[0]
        video = ((video[0].float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()

    @contextlib.contextmanager
    def _vae_tiling(self, config: SamplerConfig | None) -> Iterator[None]:
        """Diffusers' VAE tiling as ``config`` asks, for decoding only; the VAE's own settings are restored after.

        The history frame is always encoded whole (one frame, and its latent must not depend on tiles).
        """
        names = ("use_tiling", "tile_sample_min_height", "tile_sample_min_width",
                 "tile_sample_stride_height", "tile_sample_stride_width")  # fmt: skip
        saved = {name: getattr(self.vae, name) for name in names}
        self.vae.use_tiling = config is not None and config.vae_decode == "tiled"
        if self.vae.use_tiling:
            size, stride = config.vae_tile_size, config.vae_tile_stride
            self.vae.tile_sample_min_height = self.vae.tile_sample_min_width = size
            self.vae.tile_sample_stride_height = self.vae.tile_sample_stride_width = stride
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self.vae, name, value)

    def _latent_statistics(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32, device=latents.device).view(shape)
        std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32, device=latents.device).view(shape)
        return mean, std

    def _place(self, config: SamplerConfig) -> None:
        """Put the resident components on ``config.device`` and the others on the CPU (no-ops once there).

        The transformer's dtype is checked, never converted: converting the 14B weights would double
        their memory, and a blanket cast would undo the float32 modules diffusers keeps on loading.
        """
        if self.transformer.dtype != config.torch_dtype:
            raise ValueError(
                f"SamplerConfig.dtype is {config.dtype!r} but the transformer was loaded in {self.transformer.dtype}; "
                "load it in that dtype or change SamplerConfig.dtype"
            )
        resident = resident_components(config.cpu_offload)
        self.prompt_cache.offload_text_encoder = "text_encoder" not in resident
        for name, component in self.components.items():
            component.to(config.device if name in resident else "cpu")

    @contextlib.contextmanager
    def _stage(self, stage: str, config: SamplerConfig) -> Iterator[None]:
        """With ``cpu_offload="model"``, hold ``stage``'s components on the device for the block only.

        They go back to the CPU however the block ends (a cancelled plan too). ``module.to`` copies
        the weights each way: the price of an empty device between stages (numbers in
        ``docs/world_model_options.md``).
        """
        moved = [] if config.cpu_offload != "model" else [self.components[name] for name in STAGE_COMPONENTS[stage]]
        for component in moved:
            component.to(config.device)
        try:
            yield
        finally:
            for component in moved:
                component.to("cpu")

    @contextlib.contextmanager
    def _released_after(self, config: SamplerConfig) -> Iterator[None]:
        """With ``cpu_offload="model"``, return torch's cached CUDA blocks to the driver after a plan.

        Other processes (the IDM node) can then use that memory until the next plan.
        """
        try:
            yield
        finally:
            if config.cpu_offload == "model" and torch.device(config.device).type == "cuda":
                torch.cuda.empty_cache()

    def _denoise(
        self,
        history: Tensor,
        prompt: Tensor,
        negative: Tensor | None,
        clip_features: Tensor,
        config: SamplerConfig,
        seeds: Sequence[int],
        should_stop: Callable[[], bool] | None,
        on_step: Callable[[int, int], None] | None,
    ) -> Tensor:
        """Final latents ``(len(seeds), z, frames, h, w)``; each sample draws its noise from its own seed."""
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        shape = (1, self.vae.config.z_dim, config.latent_frames, *history.shape[3:])
        latents = torch.cat([torch.randn(shape, generator=generator) for generator in generators]).to(config.device)
        batch = len(seeds)
        prompt, clip_features = prompt.expand(batch, -1, -1), clip_features.expand(batch, -1, -1)
        negative = None if negative is None else negative.expand(batch, -1, -1)
        scheduler = make_scheduler(config, self.scheduler_config)
        sigmas = eva_sigmas(config.steps, config.shift, scheduler.config.num_train_timesteps)
        timesteps = sigmas[:-1] * scheduler.config.num_train_timesteps
        history_timestep = timesteps[-1] if config.history_timestep == "last" else 0.0
        for step, timestep in enumerate(timesteps):
            _raise_if_stopped(should_stop, step, config.steps)
            latents[:, :, :1] = history
            frame_timesteps = torch.full((batch, config.latent_frames), timestep, device=config.device)
            frame_timesteps[:, 0] = history_timestep
            passes = [(latents, frame_timesteps, prompt)]
            weights = [1.0 + config.guidance_language + config.guidance_history]
            if config.guidance_language:
                passes.append((latents, frame_timesteps, negative))
                weights.append(-config.guidance_language)
            if config.guidance_history:
                noise = torch.cat([torch.randn(history.shape, generator=generator)
                                   for generator in generators]).to(config.device)
                no_history = torch.cat([noise, latents[:, :, 1:]], dim=2)
                no_history_timesteps = frame_timesteps.clone()
                no_history_timesteps[:, 0] = timesteps[0]
                passes.append((no_history, no_history_timesteps, prompt))
                weights.append(-config.guidance_history)
            velocities = self._run_passes(passes, clip_features, config)
            velocity = sum(weight * prediction for weight, prediction in zip(weights, velocities, strict=True))
            latents = scheduler.step(velocity, scheduler.timesteps[step], latents, return_dict=False)[0]
            if on_step is not None:
                on_step(step + 1, config.steps)
        latents[:, :, :1] = history
        return latents

    def _run_passes(
        self, passes: list[tuple[Tensor, Tensor, Tensor]], clip_features: Tensor, config: SamplerConfig
    ) -> list[Tensor]:
        """Float32 velocities of each ``(latents, frame_timesteps, text)`` pass, batched if configured."""
        if config.batch_guidance and len(passes) > 1:
            latents, frame_timesteps, texts = (torch.cat(parts) for parts in zip(*passes, strict=True))
            images = torch.cat([clip_features] * len(passes))
            batched = predict_velocity(self.transformer, latents, frame_timesteps, texts, images, config.modulation)
            return list(batched.float().chunk(len(passes)))
        return [
            predict_velocity(self.transformer, latents, frame_timesteps, text, clip_features, config.modulation).float()
            for latents, frame_timesteps, text in passes
        ]


def _raise_if_stopped(should_stop: Callable[[], bool] | None, completed_steps: int, steps: int) -> None:
    if should_stop is not None and should_stop():
        raise PlanningCancelled(completed_steps, steps)


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str, device: str) -> Iterator[None]:
    """Record the seconds ``stage`` took, waiting for queued GPU work so the time is the stage's own."""
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    synchronize()
    started = time.perf_counter()
    yield
    synchronize()
    timings[stage] = time.perf_counter() - started
