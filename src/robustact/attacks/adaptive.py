"""Building blocks of defense-aware (adaptive) attacks: joint losses over the aux heads, mask-mode wrappers,
and the per-example worst case over several attacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks.pgd import PGD
from robustact.defenses.base import aux_logits, conditioned, mask_mode, sites
from robustact.evaluation.engine import predict


def joint_loss(beta: float, aux_only: bool = False, reduce: str = "mean"):
    """Extra loss `(model, logits, y) -> (N,)` adding β·(mean or sum over sites of CE(aux_s, y)).

    With `aux_only=True` pair it with an attack whose main loss is zeroed (`aux_only_loss`)."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be mean or sum, got {reduce!r}")

    def extra(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        heads = aux_logits(model)
        if not heads or beta == 0:
            return torch.zeros(y.shape[0], device=y.device)
        ce = torch.stack([F.cross_entropy(a.float(), y, reduction="none") for a in heads])
        return beta * (ce.mean(0) if reduce == "mean" else ce.sum(0))

    extra.__name__ = f"joint_beta{beta:g}" + ("_auxonly" if aux_only else "")
    return extra


def aux_only_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A zero main loss: the attack ascends only its extra (aux) loss."""
    return torch.zeros(y.shape[0], device=y.device)


class WithMasks:
    """Run `attack` with every defense site in `mode` ("pred" | "soft" | "label"; label = the attacked labels,
    or the fixed `mask_labels(y)` if given — e.g. to force the mask of one class)."""

    def __init__(self, attack, mode: str, mask_labels=None, name: str | None = None) -> None:
        self.attack, self.mode, self.mask_labels, self.name = attack, mode, mask_labels, name

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "label":
            labels = y if self.mask_labels is None else self.mask_labels(y)
            with conditioned(model, labels):
                return self.attack(model, x, y)
        with mask_mode(model, self.mode):
            return self.attack(model, x, y)

    def __repr__(self) -> str:
        return self.name or f"WithMasks({self.attack!r}, mode={self.mode})"


class WorstOf:
    """Per example, the first of several attacks' results that fools the model (its inference-mode
    prediction); the last attack's result where none does. Attacks after a success are skipped for that point."""

    def __init__(self, attacks: list, name: str | None = None) -> None:
        self.attacks, self.name = list(attacks), name

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        open_ = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for attack in self.attacks:
            idx = open_.nonzero().flatten()
            if idx.numel() == 0:
                break
            x_adv = attack(model, x[idx], y[idx])
            best[idx] = x_adv
            open_[idx[_fooled(model, x_adv, y[idx])]] = False
        return best

    def __repr__(self) -> str:
        return self.name or "WorstOf(" + ", ".join(repr(a) for a in self.attacks) + ")"


