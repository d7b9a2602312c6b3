"""Batched inference of a torch classifier over a runtime dataset (eval transform = the contract)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.data import ImageTensorDataset
from distill.precision import autocast
from distill.transforms import eval_transform
from runtime.datasets import Dataset
from runtime.preprocess import PreprocessContract


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: Dataset,
    contract: PreprocessContract,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Logits (N, C) float32 for every item of ``dataset``, in order."""
    device = torch.device(device)
    loader = DataLoader(
        ImageTensorDataset(dataset, transform=eval_transform(contract)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    for images, _ in loader:
        images = images.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with autocast(precision, device):
            logits = model(images)
        out.append(logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(contract.class_names)), np.float32)


def val_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cross-entropy and top-1 of validation logits."""
    t = torch.from_numpy(logits)
    return {
        "val_loss": float(torch.nn.functional.cross_entropy(t, torch.from_numpy(labels).long()).item()),
        "val_top1": float((logits.argmax(1) == labels).mean()),
    }


def classifier_validator(
    dataset: Dataset,
    contract: PreprocessContract,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
):
    """``validate(net)`` for the training engine: the classifier's loss and top-1 on ``dataset``."""

    def validate(net: nn.Module) -> dict[str, float]:
        logits = predict_logits(net, dataset, contract, batch_size, device, precision, channels_last)
        return val_metrics(logits, dataset.labels)

    return validate
