"""The one way robustact asks a model for its predictions, and runs an attack over a set of examples: in eval
mode (restored after), without gradients, batched, through `model_forward` (the attacks' model-call path)."""

from __future__ import annotations

import torch
from torch import nn

from robustact.attacks.base import check_labels_fit, model_forward


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500, labels: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Predicted classes in eval mode (restoring the model's mode). With `labels`, they are checked to name the
    model's classes (an out-of-range label would otherwise count as a plain mistake, never attacked)."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    was_training = model.training
    model.eval()
    try:
        preds = []
        for i in range(0, len(x), batch_size):
            logits = model_forward(model, x[i:i + batch_size])
            if labels is not None and i == 0:
                check_labels_fit(labels, logits)
            preds.append(logits.argmax(1))
        return torch.cat(preds)
    finally:
        model.train(was_training)


def robust_under(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
                 pool: torch.Tensor | None = None) -> torch.Tensor:
    """Per example: still correctly classified after `attack`. The attack runs on the examples of `pool`
    (default: all); the others count as not robust."""
    robust = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    idx = torch.arange(len(y), device=y.device) if pool is None else pool.nonzero().flatten()
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        robust[b] = predict(model, attack(model, x[b], y[b]), batch_size) == y[b]
    return robust


def accuracy_under(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, batch_size: int = 500
                   ) -> tuple[float, float]:
    """(clean accuracy, robust accuracy) with the attack run on the clean-correct points only."""
    correct = predict(model, x, batch_size) == y
    robust = robust_under(model, attack, x, y, batch_size, pool=correct)
    n = max(len(y), 1)
    return correct.sum().item() / n, robust.sum().item() / n
