"""Wan transformer forward pass with one noise level per latent frame (EVA's diffusion forcing).

EVA conditions on a clean first latent frame while the other frames are noisy, so the timestep is
a ``(batch, latent_frames)`` matrix and every block's AdaLN modulation differs per frame. Diffusers'
:class:`~diffusers.WanTransformer3DModel` accepts either one timestep per sample or one per
*token* (the Wan2.2 TI2V path). Per-token timesteps give the right numbers but build a float32
``(tokens, 6, dim)`` modulation tensor in every block: about 1.9 GB per sample at 49x480x640,
times three guidance passes, times best-of-N candidates.

:func:`predict_velocity` therefore offers two modes:

* ``"per_frame"`` (default): a forward pass over the *stock* modules of the loaded transformer
  (``rope``, ``patch_embedding``, ``condition_embedder``, each block's ``norm1/attn1/norm2/attn2/
  norm3/ffn/scale_shift_table``, ``norm_out``, ``proj_out``). It computes one modulation per latent
  frame and broadcasts it over that frame's tokens. No weights or classes change, so
  ``from_pretrained``, ``save_pretrained`` and PEFT adapters work as usual. It relies on the block
  layout of diffusers 0.42's Wan transformer, and the tests check it against the per-token mode.
* ``"per_token"``: diffusers' own forward with the timestep repeated for every token of its frame.
  It is the reference, and the fallback should the block layout ever change.

Both modes zero the 20 extra I2V input channels (16 image-latent + 4 mask channels): EVA
conditions through the clean latent frame 0 and the CLIP branch, never through those channels.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import WanTransformer3DModel
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

Modulation = Literal["per_frame", "per_token"]
MODULATIONS = ("per_frame", "per_token")


def predict_velocity(
    transformer: WanTransformer3DModel,
    latents: Tensor,
    frame_timesteps: Tensor,
    text_embeds: Tensor,
    image_embeds: Tensor | None,
    modulation: Modulation = "per_frame",
) -> Tensor:
    """The flow (velocity) prediction for ``latents``, in the transformer's dtype.

    Args:
        transformer: a Wan transformer; its ``in_channels - out_channels`` extra channels are fed zeros.
        latents: ``(batch, out_channels, latent_frames, height, width)`` normalised latents.
        frame_timesteps: ``(batch, latent_frames)`` timesteps in ``[0, 1000]`` (1000 = pure noise).
        text_embeds: ``(batch, 512, text_dim)`` umT5 embeddings, zero after the last token.
        image_embeds: ``(batch, image_tokens, image_dim)`` CLIP features, or ``None`` for no image branch.
        modulation: ``"per_frame"`` or ``"per_token"`` (see the module docstring).
    """
    if modulation not in MODULATIONS:
        raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
    batch, channels, frames = latents.shape[:3]
    if frame_timesteps.shape != (batch, frames):
        raise ValueError(
            f"frame_timesteps has shape {tuple(frame_timesteps.shape)}, expected (batch, latent_frames) = "
            f"{(batch, frames)}"
        )
    extra_channels = transformer.config.in_channels - channels
    if extra_channels < 0:
        raise ValueError(f"latents have {channels} channels, the transformer takes {transformer.config.in_channels}")
    zeros = latents.new_zeros((batch, extra_channels, *latents.shape[2:]))
    hidden = torch.cat([latents, zeros], dim=1).to(transformer.dtype)
    text_embeds = text_embeds.to(transformer.dtype)
    if image_embeds is not None:
        image_embeds = image_embeds.to(transformer.dtype)
    if modulation == "per_token":
        return _per_token_forward(transformer, hidden, frame_timesteps, text_embeds, image_embeds)
    return _per_frame_forward(transformer, hidden, frame_timesteps, text_embeds, image_embeds)


def _per_token_forward(
    transformer: WanTransformer3DModel, hidden: Tensor, frame_timesteps: Tensor, text: Tensor, image: Tensor | None
) -> Tensor:
    _, patch_h, patch_w = transformer.config.patch_size
    tokens_per_frame = (hidden.shape[3] // patch_h) * (hidden.shape[4] // patch_w)
    token_timesteps = frame_timesteps.repeat_interleave(tokens_per_frame, dim=1)
    return transformer(hidden, token_timesteps, text, encoder_hidden_states_image=image, return_dict=False)[0]


def _per_frame_forward(
    transformer: WanTransformer3DModel, hidden: Tensor, frame_timesteps: Tensor, text: Tensor, image: Tensor | None
) -> Tensor:
    patch_t, patch_h, patch_w = transformer.config.patch_size
    if patch_t != 1:
        raise ValueError(f"per-frame modulation needs a temporal patch size of 1, got {patch_t}")
    batch, _, frames, height, width = hidden.shape
    rotary = transformer.rope(hidden)
    tokens = transformer.patch_embedding(hidden).flatten(2).transpose(1, 2).contiguous()
    time_embedding, time_projection, text, image = transformer.condition_embedder(
        frame_timesteps.flatten(), text, image, timestep_seq_len=frames
    )
    frame_modulation = time_projection.unflatten(2, (6, -1))  # (batch, frames, 6, dim)
    context = text if image is None else torch.cat([image, text], dim=1)

    use_checkpointing = transformer.gradient_checkpointing and torch.is_grad_enabled()
    for block in transformer.blocks:
        if use_checkpointing:
            tokens = checkpoint(
                _frame_modulated_block, block, tokens, context, frame_modulation, rotary, use_reentrant=False
            )
        else:
            tokens = _frame_modulated_block(block, tokens, context, frame_modulation, rotary)

    shift, scale = (transformer.scale_shift_table.unsqueeze(0) + time_embedding.unsqueeze(2)).chunk(2, dim=2)
    output = _modulate(transformer.norm_out(tokens.float()), shift, scale).type_as(tokens)
    output = transformer.proj_out(output)
    grid = (frames, height // patch_h, width // patch_w)
    output = output.reshape(batch, *grid, patch_h, patch_w, -1).permute(0, 6, 1, 2, 4, 3, 5)
    return output.flatten(5, 6).flatten(3, 4)


def _frame_modulated_block(
    block: nn.Module, tokens: Tensor, context: Tensor, frame_modulation: Tensor, rotary: tuple[Tensor, Tensor]
) -> Tensor:
    """One Wan block (self-attention, cross-attention, FFN) with per-frame AdaLN modulation.

    ``frame_modulation`` is ``(batch, frames, 6, dim)``; the tokens of each frame are contiguous,
    so a ``(batch, frames, 1, dim)`` view broadcasts over them without a per-token copy.
    """
    shift_attn, scale_attn, gate_attn, shift_ffn, scale_ffn, gate_ffn = (
        block.scale_shift_table.unsqueeze(0) + frame_modulation.float()
    ).chunk(6, dim=2)

    normed = _modulate(block.norm1(tokens.float()), shift_attn, scale_attn).type_as(tokens)
    attention = block.attn1(normed, None, None, rotary)
    tokens = (tokens.float() + _per_frame_product(attention, gate_attn)).type_as(tokens)

    normed = block.norm2(tokens.float()).type_as(tokens)
    tokens = tokens + block.attn2(normed, context, None, None)

    normed = _modulate(block.norm3(tokens.float()), shift_ffn, scale_ffn).type_as(tokens)
    feed_forward = block.ffn(normed)
    return (tokens.float() + _per_frame_product(feed_forward.float(), gate_ffn)).type_as(tokens)


def _modulate(tokens: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``tokens * (1 + scale) + shift`` with ``(batch, frames, 1, dim)`` shift and scale."""
    frames = shift.shape[1]
    return (tokens.unflatten(1, (frames, -1)) * (1 + scale) + shift).flatten(1, 2)


def _per_frame_product(tokens: Tensor, gate: Tensor) -> Tensor:
    return (tokens.unflatten(1, (gate.shape[1], -1)) * gate).flatten(1, 2)