# -- soft-mask BPDA, mask enumeration, staged and transfer attacks (CAS / EWAS adaptive protocols) -------------
def aux_loss(beta: float, loss: str = "ce", kappa: float = 0.0, reduce: str = "mean", targets=None):
    """Extra loss `(model, logits, y) -> (N,)`: β·(mean or sum over sites) of a loss on each aux head.

    `loss`: "ce" or "margin" (CW, `kappa`). With `targets` (a (N,) tensor of classes) the aux heads are pulled
    *toward* those classes (the negated CE to the targets), e.g. to make the aux head pick a chosen mask."""
    from robustact.attacks.losses import margin_loss

    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be mean or sum, got {reduce!r}")
    if loss not in ("ce", "margin"):
        raise ValueError(f"aux loss must be ce or margin, got {loss!r}")

    def one(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if targets is not None:
            return -F.cross_entropy(a.float(), targets, reduction="none")
        if loss == "margin":
            return margin_loss(a, y, kappa)
        return F.cross_entropy(a.float(), y, reduction="none")

    def extra(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        heads = aux_logits(model)
        if not heads or beta == 0:
            return torch.zeros(y.shape[0], device=y.device)
        values = torch.stack([one(a, y) for a in heads])
        return beta * (values.mean(0) if reduce == "mean" else values.sum(0))

    extra.__name__ = f"aux_{loss}_beta{beta:g}" + ("_toward" if targets is not None else "")
    return extra


def set_temperature(model: nn.Module, value: float) -> None:
    """Set the soft-mask temperature of every site that has one (sites without a `temperature` are skipped)."""
    for site in sites(model):
        if hasattr(site, "temperature"):
            site.temperature = float(value)


class SoftMaskPGD(PGD):
    """PGD through the soft-mask surrogate (BPDA): every site in `mask_mode="soft"` — hard mask forward,
    `softmax(a/T)·W` backward — with T annealed geometrically from `t_start` to `t_end` over the steps of each
    restart. The attack only sets `mask_mode` and `temperature`; the sites define the surrogate."""

    name = "pgd-softmask"

    def __init__(self, eps: float, norm: str = "Linf", *, t_start: float = 10.0, t_end: float = 0.1,
                 **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)
        if t_start <= 0 or t_end <= 0:
            raise ValueError("soft-mask temperatures must be > 0")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self._calls = 0

    def temperature_at(self, step: int) -> float:
        frac = step / max(self.steps - 1, 1)
        return self.t_start * (self.t_end / self.t_start) ** frac

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        saved = [(s, getattr(s, "temperature", None)) for s in sites(model)]
        self._calls = 0
        try:
            with mask_mode(model, "soft"):
                return super().perturb(model, x, y)
        finally:
            for s, t in saved:
                if t is not None:
                    s.temperature = t

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        set_temperature(model, self.temperature_at(self._calls % self.steps))
        self._calls += 1
        return super().loss_and_grad(model, x, y)

    def __repr__(self) -> str:
        return (f"SoftMaskPGD(eps={self.eps:.5g}, steps={self.steps}, alpha={self.alpha:.5g}, "
                f"T={self.t_start:g}->{self.t_end:g}, loss={self.loss_name}"
                + (f"+{self.extra_loss.__name__}" if self.extra_loss is not None else "") + ")")


def _fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Misclassified by the real (eval-mode, predicted-mask) model."""
    return predict(model, x, batch_size=max(len(x), 1)) != y


class EnumerateMasks:
    """Worst case over the K possible masks: for each class k, fix every site's mask to k (label-conditioned
    forward) and attack with `make_attack(k)` — an attack whose loss also pulls the aux heads toward k, so that
    the real (predicted-mask) model picks that mask. Per example the classes are tried in the order of the
    aux heads' clean ranking and an example is done once fooled (judged on the real model)."""

    def __init__(self, make_attack, num_classes: int | None = None, name: str | None = None) -> None:
        self.make_attack, self.num_classes, self.name = make_attack, num_classes, name

    @torch.no_grad()
    def _ranking(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            logits = model(x)
            heads = aux_logits(model)
        finally:
            model.train(was)
        score = torch.stack([F.softmax(a.float(), 1) for a in heads]).mean(0) if heads else F.softmax(logits, 1)
        return score.argsort(dim=1, descending=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ranking = self._ranking(model, x)
        k_max = ranking.shape[1] if self.num_classes is None else min(self.num_classes, ranking.shape[1])
        best = x.clone()
        open_ = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for j in range(k_max):
            idx = open_.nonzero().flatten()
            if idx.numel() == 0:
                break
            k = ranking[idx, j]
            with conditioned(model, k):
                x_adv = self.make_attack(k)(model, x[idx], y[idx])
            best[idx] = x_adv
            open_[idx[_fooled(model, x_adv, y[idx])]] = False
        return best

    def __repr__(self) -> str:
        return self.name or f"EnumerateMasks({self.make_attack})"


class StagedPGD(PGD):
    """PGD in stages inside one ε-ball, each stage with its own loss: `stages` is a list of
    `(steps, loss, extra_loss)`; stage i+1 starts where stage i ended. E.g. two-stage: flip the aux head
    (aux-only loss), then attack the final head (CE + aux term keeping it flipped)."""

    name = "pgd-staged"

    def __init__(self, eps: float, norm: str = "Linf", *, stages: list, alpha: float | None = None,
                 random_start: bool = True, **kwargs) -> None:
        from robustact.attacks.losses import resolve_loss

        total = sum(int(s[0]) for s in stages)
        super().__init__(eps, norm, steps=total, alpha=alpha, random_start=random_start, **kwargs)
        self.stages = [(int(steps), resolve_loss(loss, self.kappa), extra) for steps, loss, extra in stages]
        self.stage_names = [f"{steps}x{loss if isinstance(loss, str) else getattr(loss, '__name__', 'custom')}"
                            + (f"+{extra.__name__}" if extra is not None else "") for steps, loss, extra in stages]

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.random_start(x, self.generator(x.device)) if self.random_start_ else x.clone()
        saved = (self.loss_fn, self.extra_loss)
        try:
            for steps, loss_fn, extra in self.stages:
                self.loss_fn, self.extra_loss = loss_fn, extra
                for _ in range(steps):
                    _, _, grad = self.loss_and_grad(model, x_adv, y)
                    x_adv = self.project(x_adv + self.ascent_step(grad, self.alpha), x)
        finally:
            self.loss_fn, self.extra_loss = saved
        return x_adv

    def __repr__(self) -> str:
        return f"StagedPGD(eps={self.eps:.5g}, alpha={self.alpha:.5g}, stages={self.stage_names})"


class Transfer:
    """A transfer attack: craft on a `surrogate` model (or a run/checkpoint path, loaded on first use), then
    hand the result to the attacked model."""

    def __init__(self, attack, surrogate, name: str | None = None) -> None:
        self.attack, self.surrogate, self.name = attack, surrogate, name

    def _model(self, device: torch.device) -> nn.Module:
        if not isinstance(self.surrogate, nn.Module):
            from robustact.runs import load_model

            self.surrogate = load_model(self.surrogate)[0]
        return self.surrogate.to(device).eval()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(self._model(x.device), x, y)

    def __repr__(self) -> str:
        src = "model" if isinstance(self.surrogate, nn.Module) else str(self.surrogate)
        return self.name or f"Transfer({self.attack!r}, surrogate={src})"


class Described:
    """An attack with a full description as its `repr` (what reports print as its settings); attribute
    access goes to the wrapped attack."""

    def __init__(self, attack, description: str) -> None:
        self.attack, self.description = attack, description

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(model, x, y)

    def __getattr__(self, name: str):
        if name in ("attack", "description"):
            raise AttributeError(name)
        return getattr(self.attack, name)

    def __repr__(self) -> str:
        return self.description
