"""The vision-language teacher interface: images and texts into one L2-normalised embedding space.

A teacher carries its own preprocessing (size, mean/std: not the student's), a logit scale for zero-shot
logits, and the two hooks CoOp prompt learning needs: token ids for "X X ... X <sentence>" prompts and
a text forward pass from token embeddings, so learned context vectors can replace the X placeholders.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

PLACEHOLDER = "X"


def fill_template(template: str, class_name: str) -> str:
    """'a photo of a {}.' + 'Sandal' -> 'a photo of a Sandal.'; the template must hold one '{}'."""
    if template.count("{}") != 1:
        raise ToolkitError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
    return template.replace("{}", class_name)


def prompt_name(class_name: str) -> str:
    """A folder-style class name as prompt text: '001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return re.sub(r"^\d+\.", "", class_name).replace("_", " ").strip() or class_name


class CosineHead(nn.Module):
    """A vision-language teacher's logits from its image embedding: scale * cos(v, class anchors)."""

    def __init__(self, anchors: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1))
        self.scale = float(scale)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(embedding.float(), dim=-1) @ self.anchors.T


class Teacher(nn.Module, ABC):
    """A frozen teacher. Subclasses set spec, embed_dim, contract and logit_scale. ``kind`` "vlm": images and
    texts in one space (every method); "classifier": a trained image classifier (KD, RKD)."""

    spec: str
    embed_dim: int
    contract: PreprocessContract
    logit_scale: float
    kind: str = "vlm"
    image_backend: str = "torch"  # what runs encode_image (distill/teachers/image_backend.py)

    def logit_head(self, anchors: torch.Tensor | None) -> nn.Module:
        """The module that turns a cached embedding into the teacher's class logits (KD's target)."""
        if anchors is None:
            raise ToolkitError(f"{self.spec}: a vision-language teacher's logits need class anchors")
        return CosineHead(anchors, self.logit_scale)

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed by ``contract`` -> (B, D) L2-normalised."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids (and masks) for the text tower."""

    @abstractmethod
    def token_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, L, width) input embeddings of ``tokens``."""

    @abstractmethod
    def encode_embeddings(self, embeddings: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text tower from input embeddings -> (N, D) L2-normalised."""

    @property
    def text_width(self) -> int:
        return int(self.token_embeddings(self.tokenize(["a"])).shape[-1])

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenize(texts)
        return self.encode_embeddings(self.token_embeddings(tokens), tokens)

    def class_anchors(self, class_names: list[str], template: str) -> torch.Tensor:
        """(C, D) normalised text embeddings of the filled template, one per class."""
        return self.encode_text([fill_template(template, c) for c in class_names])

    def zero_shot_logits(self, image_features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(image_features, dim=-1) @ anchors.T

    def context_prompts(self, class_names: list[str], template: str, n_ctx: int) -> dict[str, torch.Tensor]:
        """Tokens of "X X ... X <template filled with the class>": positions 1..n_ctx take learned context."""
        prefix = " ".join([PLACEHOLDER] * n_ctx)
        tokens = self.tokenize([f"{prefix} {fill_template(template, c)}" for c in class_names])
        ids = tokens["input_ids"]
        expected = self.tokenize([PLACEHOLDER])["input_ids"][0, 1]
        if not bool((ids[:, 1 : 1 + n_ctx] == expected).all()):
            raise ToolkitError(f"{self.spec}: the tokenizer does not map each {PLACEHOLDER!r} to one token")
        return tokens

    def encode_with_context(self, context: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """CoOp: replace the placeholder embeddings (positions 1..n_ctx) by the shared ``context`` (n_ctx, width)."""
        embeddings = self.token_embeddings(tokens)
        n_ctx = context.shape[0]
        ctx = context.to(embeddings.dtype).unsqueeze(0).expand(embeddings.shape[0], -1, -1)
        embeddings = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + n_ctx :]], dim=1)
        return self.encode_embeddings(embeddings, tokens)
