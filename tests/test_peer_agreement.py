"""Agreement with the reference implementations on a small adversarially trained CIFAR-10 network.

robustact's APGD-CE, APGD-T, FAB-T, Square and AutoAttack against the official AutoAttack code
(`pyautoattack`), and PGD against torchattacks, on the same model, images and settings. A robust accuracy
must be within 1.5 points of the reference's, and never weaker than it by more than that. The default run
uses a few hundred images and shortened settings; `-m slow` runs the full standard settings on 500 images.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from robustact.attacks import APGD, APGDT, FAB, PGD, AutoAttack, Square
from robustact.bench import quick_pgd_at, small_cnn

pyautoattack = pytest.importorskip("pyautoattack")
torchattacks = pytest.importorskip("torchattacks")

from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: E402
from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402
from pyautoattack.square import SquareAttack  # noqa: E402

EPS = 8 / 255
TOL = 0.015  # 1.5 points of robust accuracy
N_TRAIN, EPOCHS = 4000, 8


def _data_root() -> Path | None:
    root = os.environ.get("ROBUSTACT_DATA")
    ok = root and (Path(root) / "cifar-10-batches-py" / "test_batch").is_file()
    return Path(root) if ok else None


pytestmark = [pytest.mark.skipif(_data_root() is None, reason="set ROBUSTACT_DATA to a folder with CIFAR-10"),
              pytest.mark.usefixtures("one_thread")]


def load_cifar(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from robustact.data import load_dataset

    x, y = load_dataset("cifar10", split)
    return x[:n].float() / 255, y[:n].clone()


@pytest.fixture(scope="session")
def robust_net(tmp_path_factory) -> nn.Module:
    """PGD-AT (ε = 8/255, 3 steps of 3/255) on the first 4000 training images; weights cached per session."""
    from safetensors.torch import load_file, save_file

    path = tmp_path_factory.getbasetemp() / "peer_agreement_small_cnn.safetensors"
    model = small_cnn()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the module's one-thread fixture
    torch.manual_seed(0)
    model = small_cnn()
    x, y = load_cifar("train", N_TRAIN)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        quick_pgd_at(model, x, y, EPOCHS, EPS)
    torch.set_num_threads(threads)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


@pytest.fixture(scope="session")
def test_images():
    return load_cifar("test", 500)


def correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def official(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, *, version: str = "custom",
             component=None) -> torch.Tensor:
    """Per-example robustness under the official AutoAttack, `name` alone (or a whole `version`)."""
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    kw = {"attacks": [name]} if version == "custom" else {}
    aa = pyautoattack.AutoAttack(model, eps=EPS, norm="Linf", version=version, seed=0, device="cpu", **kw)
    aa.verbose = False
    if component is not None:
        setattr(aa, {"apgd-ce": "apgd", "apgd-t": "apgd_targeted", "fab-t": "fab", "square": "square"}[name],
                component(model))
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500)
    return correct(model, x_adv, y)


def ours(model: nn.Module, attacks, x: torch.Tensor, y: torch.Tensor, version: str = "custom") -> torch.Tensor:
    kw = {"attacks": attacks} if version == "custom" else {}
    return AutoAttack(EPS, version=version, batch_size=500, **kw).run(model, x, y).worst


def assert_agree(mine: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    a, b = mine.float().mean().item(), ref.float().mean().item()
    diff = int((mine != ref).sum())
    msg = f"{what}: robustact {a:.2%} vs official {b:.2%} ({diff} examples differ, n={len(ref)})"
    print(msg)
    assert abs(a - b) <= TOL + 1e-9, msg
    assert a <= b + TOL + 1e-9, msg  # never weaker by more than the tolerance


# -- the default run: shortened settings, a few hundred images -----------------------------------------
N = 200
SHORT = {
    # name: (robustact attack, official component factory)
    "apgd-ce": (lambda: APGD(EPS, steps=100),
                lambda m: APGDAttack(m, n_iter=100, eps=EPS, norm="Linf", n_restarts=1, seed=0, device="cpu")),
    "apgd-t": (lambda: APGDT(EPS, steps=100, n_target_classes=3),
               lambda m: APGDAttack_targeted(m, n_iter=100, eps=EPS, norm="Linf", n_target_classes=3, seed=0,
                                             device="cpu")),
    "fab-t": (lambda: FAB(EPS, steps=50, n_target_classes=3),
              lambda m: FABAttack_PT(m, n_iter=50, eps=EPS, norm="Linf", targeted=True, n_target_classes=3,
                                     seed=0, device="cpu")),
    "square": (lambda: Square(EPS, n_queries=1000),
               lambda m: SquareAttack(m, n_queries=1000, eps=EPS, norm="Linf", p_init=0.8, seed=0,
                                      resc_schedule=False, device="cpu")),
}


def test_trained_network_is_robust_enough_to_compare(robust_net, test_images):
    x, y = test_images
    clean = correct(robust_net, x[:N], y[:N]).float().mean().item()
    pgd = correct(robust_net, PGD(EPS, steps=10)(robust_net, x[:N], y[:N]), y[:N]).float().mean().item()
    assert clean > 0.3 and pgd > 0.15, (clean, pgd)


@pytest.mark.parametrize("name", list(SHORT))
def test_attack_agrees_with_official(robust_net, test_images, name):
    x, y = test_images[0][:N], test_images[1][:N]
    mine_attack, ref_component = SHORT[name]
    mine = ours(robust_net, {name: mine_attack()}, x, y)
    ref = official(robust_net, name, x, y, component=ref_component)
    assert_agree(mine, ref, name)


def test_pgd_matches_torchattacks(robust_net, test_images):
    """No random start: the same deterministic iteration, so the same points (up to float ties)."""
    x, y = test_images[0][:N], test_images[1][:N]
    mine = PGD(EPS, steps=10, alpha=2 / 255, random_start=False)(robust_net, x, y)
    ref = torchattacks.PGD(robust_net, eps=EPS, alpha=2 / 255, steps=10, random_start=False)(x, y)
    assert (mine - ref).abs().max() <= 1e-6 or (mine != ref).flatten(1).any(1).sum() <= 2
    assert_agree(correct(robust_net, mine, y), correct(robust_net, ref, y), "pgd10 vs torchattacks")
    assert torch.equal(correct(robust_net, mine, y), correct(robust_net, ref, y))


# -- the full comparison: standard settings, 500 images (`pytest -m slow`) -----------------------------
class _AfterEach(logging.Handler):
    """Collects the official code's 'robust accuracy after X: ...%' log lines (its cascade bookkeeping)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.after: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"robust accuracy after (\S+): ([\d.]+)%", record.getMessage())
        if m:
            self.after[m.group(1).lower()] = float(m.group(2)) / 100


