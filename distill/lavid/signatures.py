"""Concept signatures: for every class c and question q, the language model's distribution over the M
options, T[c, q, :] (methods-spec 4.1 ii).

Two scoring modes:
- ``label`` (the paper's): one user turn "Answer only with the option number. ... {question} 1. a 2. b ...",
  formatted with the model's chat template; the next-token logits of the option labels ("1".."M", or
  "A".."E"), softmax with temperature T. Batched with left padding so the last position is the answer slot.
- ``cloze``: the length-normalised log-likelihood of each option's text after "Question: {question} Answer:",
  softmaxed over the options. Small models answer the label format with the same option for every class;
  the cloze form still reads what the model knows about each class.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from distill.lavid.llm import LanguageModel
from distill.lavid.mcq import MCQSet
from runtime.atomic import atomic_path
from runtime.errors import ToolkitError

MODES = ("label", "cloze")
INSTRUCTION = "Answer only with the option number. No additional commentary."
Progress = Callable[[int, int], None]


def label_prompt(question: str, options: tuple[str, ...], labels: list[str]) -> str:
    listed = " ".join(f"{lab}. {opt}" for lab, opt in zip(labels, options))
    return f"{INSTRUCTION} {question} {listed}"


def option_labels(n: int, letters: bool) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)] if letters else [str(i + 1) for i in range(n)]


def _label_token_ids(tokenizer: Any, labels: list[str]) -> list[int]:
    ids = []
    for lab in labels:
        tok = tokenizer.encode(lab, add_special_tokens=False)
        if len(tok) != 1:
            raise ToolkitError(f"the tokenizer splits the option label {lab!r} into {len(tok)} tokens; use the other "
                               "label alphabet or cloze mode")  # fmt: skip
        ids.append(tok[0])
    return ids


@torch.no_grad()
def label_scores(lm: LanguageModel, mcq: MCQSet, letters: bool = False, batch_size: int = 25,
                 progress: Progress | None = None) -> np.ndarray:  # fmt: skip
    """(C, Q, M) next-token logits of the option labels."""
    tok = lm.tokenizer
    labels = option_labels(mcq.num_options, letters)
    ids = torch.tensor(_label_token_ids(tok, labels))
    pairs = list(itertools.product(range(len(mcq.class_names)), range(len(mcq.questions))))
    texts = []
    for c, q in pairs:
        question = mcq.questions[q]
        content = label_prompt(question.filled(mcq.class_names[c], mcq.placeholder), question.options, labels)
        texts.append(tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True))  # fmt: skip
    out = np.zeros((len(mcq.class_names), len(mcq.questions), mcq.num_options), np.float32)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            # Left padding: positions must count real tokens only, or a padded prompt reads differently.
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                              position_ids=positions).logits[:, -1, :].float()  # fmt: skip
            for (c, q), row in zip(pairs[start : start + batch_size], logits[:, ids].numpy()):
                out[c, q] = row
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
    finally:
        tok.padding_side = side
    return out


@torch.no_grad()
def cloze_scores(lm: LanguageModel, mcq: MCQSet, batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
    """(C, Q, M) mean log-probability per token of each option's text after the filled question."""
    tok = lm.tokenizer
    jobs = list(itertools.product(range(len(mcq.class_names)), range(len(mcq.questions)), range(mcq.num_options)))
    out = np.zeros((len(mcq.class_names), len(mcq.questions), mcq.num_options), np.float32)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        seqs, spans = [], []
        for c, q, m in batch:
            question = mcq.questions[q]
            prefix = tok.encode(f"Question: {question.filled(mcq.class_names[c], mcq.placeholder)} Answer:",
                                add_special_tokens=False)  # fmt: skip
            answer = tok.encode(" " + question.options[m], add_special_tokens=False)
            seqs.append(prefix + answer)
            spans.append((len(prefix), len(prefix) + len(answer)))
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for i, ((c, q, m), (a, b)) in enumerate(zip(batch, spans)):
            targets = ids[i, a:b]
            out[c, q, m] = float(logp[i, a - 1 : b - 1].gather(1, targets[:, None]).mean())
        if progress:
            progress(min(start + batch_size, len(jobs)), len(jobs))
    return out


