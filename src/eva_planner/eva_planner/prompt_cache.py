"""Prompt-embedding cache: every instruction goes through the umT5 encoder once.

A robot repeats a handful of instructions, and the real encoder (umT5-XXL, about 11 GB in
bf16) costs more memory than time. The cache keeps each embedding on the CPU, and it can move the
encoder back to the CPU after each encoding, so that the GPU holds it only while it runs.

Embeddings follow EVA's text path: the instruction is whitespace-normalised, tokenised to at most
``max_sequence_length`` tokens, encoded with the attention mask, and every position after the
last real token is set to zero. Diffusers' Wan attention hard-codes a 512-token text context, so
``max_sequence_length`` must stay 512 whenever the transformer has an image branch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TEXT_CONTEXT_LENGTH = 512


def normalize_prompt(text: str) -> str:
    """``text`` with runs of whitespace collapsed and the ends stripped, as EVA's tokenizer cleans it."""
    return " ".join(text.split())


class PromptEmbeddingCache:
    """Encodes each distinct instruction once and keeps the result on the CPU.

    Keys combine the normalised text with the identity of the tokenizer and encoder (class, name
    and Python object), so a cache can never serve an embedding made by other weights.
    """

    def __init__(
        self,
        tokenizer,
        text_encoder: nn.Module,
        *,
        max_sequence_length: int = TEXT_CONTEXT_LENGTH,
        offload_text_encoder: bool = False,
    ):
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be at least 1, got {max_sequence_length}")
        self._tokenizer = tokenizer
        self._text_encoder = text_encoder
        self.max_sequence_length = max_sequence_length
        self.offload_text_encoder = offload_text_encoder
        encoder_name = getattr(text_encoder.config, "_name_or_path", "")
        tokenizer_name = getattr(tokenizer, "name_or_path", "")
        self.identity = (
            f"{type(tokenizer).__name__}:{tokenizer_name}:{len(tokenizer)}:{id(tokenizer)}|"
            f"{type(text_encoder).__name__}:{encoder_name}:{id(text_encoder)}|{max_sequence_length}"
        )
        self._embeddings: dict[tuple[str, str], Tensor] = {}

    @property
    def tokenizer(self):
        """The tokenizer this cache's keys were made for."""
        return self._tokenizer

    @property
    def text_encoder(self) -> nn.Module:
        """The encoder this cache's keys were made for."""
        return self._text_encoder

    def __len__(self) -> int:
        return len(self._embeddings)

    def __contains__(self, text: str) -> bool:
        return (self.identity, normalize_prompt(text)) in self._embeddings

    def clear(self) -> None:
        """Forget every embedding (e.g. after changing the encoder's weights in place)."""
        self._embeddings.clear()

    def get(self, text: str, device: str | torch.device = "cpu") -> Tensor:
        """The embedding of ``text``, shape ``(1, max_sequence_length, d_model)``, on the CPU.

        ``device`` is where the encoder runs when ``text`` is not cached yet.
        """
        if not isinstance(text, str):
            raise TypeError(f"instruction must be a str, got {type(text).__name__}")
        key = (self.identity, normalize_prompt(text))
        if key not in self._embeddings:
            self._embeddings[key] = self._encode(key[1], torch.device(device))
        return self._embeddings[key]

    @torch.no_grad()
    def _encode(self, text: str, device: torch.device) -> Tensor:
        tokens = self.tokenizer(
            [text],
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        self.text_encoder.to(device)
        try:
            mask = tokens.attention_mask.to(device)
            hidden = self.text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
            embedding = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to("cpu")
        finally:
            if self.offload_text_encoder:
                self.text_encoder.to("cpu")
        return embedding
