"""AutoAttack (Croce & Hein 2020): an ensemble of parameter-free attacks run in cascade.

"standard" = APGD-CE (100 steps, 1 restart), APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries);
"plus" = APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5 restarts, Square, APGD-T, FAB-T;
"rand" = APGD-CE and APGD-DLR with Expectation over Transformation (the gradient averaged over 20 forward passes),
for models whose forward pass is random (the sanity check `randomized_forward` says when). Each
attack runs only on the examples every earlier attack failed on, so the worst case per example comes at the
cost of the strongest attack on the hard examples only. The attacks are diverse on purpose: APGD-DLR/T are
invariant to logit scaling, FAB minimises the distance, Square needs no gradients.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustact.attacks.apgd import APGD, APGDT
from robustact.attacks.base import Attack, attack_mode, check_model_dtype
from robustact.attacks.fab import FAB
from robustact.attacks.predict import predict
from robustact.attacks.result import EvalResult
from robustact.attacks.square import Square
from robustact.errors import RobustactError

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
PLUS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
RAND = ("apgd-ce", "apgd-dlr")
EOT_ITER = 20  # the official "rand" version's gradient samples per step


def build_component(name: str, eps: float, norm: str, *, version: str = "standard", seed: int | None = 0,
                    extra_loss=None, model_mode: str = "eval") -> Attack:
    """One of AutoAttack's attacks with the official settings of `version` ("plus" has 5 restarts, "rand" EOT
    over 20 passes)."""
    restarts = 5 if version == "plus" else 1
    grad_kw = {"seed": seed, "extra_loss": extra_loss, "model_mode": model_mode}
    eot = {"eot_iter": EOT_ITER} if version == "rand" else {}
    if name == "apgd-ce":
        return APGD(eps, norm, loss="ce", steps=100, restarts=restarts, **eot, **grad_kw)
    if name == "apgd-dlr":
        return APGD(eps, norm, loss="dlr", steps=100, restarts=restarts, **eot, **grad_kw)
    if name == "apgd-t":
        return APGDT(eps, norm, steps=100, n_target_classes=9, restarts=1, **grad_kw)
    if name == "fab":
        return FAB(eps, norm, steps=100, targeted=False, restarts=restarts, **grad_kw)
    if name == "fab-t":
        return FAB(eps, norm, steps=100, n_target_classes=9, targeted=True, restarts=1, **grad_kw)
    if name == "square":
        return Square(eps, norm, n_queries=5000, p_init=0.8, restarts=1, seed=seed, model_mode=model_mode)
    raise RobustactError(f"unknown AutoAttack component {name!r}; known: {', '.join(ATTACK_NAMES)}")


class AutoAttack(Attack):
    """`AutoAttack(eps)(model, x, y) -> x_adv`; `.run(model, x, y) -> EvalResult` with the details (the
    evaluation's own result type: per attack and per example, in cascade by default, and `x_adv`).

    Args:
        version: "standard", "plus", "rand" (random models: EOT) or "custom" (then `attacks` names the subset,
            in order).
        attacks: for "custom": names from `ATTACK_NAMES`, Attack objects, or a {name: Attack} mapping
            (e.g. a Square with fewer queries).
        seed: seeds every component afresh on every batch (same inputs, same result).
        batch_size: examples per attack call.
        cascade: run each attack only on the examples still robust (default, as the official code);
            False runs each one on all clean-correct examples (per-attack robustness, slower).
        extra_loss: passed to the gradient attacks (a defense's aux-logit term).
    """

    name = "autoattack"

    def __init__(self, eps: float, norm: str = "Linf", *, version: str = "standard",
                 attacks: Sequence[str | Attack] | Mapping[str, Attack] | None = None, seed: int | None = 0,
                 batch_size: int = 500, verbose: bool = False, cascade: bool = True, extra_loss=None,
                 model_mode: str = "eval") -> None:
        super().__init__(eps, norm, extra_loss=extra_loss, model_mode=model_mode, seed=seed)
        if version not in VERSIONS:
            raise RobustactError(f"unknown AutoAttack version {version!r}; known: {', '.join(VERSIONS)}")
        if version != "custom" and attacks is not None:
            raise RobustactError(
                f"version={version!r} fixes the attacks; use version='custom' to choose them"
            )
        if version == "custom" and not attacks:
            raise RobustactError("version='custom' needs attacks, e.g. attacks=['apgd-ce', 'square']")
        if batch_size < 1:
            raise RobustactError(f"batch_size must be >= 1, got {batch_size}")
        self.version = version
        self.batch_size = int(batch_size)
        self.verbose = verbose
        self.cascade = cascade
        kw = {"seed": seed, "extra_loss": extra_loss, "model_mode": model_mode}
        if version == "custom":
            items = attacks.items() if isinstance(attacks, Mapping) else [
                (a, None) if isinstance(a, str) else (getattr(a, "name", type(a).__name__), a)
                for a in attacks
            ]
            self.attacks: dict[str, Attack] = {}
            for key, atk in items:
                if key in self.attacks:
                    raise RobustactError(f"attack {key!r} given twice; name them with a mapping")
                self.attacks[key] = atk if atk is not None else build_component(key, eps, norm, **kw)
        else:
            names = {"standard": STANDARD, "plus": PLUS, "rand": RAND}[version]
            self.attacks = {n: build_component(n, eps, norm, version=version, **kw) for n in names}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._run(model, x, y).x_adv

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        """Evaluate: clean correctness, robustness after each attack, timings and the adversarial inputs."""
        y = self._check_inputs(x, y)
        check_model_dtype(model, x)
        with attack_mode(model, self.model_mode):
            return self._run(model, x.detach(), y.detach())

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        clean = predict(model, x, self.batch_size, labels=y) == y
        res = EvalResult(n=len(y), eps=self.eps, norm=self.norm, clean=clean.clone(), x_adv=x.clone(),
                         seed=self.seed or 0,
                         attacks={name: repr(a) for name, a in self.attacks.items()},
                         cascaded=list(self.attacks) if self.cascade else [])
        robust = clean.clone()
        if self.verbose:
            print(f"[autoattack] clean accuracy {res.accuracy()['clean']:.2%} on {len(y)} examples")
        for name, attack in self.attacks.items():
            start = time.perf_counter()
            pool = robust if self.cascade else clean
            now = pool.clone()
            idx = pool.nonzero().flatten()
            for i in range(0, idx.numel(), self.batch_size):
                b = idx[i:i + self.batch_size]
                x_adv = attack(model, x[b], y[b])
                fooled = predict(model, x_adv, self.batch_size) != y[b]
                hit = b[fooled]
                now[hit] = False
                first = robust[hit]  # all of them in cascade mode; keep the first attack's point otherwise
                res.x_adv[hit[first]] = x_adv[fooled][first]
                robust[hit] = False
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            res.seconds[name] = time.perf_counter() - start
            res.robust[name] = now
            if self.verbose:
                print(f"[autoattack] {name}: robust accuracy {now.float().mean().item():.2%} "
                      f"({res.seconds[name]:.1f} s)")
        return res

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "norm": self.norm, "version": self.version, "attacks": "[" + "; ".join(
            f"{name}: {a!r}" for name, a in self.attacks.items()) + "]"}
