"""``train.micro_batch``: a batch forwarded and backwarded in chunks, one optimizer step. For a
network without batch norm and a per-pixel mean loss the step is the whole batch's."""

import copy
import math

import pytest
import torch

from cpx.kernel.config import OptimizerConfig, ScheduleConfig, TrainConfig
from cpx.train.loop import Trainer


def _step(model, data, micro_batch, batch_size=4):
    trainer = Trainer(model, torch.nn.functional.cross_entropy, None, data,
                      train=TrainConfig(epochs=1, batch_size=batch_size, micro_batch=micro_batch, grad_clip=None),
                      optimizer=OptimizerConfig(), schedule=ScheduleConfig(warmup_epochs=0), precision="fp32",
                      device=torch.device("cpu"))
    record = trainer.train_epoch()
    return [p.detach().clone() for p in model.parameters()], record.train_loss


@pytest.mark.parametrize("micro_batch", [1, 2, 3])
def test_chunks_step_as_the_whole_batch_does_without_batch_norm(micro_batch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    data = (torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (4, 8, 8), dtype=torch.uint8))
    whole, whole_loss = _step(copy.deepcopy(model), data, None)
    chunked, chunked_loss = _step(copy.deepcopy(model), data, micro_batch)
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-6)
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    assert any(not torch.equal(a, b) for a, b in zip(whole, model.parameters()))  # the step moved the weights


def test_a_chunk_as_large_as_the_batch_is_the_whole_batch():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 1))
    data = (torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 2, (4, 8, 8), dtype=torch.uint8))
    whole, _ = _step(copy.deepcopy(model), data, None)
    same, loss = _step(copy.deepcopy(model), data, 4)
    assert all(torch.equal(a, b) for a, b in zip(whole, same)) and math.isfinite(loss)
