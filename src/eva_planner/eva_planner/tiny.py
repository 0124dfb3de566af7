"""The ``tiny`` preset: every world-model component built from config in code, with seeded random weights.

It runs the same :meth:`~eva_planner.world_model.WorldModel.generate` code path as the 14B model
(image cross-attention included), offline and in well under a second per plan on a CPU, for
tests, the demo and CI. Its plans are noise; the point is the plumbing, not the pictures.

The tokenizer is a Unigram model built from :data:`TINY_VOCABULARY`: whole words of robot
instructions plus single characters, so every lower-case instruction tokenises without an
``<unk>``. The real model's tokenizer comes from its model directory.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from eva_planner.world_model import SamplerConfig, WorldModel

TINY_MODEL_ID = "eva-tiny-random"
TINY_SAMPLER_CONFIG = SamplerConfig(num_frames=9, height=64, width=64, steps=4, dtype="float32", device="cpu")

_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: the Unigram model's unk_id is 2
_WORDS = (
    "pick up place put move push pull grab lift open close press click stack hand over "
    "the a an it on in into onto to of from with and then at by "
    "left right both arm arms hand gripper block cube box bottle cup mug plate bowl bell "
    "alarm clock container shoe hammer can table drawer microwave red green blue yellow small big"
).split()
TINY_VOCABULARY: tuple[tuple[str, float], ...] = (
    *((token, 0.0) for token in _SPECIAL_TOKENS),
    *((f"\u2581{word}", -2.0) for word in dict.fromkeys(_WORDS)),
    ("\u2581", -3.0),
    *((character, -5.0) for character in string.ascii_lowercase + string.digits + ".,'-"),
)

# Sizes keep the constraints between components (notes/wan_diffusers.md §1): the transformer's
# text_dim is the encoder's d_model, its image_dim the CLIP width, added_kv_proj_dim its inner
# width, and out_channels the VAE's z_dim (16, as in Wan2.1, so the latent statistics apply).
_HEADS, _HEAD_DIM = 2, 12
_TEXT_DIM = 32
_IMAGE_DIM = 16
_Z_DIM = 16


def build_tiny_world_model(seed: int = 0) -> WorldModel:
    """A random tiny :class:`WorldModel`; the same ``seed`` gives the same weights, and no file or network is read."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _tiny_transformer()
        vae = _tiny_vae()
        text_encoder = _tiny_text_encoder()
        image_encoder = _tiny_image_encoder()
    return WorldModel(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        image_encoder=image_encoder,
        image_processor=_tiny_image_processor(image_encoder.config.image_size),
        scheduler_config={"num_train_timesteps": 1000},
        model_id=f"{TINY_MODEL_ID}-seed{seed}",
    )


def tiny_tokenizer() -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over :data:`TINY_VOCABULARY`, built in memory."""
    return T5Tokenizer(vocab=list(TINY_VOCABULARY), extra_ids=0)


def _tiny_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=_HEADS,
        attention_head_dim=_HEAD_DIM,
        in_channels=2 * _Z_DIM + 4,
        out_channels=_Z_DIM,
        text_dim=_TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=_IMAGE_DIM,
        added_kv_proj_dim=_HEADS * _HEAD_DIM,
        rope_max_seq_len=32,
    ).eval()


def _tiny_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=_Z_DIM,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()


def _tiny_text_encoder() -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=len(TINY_VOCABULARY),
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(config).eval()


def _tiny_image_encoder() -> CLIPVisionModel:
    config = CLIPVisionConfig(
        hidden_size=_IMAGE_DIM,
        intermediate_size=32,
        num_hidden_layers=2,  # generate() reads the penultimate block's output
        num_attention_heads=2,
        image_size=32,
        patch_size=8,  # 4x4 patches + CLS = 17 image tokens (ViT-H/14 at 224 gives 257)
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    return CLIPVisionModel(config).eval()


def _tiny_image_processor(side: int) -> CLIPImageProcessor:
    """Configured like the real model's processor (shortest-edge resize, centre crop), at ``side`` pixels."""
    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