def to_probabilities(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    if temperature <= 0:
        raise ToolkitError(f"temperature must be > 0, got {temperature}")
    z = scores.astype(np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def _js(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum(a * (np.log(np.clip(a, 1e-12, None)) - np.log(np.clip(b, 1e-12, None)))))  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def signature_stats(sig: np.ndarray, flat_below: float = 1e-3) -> dict[str, Any]:
    """Per question: mean entropy over classes (nats; the paper's question-quality view), mean pairwise JS
    divergence between classes (how much the question separates them), the argmax answer per class; questions
    whose signatures are the same for every class (JS below ``flat_below``) are flagged."""
    c, q, _ = sig.shape
    per_question = []
    for j in range(q):
        rows = sig[:, j]
        entropy = float(np.mean(-np.sum(rows * np.log(np.clip(rows, 1e-12, None)), axis=1)))
        js = float(np.mean([_js(rows[a], rows[b]) for a, b in itertools.combinations(range(c), 2)]))
        per_question.append({"entropy": entropy, "mean_pairwise_js": js, "answers": rows.argmax(1).tolist(),
                             "same_for_every_class": js < flat_below})  # fmt: skip
    return {
        "mean_entropy": float(np.mean([p["entropy"] for p in per_question])),
        "mean_max_probability": float(sig.max(-1).mean()),
        "mean_pairwise_js": float(np.mean([p["mean_pairwise_js"] for p in per_question])),
        "flat_questions": [i + 1 for i, p in enumerate(per_question) if p["same_for_every_class"]],
        "questions": per_question,
    }


@dataclass
class Signatures:
    table: np.ndarray  # (C, Q, M) probabilities
    provenance: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.provenance["class_names"])


def save_signatures(path: str | os.PathLike[str], sig: Signatures) -> None:
    with atomic_path(path) as tmp:
        save_file({"signatures": torch.from_numpy(np.ascontiguousarray(sig.table))}, str(tmp),
                  metadata={"toolkit.lavid": json.dumps(sig.provenance)})  # fmt: skip


def load_signatures(path: str | os.PathLike[str], class_names: list[str] | None = None) -> Signatures:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("toolkit.lavid", "null"))
            table = fh.get_tensor("signatures").numpy()
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"{path}: not a signature file written by `toolkit lavid signatures` ({exc})") from exc
    if meta is None or table.ndim != 3:
        raise ToolkitError(f"{path}: no LaViD provenance or not a (classes, questions, options) table")
    sig = Signatures(table, meta)
    if class_names is not None and sig.class_names != list(class_names):
        raise ToolkitError(f"{path}: signatures for classes {sig.class_names}, the data has {list(class_names)}")
    return sig


def compute_signatures(
    lm: LanguageModel, mcq: MCQSet, mode: str = "cloze", temperature: float = 1.0, letters: bool = False,
    batch_size: int = 25, progress: Progress | None = None,
) -> Signatures:  # fmt: skip
    if mode not in MODES:
        raise ToolkitError(f"scoring mode {mode!r} is not one of {MODES}")
    if mode == "label":
        scores = label_scores(lm, mcq, letters, batch_size, progress)
    else:
        scores = cloze_scores(lm, mcq, batch_size, progress)
    provenance = {
        "model": lm.spec, "model_weights_sha256": lm.weights_sha256, "mcq_sha256": mcq.sha256(),
        "mcq_source": mcq.source, "mode": mode, "temperature": temperature,
        "labels": "letters" if letters else "digits", "instruction": INSTRUCTION if mode == "label" else None,
        "class_names": list(mcq.class_names), "questions": len(mcq.questions), "options": mcq.num_options,
    }  # fmt: skip
    return Signatures(to_probabilities(scores, temperature), provenance)
