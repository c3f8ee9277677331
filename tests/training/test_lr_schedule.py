import pytest
import torch

from rayrec.training.config import TrainConfig
from rayrec.training.loop import build_lr_scheduler


def _lrs(config: TrainConfig, total_steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_lr_scheduler(optimizer, config, total_steps)
    values = []
    for _ in range(total_steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_then_constant():
    values = _lrs(TrainConfig(lr=1.0, lr_schedule="constant", warmup_steps=4), total_steps=8)

    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4:] == pytest.approx([1.0] * 4)


def test_cosine_decays_to_zero():
    values = _lrs(TrainConfig(lr=1.0, lr_schedule="cosine", warmup_steps=2), total_steps=12)

    assert values[:2] == pytest.approx([0.5, 1.0])
    assert values[2] == pytest.approx(1.0)
    assert all(later <= earlier for earlier, later in zip(values[2:], values[3:]))
    assert values[-1] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 9 / 10)).item()))
