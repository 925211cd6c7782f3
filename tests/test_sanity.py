"""Sanity checks fire on purpose-built broken models — masked gradients (8-bit rounding), a randomised
forward, a loss landscape that traps small steps — and stay silent on a normal trained network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks import PGD, Square
from robustact.evaluation.sanity import (
    SanityFlag,
    check_gradients,
    check_large_eps,
    check_randomness,
    check_square,
    compare_fgsm_pgd,
    compare_more_steps,
    robust_under,
    run_sanity_checks,
)

EPS = 8 / 255
SHAPE = (3, 8, 8)
K = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes, each a faint random template plus noise: learnable, and breakable at large ε."""
    g = torch.Generator().manual_seed(123)
    templates = torch.rand(K, *SHAPE, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 0.5 + 0.2 * (templates[y] - 0.5) + 0.06 * torch.randn(n, *SHAPE, generator=g)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """A small conv net trained (cleanly) on the synthetic task: the 'normal network'."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, K))
    x, y = synthetic(512, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    xt, yt = synthetic(96, seed=2)
    with torch.no_grad():
        assert (net(xt).argmax(1) == yt).float().mean() > 0.9
    return net, xt, yt


class Rounded(nn.Module):
    """8-bit quantisation in the forward pass: round() has zero derivative, so input gradients vanish."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)


class Noisy(nn.Module):
    """Dropout on the input that stays on in eval mode: a randomised defense."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(F.dropout(x, p=0.3, training=True))


class Trap(nn.Module):
    """Two classes scored by u = mean(x) - 1/2 through a cubic with a local maximum of the loss at ε/12 and
    the true maximum at ε: a step of ε (FGSM) or ε/4 (PGD-10) jumps the trap and fools every example,
    steps of ε/20 (PGD-50) climb to the local maximum and stay there."""

    def __init__(self, eps: float = EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        e = self.eps
        s1, s2, k = e / 12, e / 6, 9 / e**3
        u = x.flatten(1).mean(1) - 0.5
        g = -1 + k * (u**3 / 3 - (s1 + s2) / 2 * u**2 + s1 * s2 * u)  # the loss-side score; > 0 = fooled
        return torch.stack([-g / 2, g / 2], 1)


def trap_data(n: int = 48):
    g = torch.Generator().manual_seed(5)
    noise = 0.1 * torch.rand(n, 3, 16, 16, generator=g)
    x = 0.5 + noise - noise.flatten(1).mean(1).view(-1, 1, 1, 1)  # mean exactly 1/2: u = 0
    return x, torch.zeros(n, dtype=torch.long)


def by_name(flags: list[SanityFlag]) -> dict[str, SanityFlag]:
    return {f.name: f for f in flags}


# -- the normal network: nothing fires -----------------------------------------------------------------
def test_silent_on_normal_network(trained):
    net, x, y = trained
    results = {
        "pgd20": robust_under(net, PGD(EPS, steps=20), x, y),
        "cw30": robust_under(net, PGD(EPS, steps=30, loss="margin"), x, y),
        "square": robust_under(net, Square(EPS, n_queries=300), x, y),
    }
    flags = run_sanity_checks(net, x, y, results, eps=EPS)
    assert len(flags) == 6
    fired = [str(f) for f in flags if f.fired]
    assert not fired, fired
    assert all(isinstance(f.message, str) and f.message for f in flags)
    assert by_name(flags)["large_eps_accuracy"].value < 0.05


def test_silent_without_results(trained):
    net, x, y = trained
    flags = by_name(run_sanity_checks(net, x[:48], y[:48], eps=EPS))
    assert not any(f.fired for f in flags.values()), [str(f) for f in flags.values()]
    assert "skipped" in flags["square_beats_gradient"].message


# -- masked gradients ----------------------------------------------------------------------------------
def test_rounding_model_fires_gradient_and_square_flags(trained):
    net, x, y = trained
    model = Rounded(net).eval()
    flag = check_gradients(model, x, y)
    assert flag.fired and flag.value == 1.0 and "masking" in flag.message
    eps = 24 / 255  # where Square breaks about half of the (unmasked) network's points
    results = {"pgd20": robust_under(model, PGD(eps, steps=20, random_start=False), x, y),
               "square": robust_under(model, Square(eps, n_queries=300), x, y)}
    sq = check_square(results)
    assert sq.fired and sq.value > 0.1 and "gradient" in sq.message
    large = check_large_eps(model, x, y, steps=20)
    assert large.fired and large.value > 0.05
    assert not check_randomness(model, x).fired


def test_nan_gradients_count_as_masked(trained):
    net, x, y = trained

    class NaNGrad(nn.Module):
        def forward(self, z):
            return net(z) + 0 * torch.sqrt(z.mean() - 2)  # sqrt of a negative: NaN gradient

    assert check_gradients(NaNGrad().eval(), x, y).fired


# -- randomness ------------------------------------------------------------------------------------------
def test_randomized_model_fires(trained):
    net, x, y = trained
    flag = check_randomness(Noisy(net).eval(), x)
    assert flag.fired and flag.value > 1e-3 and "EOT" in flag.message
    assert not check_randomness(net, x).fired


# -- a trap for small steps: (e) and (f) ---------------------------------------------------------------
def test_trap_model_fires_more_steps_and_fgsm_flags():
    model, (x, y) = Trap().eval(), trap_data()
    flags = by_name(run_sanity_checks(model, x, y, eps=EPS, steps=(10, 50), restarts=(1, 2)))
    assert flags["more_steps_raise_accuracy"].fired, flags["more_steps_raise_accuracy"]
    assert flags["more_steps_raise_accuracy"].value > 0.9
    assert flags["fgsm_beats_pgd"].fired and flags["fgsm_beats_pgd"].value > 0.9
    assert not flags["zero_or_nan_gradients"].fired and not flags["randomized_forward"].fired


# -- the comparisons on given per-example results --------------------------------------------------------
def test_comparisons_on_results():
    t = torch.tensor
    # 8 examples, 4 times over: 8 discordant pairs one way (McNemar p = 0.008)
    weak, strong = t([1, 1, 0, 0, 1, 0, 0, 0] * 4).bool(), t([1, 0, 0, 0, 0, 0, 0, 0] * 4).bool()
    assert compare_more_steps(strong, weak).fired  # more steps left more examples correct
    # the same gap on 8 examples (2 discordant pairs, p = 0.5) is noise: no flag, and the message says so
    noise = compare_more_steps(strong[:8], weak[:8])
    assert not noise.fired and noise.value == 0.25 and "within noise" in noise.message
    assert not compare_fgsm_pgd(strong[:8], weak[:8]).fired
    assert not compare_more_steps(weak, strong).fired
    assert compare_fgsm_pgd(strong, weak).fired  # FGSM stronger than PGD
    assert not compare_fgsm_pgd(weak, strong).fired
    res = {"apgd-ce": weak, "apgd-t": weak, "square": strong}
    assert check_square(res).fired and check_square(res).value == 2 / 8
    assert not check_square({"apgd-ce": strong, "square": weak}).fired
    assert not check_square({"apgd-ce": strong}).fired  # nothing to compare: skipped, not fired
    flags = by_name(run_sanity_checks(Trap().eval(), *trap_data(32), results={
        "pgd10": strong, "pgd100x5": weak, "fgsm": strong, "square": strong}))
    assert flags["more_steps_raise_accuracy"].fired and "pgd100x5" in flags["more_steps_raise_accuracy"].message
    assert flags["fgsm_beats_pgd"].fired
    # FGSM (cross-entropy) is compared with iterative attacks of its own loss only: beating CW's margin attack
    # is no sign of masking (the CIFS verdict row once came out "masking" on exactly this)
    flags = by_name(run_sanity_checks(Trap().eval(), *trap_data(32), results={
        "fgsm": strong, "pgd20": strong, "pgd100": strong, "cw30": weak, "apgd-t": weak}))
    assert not flags["fgsm_beats_pgd"].fired and "pgd" in flags["fgsm_beats_pgd"].message
    flags = by_name(run_sanity_checks(Trap().eval(), *trap_data(8), results={
        "fgsm": strong, "pgd20": weak, "pgd100": strong, "cw30": strong}))
    assert flags["fgsm_beats_pgd"].fired and "pgd20" in flags["fgsm_beats_pgd"].message
    # a report without a same-objective multi-step attack: FGSM and PGD both run here, on plain cross-entropy
    flags = by_name(run_sanity_checks(Trap().eval(), *trap_data(32), results={"fgsm": strong, "cw30": weak}))
    assert "cw30" not in flags["fgsm_beats_pgd"].message and "pgd" in flags["fgsm_beats_pgd"].message
    assert SanityFlag("x", True, 1.0, "m").to_dict() == {"name": "x", "fired": True, "value": 1.0, "message": "m"}
