"""Capacity: each architecture at its default size overfits a small real subset of watch.

The subset is 256 windows from two train sessions. A model passes when its loss over
the whole subset (eval mode, binary cross-entropy) falls below a fifth of its loss
at initialisation within a fixed budget of Adam steps. The data term alone is
measured: the bayesian model's KL term is a regulariser, not part of the fit.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import models

from .conftest import REGISTERED

LOSS_RATIO = 0.2
MAX_STEPS = 60
CHECK_EVERY = 10  # steps between full-subset losses; the test stops at the first pass
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def _subset_loss(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss = F.binary_cross_entropy_with_logits(model(X), y).item()
    model.train()
    return loss


@pytest.mark.parametrize("architecture", REGISTERED)
def test_default_size_overfits_watch_subset(
    architecture: str, watch_subset: tuple[torch.Tensor, torch.Tensor]
) -> None:
    X, y = watch_subset
    assert 0 < y.sum() < len(y), "the subset needs both classes"
    torch.manual_seed(0)
    model = models.build_model(architecture, num_features=X.shape[-1], seq_len=X.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    batch_generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()

    initial_loss = _subset_loss(model, X, y)
    losses = []
    for step in range(1, MAX_STEPS + 1):
        batch = torch.randint(0, len(y), (BATCH_SIZE,), generator=batch_generator)
        loss = F.binary_cross_entropy_with_logits(model(X[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        if step % CHECK_EVERY == 0:
            losses.append(_subset_loss(model, X, y))
            if losses[-1] < LOSS_RATIO * initial_loss:
                break

    seconds = time.perf_counter() - started
    assert losses[-1] < LOSS_RATIO * initial_loss, (
        f"{architecture}: subset loss {initial_loss:.3f} at start, then "
        f"{[round(value, 3) for value in losses]} every {CHECK_EVERY} steps "
        f"({seconds:.1f} s); expected below {LOSS_RATIO * initial_loss:.3f}"
    )
