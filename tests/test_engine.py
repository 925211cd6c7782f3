"""The evaluation engine: per-attack figures on every clean-correct example, the per-example worst case, and
cascading (an attack run only on the examples still robust) that leaves the worst case unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustact.evaluation import evaluate


class Threshold(nn.Module):
    """Class 1 iff the first pixel exceeds 0.5: an attack that moves that pixel decides the outcome."""

    def forward(self, x):
        s = x.flatten(1)[:, :1] - 0.5
        return torch.cat([-s, s], 1)


class Recording:
    """Flips the prediction of the examples whose index is in `fools`; records how many it was shown."""

    def __init__(self, fools: set[int]) -> None:
        self.fools, self.seen = fools, []

    def __call__(self, model, x, y):
        self.seen += x[:, 0, 0, 1].long().tolist()  # index stored in pixel (0, 1)
        x = x.clone()
        for i, idx in enumerate(x[:, 0, 0, 1].long().tolist()):
            if idx in self.fools:
                x[i, 0, 0, 0] = 1.0 - x[i, 0, 0, 0]
        return x


def _data(n=10):
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.9 if i % 2 else 0.1 for i in range(n)])
    x[:, 0, 0, 1] = torch.arange(n).float()
    y = (x[:, 0, 0, 0] > 0.5).long()
    y[9] = 1 - y[9]  # one clean mistake
    return x, y


@pytest.mark.parametrize("cascade", [False, ["b"], True])
def test_worst_case_is_the_same_with_or_without_cascade(cascade):
    x, y = _data()
    a, b = Recording({0, 1, 2}), Recording({2, 3, 9})
    result = evaluate(Threshold(), x, y, {"a": a, "b": b}, eps=0.1, progress=False, only_robust=cascade)
    assert result.clean.tolist() == [True] * 9 + [False]
    assert result.worst.nonzero().flatten().tolist() == [4, 5, 6, 7, 8]
    assert sorted(a.seen) == list(range(9))  # the first attack always sees every clean-correct example
    if cascade:
        assert sorted(b.seen) == [3, 4, 5, 6, 7, 8] and result.cascaded == ["a", "b"][-len(result.cascaded):]
        assert result.accuracy()["b"] == pytest.approx(0.5)  # cumulative: robust to a and to b
    else:
        assert sorted(b.seen) == list(range(9)) and result.cascaded == []
        assert result.accuracy()["b"] == pytest.approx(0.7)  # on its own: 9 correct minus {2, 3}


def test_cascade_names_must_be_attacks():
    x, y = _data()
    with pytest.raises(ValueError, match="not attacks"):
        evaluate(Threshold(), x, y, {"a": Recording(set())}, eps=0.1, progress=False, only_robust=["z"])
