"""The evaluation engine: per-attack figures on every clean-correct example, the per-example worst case, and
cascading (an attack run only on the examples still robust) that leaves the worst case unchanged."""

from __future__ import annotations

import json

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


class Interrupted(Exception):
    pass


class Breaking(Recording):
    """A Recording attack that is interrupted (like Ctrl-C) on its `breaks_at`-th call."""

    def __init__(self, fools, breaks_at=None):
        super().__init__(fools)
        self.breaks_at, self.calls = breaks_at, 0

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls == self.breaks_at:
            raise Interrupted
        return super().__call__(model, x, y)


@pytest.mark.parametrize("cascade", [False, True])
def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(tmp_path, cascade):
    from robustact.evaluation.journal import EvalJournal

    x, y = _data(10)
    settings = {"attacks": "a,b", "batch_size": 2}

    def run(journal, breaks_b=None):
        a, b = Breaking({0, 1, 2}), Breaking({2, 3, 9, 5}, breaks_b)
        result = evaluate(Threshold(), x, y, {"a": a, "b": b}, eps=0.1, batch_size=2, progress=False,
                          only_robust=cascade, journal=journal)
        return result, a, b

    reference, _, b_ref = run(None)
    path = tmp_path / "eval.partial.json"
    with pytest.raises(Interrupted):
        run(EvalJournal(path, settings, min_interval=3600.0), breaks_b=2)  # flushed on the way out regardless
    journal = EvalJournal(path, settings)
    assert journal.resumed and journal.progress("a")[0] == 5 and journal.progress("b")[0] == 1
    result, a, b = run(journal)
    assert a.seen == []  # attack a finished before the interruption: not run again
    assert sorted(b.seen) == sorted(b_ref.seen)[2:]  # b's first batch (indices in order) is not run again
    assert result.worst.tolist() == reference.worst.tolist()
    assert {k: r.tolist() for k, r in result.robust.items()} == {k: r.tolist() for k, r in reference.robust.items()}


def test_a_journal_with_other_settings_is_refused(tmp_path):
    from robustact.errors import RobustactError
    from robustact.evaluation.journal import EvalJournal

    x, y = _data(10)
    path = tmp_path / "eval.partial.json"
    evaluate(Threshold(), x, y, {"a": Recording({1})}, eps=0.1, batch_size=4, progress=False,
             journal=EvalJournal(path, {"eps": 0.1, "batch_size": 4}))
    with pytest.raises(RobustactError, match=r"other settings \(batch_size\).*--restart"):
        EvalJournal(path, {"eps": 0.1, "batch_size": 8})
    assert not EvalJournal(path, {"eps": 0.1, "batch_size": 8}, restart=True).resumed
    path.write_text("{not json")
    with pytest.raises(RobustactError, match="not a readable evaluation journal"):
        EvalJournal(path, {"eps": 0.1})
    path.write_text(json.dumps({"settings": {"eps": 0.1}, "clean": [0] * 10, "attacks": {}}))
    with pytest.raises(RobustactError, match="clean predictions differ"):
        evaluate(Threshold(), x, y, {"a": Recording(set())}, eps=0.1, progress=False,
                 journal=EvalJournal(path, {"eps": 0.1}))
