"""A vision-language model as a student classifier (FDBPL): frozen image and text towers, two learned prompt
contexts (positive, negative), and the class-embedding matrix the positive prompt gives.

What ships is ``forward``: logit_scale * n(image features) @ class_embeddings^T, one graph with no text tower.
The contexts travel in the same weights file, so new class names can be embedded later without retraining.
Any model the teacher registry builds (``openclip:<model>/<pretrained>``, ``conse:...``) can be the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.teachers.base import Teacher
from runtime.errors import ToolkitError

CLASS_TEMPLATE = "{}."  # the released code's prompt: "<context> <class name>."
POSITIVE_INIT = "a photo of a"
NEGATIVE_INIT = "a photo of no"
CONTEXTS = ("pos_context", "neg_context")


def init_context(vlm: Teacher, text: str) -> torch.Tensor:
    """The token embeddings of ``text`` (without start/end tokens): a prompt context initialised from words."""
    tokens = vlm.tokenize([text])
    ids = tokens["input_ids"][0]
    mask = tokens.get("attention_mask")
    length = int(mask[0].sum()) if mask is not None else int((ids != 0).sum())
    if length < 3:
        raise ToolkitError(f"prompt initialisation {text!r}: no tokens")
    with torch.no_grad():
        return vlm.token_embeddings(tokens)[0, 1 : length - 1].float().clone()


class VLMStudent(nn.Module):
    """``vlm`` frozen; ``pos_context`` / ``neg_context`` train; ``class_embeddings`` (C, D) follow the positive
    context whenever the model is put in eval mode (``set_classes`` names the classes)."""

    def __init__(self, vlm: Teacher, num_classes: int, spec: str) -> None:
        super().__init__()
        self.vlm = vlm.requires_grad_(False).eval()
        self.spec = spec
        self.pos_context = nn.Parameter(init_context(vlm, POSITIVE_INIT))
        self.neg_context = nn.Parameter(init_context(vlm, NEGATIVE_INIT))
        self.register_buffer("class_embeddings", torch.zeros(num_classes, vlm.embed_dim))
        self.register_buffer("logit_scale", torch.tensor(float(vlm.logit_scale)))
        self.prompts: list[str] | None = None
        self._tokens: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def set_classes(self, prompts: list[str]) -> None:
        """The class names the contexts are trained on (and embedded with); one per row of the logits."""
        if len(prompts) != self.num_classes:
            raise ToolkitError(f"{self.spec}: {len(prompts)} class names for a {self.num_classes}-class student")
        self.prompts, self._tokens = list(prompts), {}

    def encode_classes(self, context: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """(C, D) normalised text embeddings of "<context> <class name>." for ``prompts`` (default: the classes
        the student was set to; their tokens are kept)."""
        n = int(context.shape[0])
        if prompts is not None:
            tokens = self.vlm.context_prompts(prompts, CLASS_TEMPLATE, n)
        elif self.prompts is None:
            raise ToolkitError(f"{self.spec}: no class names set (set_classes)")
        else:
            if n not in self._tokens:
                self._tokens[n] = self.vlm.context_prompts(self.prompts, CLASS_TEMPLATE, n)
            tokens = self._tokens[n]
        return self.vlm.encode_with_context(context, {k: v.to(context.device) for k, v in tokens.items()})

    @torch.no_grad()
    def refresh(self) -> None:
        """class_embeddings <- the positive context's class embeddings (what ``forward`` classifies with)."""
        if self.prompts is not None:
            self.class_embeddings.copy_(F.normalize(self.encode_classes(self.pos_context).float(), dim=-1))

    def train(self, mode: bool = True) -> VLMStudent:
        super().train(mode)
        self.vlm.eval()  # frozen towers: dropout off, statistics fixed
        if not mode:
            self.refresh()
        return self

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vlm.encode_image(x).float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(x) @ self.class_embeddings.T

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Contexts take the shape of the file's (their length is the initialisation text's token count)."""
        for name in CONTEXTS:
            if name in state and state[name].shape != getattr(self, name).shape:
                setattr(self, name, nn.Parameter(torch.zeros_like(state[name], dtype=torch.float32)))
        return super().load_state_dict(state, strict=strict, assign=assign)
