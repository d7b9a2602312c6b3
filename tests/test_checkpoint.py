"""Checkpoints: exact round trip of model, EMA and optimizer state; a tampered file is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import OptimizerConfig
from distill.optim import build_optimizer
from runtime.errors import ToolkitError


def tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def trained(name: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = tiny(0)
    model(torch.randn(2, 3, 5, 5))
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.1))
    for _ in range(3):
        loss = model(torch.randn(4, 3, 5, 5)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_round_trip_is_exact(tmp_path: Path, optimizer: str) -> None:
    model, opt = trained(optimizer)
    ema = tiny(5)
    ema(torch.randn(2, 3, 5, 5))
    save_checkpoint(tmp_path, "last", 2, model, opt, ema, {"history": [{"epoch": 3}], "best_epoch": 1})
    model2 = tiny(1)
    model2(torch.randn(2, 3, 5, 5))
    ema2 = tiny(2)
    ema2(torch.randn(2, 3, 5, 5))
    opt2 = build_optimizer(model2, OptimizerConfig(name=optimizer, lr=0.1))
    state = load_checkpoint(tmp_path, "last", model2, opt2, ema2)
    assert state["epoch"] == 2 and state["history"] == [{"epoch": 3}] and state["best_epoch"] == 1
    for a, b in ((model, model2), (ema, ema2)):
        for (k, v), v2 in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, v2), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for key, value in s1["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][pid][key]))


def test_older_tensor_files_are_removed_and_tampering_detected(tmp_path: Path) -> None:
    model, opt = trained("sgd")
    save_checkpoint(tmp_path, "last", 0, model, opt, None, {})
    save_checkpoint(tmp_path, "last", 1, model, opt, None, {})
    files = sorted(p.name for p in tmp_path.glob("last-e*.safetensors"))
    assert files == ["last-e0001.safetensors"]
    f = tmp_path / files[0]
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ToolkitError, match="does not match the hash"):
        load_checkpoint(tmp_path, "last", model, opt, None)


def test_missing_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    model, opt = trained("sgd")
    with pytest.raises(ToolkitError, match="run without --resume"):
        load_checkpoint(tmp_path, "last", model, opt, None)
