"""Training helpers for the method tests: a few AdamW steps on one batch."""

from __future__ import annotations

import torch


def train_steps(model, ids, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` AdamW steps of ``model`` on the batch ``ids`` (labels = inputs); the losses."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses
