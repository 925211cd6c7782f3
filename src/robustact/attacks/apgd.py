"""APGD (Croce & Hein 2020): PGD with momentum whose step size halves at checkpoints where progress stalls.

No step size to tune: it starts at 2ε and is halved for an example when, since the last checkpoint, its loss
rose in at most a fraction ρ of the steps, or its best loss did not improve after a step that was not halved;
the iterate then restarts from the best point. `APGDT` runs it on the targeted DLR loss toward the top
other classes — with APGD-CE, the gradient half of AutoAttack "standard".

Faithful to the official code (checkpoints at 22%, then -3% down to 6% of the steps, momentum 0.75, the
start `x + ε·t/‖t‖`), with two speed-ups that change no example's outcome: examples are dropped from the
batch once misclassified (every step of an example depends only on that example), and there is no host
sync inside the iteration loop except one every `compact_every` steps to drop them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, count_setting, size_setting
from robustact.attacks.losses import dlr_targeted_loss
from robustact.errors import RobustactError


def _checkpoint_lengths(steps: int) -> tuple[int, int, int]:
    """(first period, minimal period, decrement) of the step-size checkpoints, as fractions of `steps`."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


class APGD(Attack):
    """Auto-PGD on CE (`loss="ce"`, APGD-CE) or DLR (`loss="dlr"`, APGD-DLR), Linf or L2.

    Restarts run only on the examples still robust. A fooled example gets the (last) misclassified iterate;
    a robust one gets the highest-loss iterate over all restarts. `eot_iter` > 1 averages gradients over
    several forward passes (randomised models). `extra_loss` is added to the loss as in every attack.
    """

    name = "apgd"

    def __init__(self, eps: float, norm: str = "Linf", *, steps: int = 100, restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, eot_iter: int = 1, compact_every: int = 5,
                 **kwargs) -> None:
        super().__init__(eps, norm, loss=loss, **kwargs)
        self.steps = count_setting(steps, "APGD steps")
        self.restarts = count_setting(restarts, "APGD restarts")
        self.rho = size_setting(rho, "APGD rho", 0.0, 1.0)
        self.eot_iter = count_setting(eot_iter, "APGD eot_iter")
        self.compact_every = count_setting(compact_every, "APGD compact_every")

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"steps": self.steps, "restarts": self.restarts, "rho": self.rho,
                                     "eot_iter": self.eot_iter}

    # -- what APGDT overrides ----------------------------------------------------------------------
    def objective(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None) -> torch.Tensor:
        """The per-example loss to ascend; `target` is unused here (APGDT's target classes)."""
        return self.loss(model, logits, y)

    def fooled(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    # -- the attack --------------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        with torch.no_grad():
            robust = ~self.fooled(self.forward(model, x), y)
        out = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for _ in range(self.restarts):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            self._run_into(model, x, y, idx, None, gen, out, robust, best_loss)
        return out

    def _run_into(self, model, x, y, idx, target, gen, out, robust, best_loss) -> None:
        """One APGD run on the examples `idx`; writes the results into out / robust / best_loss."""
        x_r, fooled, loss = self._single_run(model, x[idx], y[idx], target, gen)
        take = fooled | (loss > best_loss[idx])
        out[idx[take]] = x_r[take]
        best_loss[idx] = torch.where(take, loss, best_loss[idx])
        robust[idx[fooled]] = False

    def _grad(self, model, x_adv, y, target):
        """(logits, loss, gradient) at x_adv; with EOT the gradient is the mean over `eot_iter` passes."""
        grad = None
        for _ in range(self.eot_iter):
            x_req = x_adv.detach().requires_grad_(True)
            logits = self.forward(model, x_req)
            loss = self.objective(model, logits, y, target)
            (g,) = torch.autograd.grad(loss.sum(), x_req)
            grad = g if grad is None else grad + g
        if self.eot_iter > 1:
            grad = grad / self.eot_iter
        return logits.detach(), loss.detach(), grad.detach()

    def _view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *([1] * (like.dim() - 1)))

    def _l2(self, t: torch.Tensor) -> torch.Tensor:
        return self._view(t.flatten(1).norm(dim=1), t)

    def _start(self, x: torch.Tensor, gen) -> torch.Tensor:
        """x + ε·t/‖t‖ with t uniform in [-1, 1] (Linf) or Gaussian (L2): on the sphere, then into [0, 1]."""
        if self.norm == "Linf":
            t = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
            t = t / (self._view(t.flatten(1).abs().amax(dim=1), t) + 1e-12)
        else:
            t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            t = t / (self._l2(t) + 1e-12)
        return (x + self.eps * t).clamp(0.0, 1.0)

    def _projector(self, x: torch.Tensor):
        """`proj(z, x)` onto (ε-ball around x) ∩ [0, 1]; Linf precomputes the per-pixel bounds: one clamp."""
        if self.norm == "Linf":
            lo, hi = (x - self.eps).clamp_min(0.0), (x + self.eps).clamp_max(1.0)
            return lambda z, x0: torch.clamp(z, lo, hi)

        def proj_l2(z, x0):
            d = z - x0
            n = self._l2(d)
            return (x0 + d / (n + 1e-12) * torch.clamp(n, max=self.eps)).clamp(0.0, 1.0)

        return proj_l2

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "Linf":
            return grad.sign()
        return grad / (self._l2(grad) + 1e-12)

    def _initial_state(self, x, y, x_adv, loss, grad, fooled, target) -> dict[str, torch.Tensor]:
        """The per-example state of one run, every entry indexed by active row (rows leave when fooled)."""
        n = x.shape[0]
        s = {
            "idx": torch.arange(n, device=x.device),
            "x": x, "y": y, "x_adv": x_adv, "x_old": x_adv.clone(), "grad": grad,
            "x_best": x_adv.clone(), "grad_best": grad.clone(), "loss_best": loss.clone(),
            "x_best_adv": x_adv.clone(), "fooled": fooled,
            "step": torch.full((n,), 2.0 * self.eps, device=x.device),
            # loss history; row -1 (still zero at the first checkpoint) is compared as the official code does
            "loss_steps": torch.zeros(n, self.steps, device=x.device),
            "best_at_check": loss.clone(), "reduced": torch.ones(n, dtype=torch.bool, device=x.device),
        }
        if target is not None:
            s["target"] = target
        return s

    @torch.no_grad()
    def _momentum_step(self, s: dict, proj, i: int) -> torch.Tensor:
        """The next iterate: a projected step along the gradient direction, mixed with the last move."""
        x_adv, x0 = s["x_adv"], s["x"]
        momentum = x_adv - s["x_old"]
        s["x_old"] = x_adv
        a = 0.75 if i > 0 else 1.0
        z = proj(x_adv + self._view(s["step"], x0) * self._direction(s["grad"]), x0)
        return proj(x_adv + (z - x_adv) * a + momentum * (1 - a), x0)

    @torch.no_grad()
    def _record(self, s: dict, i: int, x_adv, logits, loss, grad) -> None:
        """Keep the first misclassified point, the loss history, and the best-loss point and its gradient."""
        x0 = s["x"]
        now = self.fooled(logits, s["y"])
        s["x_best_adv"] = torch.where(self._view(now, x0), x_adv, s["x_best_adv"])
        s["fooled"] = s["fooled"] | now
        s["loss_steps"][:, i] = loss
        better = loss > s["loss_best"]
        b4 = self._view(better, x0)
        s["x_best"] = torch.where(b4, x_adv, s["x_best"])
        s["grad_best"] = torch.where(b4, grad, s["grad_best"])
        s["loss_best"] = torch.where(better, loss, s["loss_best"])

    @torch.no_grad()
    def _checkpoint(self, s: dict, i: int, k: int, x_adv, grad):
        """At a checkpoint: halve the step of the examples that stalled and send them back to their best
        point (and its gradient); returns the iterate and gradient to continue from."""
        cols = torch.arange(i - k + 1, i + 1, device=x_adv.device)  # index -1 wraps, as the official code
        hist = s["loss_steps"]
        rises = (hist[:, cols] > hist[:, cols - 1]).sum(1)
        halve = (rises <= k * self.rho) | (~s["reduced"] & (s["best_at_check"] >= s["loss_best"]))
        s["reduced"] = halve
        s["best_at_check"] = s["loss_best"].clone()
        s["step"] = torch.where(halve, s["step"] / 2, s["step"])
        h4 = self._view(halve, s["x"])
        return torch.where(h4, s["x_best"], x_adv), torch.where(h4, s["grad_best"], grad)

    def _single_run(self, model, x, y, target, gen):
        """One APGD run: (point per example, fooled?, best loss). Fooled examples leave the batch."""
        n, steps = x.shape[0], self.steps
        k, k_min, k_decr = _checkpoint_lengths(steps)
        x_adv = self._start(x, gen)
        logits, loss, grad = self._grad(model, x_adv, y, target)
        s = self._initial_state(x, y, x_adv, loss, grad, self.fooled(logits, y), target)
        # outputs for the whole batch; rows are written when an example leaves or at the end
        out_x = torch.empty_like(x)
        out_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        out_loss = torch.empty(n, device=x.device)
        proj = self._projector(x)

        def flush(rows: torch.Tensor) -> None:
            i = s["idx"][rows]
            f = s["fooled"][rows]
            out_x[i] = torch.where(self._view(f, x), s["x_best_adv"][rows], s["x_best"][rows])
            out_fooled[i] = f
            out_loss[i] = s["loss_best"][rows]

        def compact() -> bool:
            nonlocal proj
            keep = ~s["fooled"]
            if bool(keep.all()):
                return True
            flush((~keep).nonzero().flatten())
            rows = keep.nonzero().flatten()
            for key in list(s):
                s[key] = s[key][rows]
            proj = self._projector(s["x"])
            return rows.numel() > 0

        if not compact():
            return out_x, out_fooled, out_loss
        counter = 0
        for i in range(steps):
            x_adv = self._momentum_step(s, proj, i)
            logits, loss, grad = self._grad(model, x_adv, s["y"], s.get("target"))
            self._record(s, i, x_adv, logits, loss, grad)
            counter += 1
            if counter == k:
                x_adv, grad = self._checkpoint(s, i, k, x_adv, grad)
                k = max(k - k_decr, k_min)
                counter = 0
            s["x_adv"], s["grad"] = x_adv, grad
            if (i + 1) % self.compact_every == 0 and i + 1 < steps and not compact():
                return out_x, out_fooled, out_loss
        flush(torch.arange(s["idx"].numel(), device=x.device))
        return out_x, out_fooled, out_loss