@pytest.mark.slow
@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
def test_full_gradient_attack_agrees_with_official(robust_net, test_images, name):
    x, y = test_images
    mine = ours(robust_net, [name], x, y)
    ref = official(robust_net, name, x, y)
    assert_agree(mine, ref, f"{name} (standard settings)")


@pytest.mark.slow
def test_full_autoattack_agrees_with_official(robust_net, test_images):
    """AutoAttack standard on 500 images: the worst case, and the robust accuracy after each attack of the
    cascade (APGD-CE, APGD-T, FAB-T with 9 targets, Square with 5000 queries)."""
    x, y = test_images
    res = AutoAttack(EPS, version="standard", batch_size=500).run(robust_net, x, y)
    log = _AfterEach()
    logger = logging.getLogger("auto-attack")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(log)
    try:
        aa = pyautoattack.AutoAttack(robust_net, eps=EPS, norm="Linf", version="standard", seed=0, device="cpu")
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500)
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    assert_agree(res.worst, correct(robust_net, x_adv, y), "AutoAttack standard")
    for name, robust in res.robust.items():
        mine, theirs = robust.float().mean().item(), log.after[name]
        print(f"  after {name}: robustact {mine:.2%} vs official {theirs:.2%}")
        assert abs(mine - theirs) <= TOL + 1e-9 and mine <= theirs + TOL + 1e-9, name
