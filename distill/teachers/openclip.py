"""Any OpenCLIP model and pretrained tag as a teacher (the papers': convnext_xxlarge /
laion2b_s34b_b82k_augreg_soup). ``pretrained`` "none" builds the architecture with random weights, which
is how tests exercise this exact path offline (with a tiny model config registered from a JSON file).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.teachers.base import Teacher
from runtime.errors import ToolkitError, did_you_mean
from runtime.preprocess import PreprocessContract


def _import_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise ToolkitError("OpenCLIP teachers need open_clip_torch (pip install open_clip_torch)") from exc
    return open_clip


class OpenCLIPTeacher(Teacher):
    def __init__(self, model: str, pretrained: str | None, config: str | os.PathLike[str] | None = None):
        super().__init__()
        open_clip = _import_open_clip()
        if config is not None:
            if not Path(config).is_file():
                raise ToolkitError(f"{config}: OpenCLIP model config not found")
            open_clip.add_model_config(Path(config))
        if model not in open_clip.list_models():
            raise ToolkitError(f"openclip: unknown model {model!r}.{did_you_mean(model, open_clip.list_models())}")
        tag = None if pretrained in (None, "", "none") else pretrained
        try:
            self.clip = open_clip.create_model(model, pretrained=tag).eval()
        except RuntimeError as exc:  # unknown tag / download failure: open_clip raises RuntimeError
            raise ToolkitError(f"openclip:{model}/{pretrained}: {exc}") from exc
        if not hasattr(self.clip, "token_embedding"):
            raise ToolkitError(f"openclip:{model}: its text tower is a Hugging Face model; CoOp needs the CLIP one")
        self.tokenizer = open_clip.get_tokenizer(model)
        self.spec = f"openclip:{model}/{pretrained or 'none'}"
        self.embed_dim = int(self.clip.text_projection.shape[1])
        self.logit_scale = float(self.clip.logit_scale.detach().exp())
        cfg = self.clip.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.contract = PreprocessContract(
            input_size=size,
            resize_size=size,
            resize_mode="squash" if cfg.get("resize_mode") == "squash" else "shorter",
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )
        self.requires_grad_(False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels, normalize=True)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer(texts)}

    def token_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.clip.token_embedding(tokens["input_ids"])

    def encode_embeddings(self, embeddings: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """OpenCLIP's CLIP.encode_text from the token-embedding step on (same ops, same order)."""
        from open_clip.transformer import text_global_pool

        clip = self.clip
        x = embeddings.to(clip.transformer.get_cast_dtype()) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        x = text_global_pool(
            x, tokens["input_ids"], clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None)
        )
        x = clip.text_projection(x) if isinstance(clip.text_projection, torch.nn.Linear) else x @ clip.text_projection
        return F.normalize(x, dim=-1)