class APGDT(APGD):
    """APGD on the targeted DLR loss, toward each of the `n_target_classes` highest-scoring other classes
    in turn (clean logits), each run only on the examples still robust. `y` are the true labels; an
    example counts as fooled once misclassified as any class. Needs >= 4 classes."""

    name = "apgd-t"

    def __init__(self, eps: float, norm: str = "Linf", *, steps: int = 100, n_target_classes: int = 9,
                 restarts: int = 1, **kwargs) -> None:
        if kwargs.pop("loss", "dlr") != "dlr":
            raise ValueError("APGDT optimises the targeted DLR loss; use APGD for other losses")
        if kwargs.get("targeted"):
            raise ValueError("APGDT picks its own targets: pass the true labels, not targeted=True")
        super().__init__(eps, norm, steps=steps, restarts=restarts, loss="dlr", **kwargs)
        self.loss_name = "dlr-targeted"
        self.n_target_classes = count_setting(n_target_classes, "APGD-T n_target_classes")

    def objective(self, model, logits, y, target):
        value = dlr_targeted_loss(logits, y, target)
        if self.extra_loss is not None:
            value = value + self.extra_loss(model, logits, y)
        return value

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        with torch.no_grad():
            logits = self.forward(model, x)
        if logits.shape[1] < 4:
            raise RobustactError(
                f"APGD-T's targeted DLR loss needs >= 4 classes, the model has {logits.shape[1]}"
            )
        ranked = logits.argsort(dim=1, descending=True)
        robust = ~self.fooled(logits, y)
        out = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for t in range(1, min(self.n_target_classes, logits.shape[1] - 1) + 1):
            for _ in range(self.restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    return out
                self._run_into(model, x, y, idx, ranked[idx, t], gen, out, robust, best_loss)
        return out

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"n_target_classes": self.n_target_classes}
