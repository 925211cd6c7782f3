"""FAB (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack").

Each step linearises the decision boundary at the iterate, projects both the iterate and the clean point
onto that hyperplane (within the [0, 1] box), and takes a convex combination biased toward the clean point
(so the result stays close); once misclassified, the iterate is pulled back toward the clean point by β.
FAB-T (`targeted=True`, AutoAttack standard) uses the boundary to each of the top `n_target_classes` other
classes in turn, so it needs one gradient per step instead of the full Jacobian.

As the official code, FAB minimises the distance but returns a point only when it is misclassified within
ε, and the clean input otherwise. `early_stop` (default) drops an example from the batch as soon as it has
an adversarial point within ε — its outcome is then settled — which saves most of FAB's time on weak models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, count_setting, size_setting


def hyperplane_projection(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str,
                          max_iter: int = 100) -> torch.Tensor:
    """The smallest `d` (in Linf or L2) with `w·(t + d) = b` and `t + d` in [0, 1], row by row.

    t, w: (n, D); b: (n,). Where the box makes the hyperplane unreachable, `d` moves every coordinate as far
    as the box allows toward it. Both norms have the same structure: with `r = |w·t - b|`, coordinate i moves
    by `min(λ·g_i, u_i)` against the sign of w_i, where u_i is the room left in the box and g_i = 1 (Linf) or
    |w_i| (L2). The decrease `F(λ) = Σ |w_i| min(λ g_i, u_i)` is concave, increasing and piecewise linear,
    so Newton's method from λ = 0 stays left of the root and lands on it exactly after a few steps (about
    five on FAB's problems) — four times faster than the sort over all D breakpoints that the official
    code does, with the same result.
    """
    r = (w * t).sum(1) - b
    w = torch.where((r >= 0)[:, None], w, -w)  # orient so that w·d must decrease by r >= 0
    r = r.abs()
    aw = w.abs()
    room = torch.where(w > 0, t, 1.0 - t)
    g = torch.ones_like(aw) if norm == "Linf" else aw
    slope, cap = aw * g, aw * room
    feasible = cap.sum(1) >= r
    lam = torch.zeros_like(r)
    for _ in range(max_iter):
        free = lam[:, None] * g < room
        gap = r - torch.where(free, lam[:, None] * slope, cap).sum(1)
        rate = (slope * free).sum(1)
        todo = feasible & (gap > 1e-6 * r) & (rate > 0)
        if not bool(todo.any()):
            break
        lam = torch.where(todo, lam + gap / rate.clamp_min(1e-30), lam)
    move = torch.where(feasible[:, None], torch.minimum(lam[:, None] * g, room), room)
    return torch.where(w != 0, -w.sign() * move, torch.zeros_like(move))


class FAB(Attack):
    """FAB within an ε-ball; `targeted=True` (default) is FAB-T as in AutoAttack, `False` the untargeted FAB.

    `targeted` here means FAB's multi-target mode: `y` are still the true labels and the targets are the
    top `n_target_classes` other classes of the clean logits. Restarts after the first start from a random
    point at ε/2. `extra_loss` is added to the boundary function `z_t - z_y` (a defense's aux term).
    """

    name = "fab"

    def __init__(self, eps: float, norm: str = "Linf", *, steps: int = 100, n_target_classes: int = 9,
                 targeted: bool = True, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, early_stop: bool = True, compact_every: int = 5, **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)
        self.steps = count_setting(steps, "FAB steps")
        self.restarts = count_setting(restarts, "FAB restarts")
        self.n_target_classes = count_setting(n_target_classes, "FAB n_target_classes")
        self.multi_target = bool(targeted)
        self.alpha_max = size_setting(alpha_max, "FAB alpha_max", 0.0, 1.0)
        self.eta, self.beta = size_setting(eta, "FAB eta"), size_setting(beta, "FAB beta", 0.0, 1.0)
        self.early_stop = bool(early_stop)
        self.compact_every = count_setting(compact_every, "FAB compact_every")
        self.loss_name = "fab-t" if self.multi_target else "fab"

    # -- norms -------------------------------------------------------------------------------------
    def _dist(self, d: torch.Tensor) -> torch.Tensor:
        d = d.flatten(1)
        return d.abs().amax(1) if self.norm == "Linf" else d.norm(dim=1)

    def _dual(self, g: torch.Tensor) -> torch.Tensor:
        """Dual norm over the last dim: the distance to a hyperplane is |f| / ‖∇f‖_dual."""
        return g.abs().sum(-1) if self.norm == "Linf" else g.norm(dim=-1)

    # -- the boundary functions and their gradients ------------------------------------------------
    def _linearise(self, model, x1, y, target):
        """(f, ∇f) of the boundary function(s) at x1: (n, m) and (n, m, D) with m = 1 for FAB-T.

        f_j = z_j - z_y (+ extra_loss): j is the target (FAB-T) or every class (FAB, f_y set to +∞).
        """
        xr = x1.detach().requires_grad_(True)
        logits = self.forward(model, xr)
        extra = self.extra_loss(model, logits, y) if self.extra_loss is not None else 0.0
        z_y = logits.gather(1, y[:, None])
        if target is not None:
            f = logits.gather(1, target[:, None]).squeeze(1) - z_y.squeeze(1) + extra
            (g,) = torch.autograd.grad(f.sum(), xr)
            return f.detach()[:, None], g.detach().flatten(1)[:, None]
        f = logits - z_y + (extra[:, None] if torch.is_tensor(extra) else extra)
        grads = self._jacobian(f, xr)
        f = f.detach().scatter(1, y[:, None], 1e10)
        return f, grads

    @staticmethod
    def _jacobian(f: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        """(n, K, D) gradients of each column of f: one batched backward (vmap), or K backwards."""
        n, k = f.shape
        try:
            eye = torch.eye(k, device=f.device, dtype=f.dtype)[:, None, :].expand(k, n, k)
            (g,) = torch.autograd.grad(f, xr, grad_outputs=eye, is_grads_batched=True)
            return g.detach().flatten(2).transpose(0, 1)
        except RuntimeError:
            cols = [torch.autograd.grad(f[:, j].sum(), xr, retain_graph=j < k - 1)[0] for j in range(k)]
            return torch.stack(cols, 1).flatten(2)

    # -- the attack --------------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        with torch.no_grad():
            logits = self.forward(model, x)
        robust = logits.argmax(1) == y
        out = x.clone()
        if self.multi_target:
            ranked = logits.argsort(dim=1, descending=True)
            targets = [ranked[:, t] for t in range(1, min(self.n_target_classes, logits.shape[1] - 1) + 1)]
        else:
            targets = [None]
        for target in targets:
            for restart in range(self.restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    return out
                adv = self._single_run(model, x[idx], y[idx], None if target is None else target[idx],
                                       restart > 0, gen)
                with torch.no_grad():
                    ok = (self.forward(model, adv).argmax(1) != y[idx]) & (self._dist(adv - x[idx]) <= self.eps)
                out[idx[ok]] = adv[ok]
                robust[idx[ok]] = False
        return out

    def _random_start(self, x0: torch.Tensor, gen) -> torch.Tensor:
        """A point at distance ε/2 in a random direction (restarts after the first), inside [0, 1]."""
        view = (-1,) + (1,) * (x0.dim() - 1)
        if self.norm == "Linf":
            t = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) * 2 - 1
            t = t / t.flatten(1).abs().amax(1).view(view)
        else:
            t = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            t = t / t.flatten(1).norm(dim=1).view(view)
        return (x0 + 0.5 * self.eps * t).clamp(0.0, 1.0)

    @torch.no_grad()
    def _step(self, model, s: dict, f: torch.Tensor, g: torch.Tensor) -> None:
        """Project the iterate and the clean point onto the linearised boundary, step to a convex combination
        biased toward the clean point; keep the closest adversarial point; pull adversarial iterates back."""
        x0a, x1 = s["x0"], s["x1"]
        m = x1.shape[0]
        view = (-1,) + (1,) * (x1.dim() - 1)
        if f.shape[1] > 1:
            j = (f.abs() / (self._dual(g) + 1e-12)).argmin(1)
            f = f.gather(1, j[:, None]).squeeze(1)
            w = g[torch.arange(m, device=g.device), j]
        else:
            f, w = f[:, 0], g[:, 0]
        x1f = x1.flatten(1)
        b = (w * x1f).sum(1) - f
        d = hyperplane_projection(torch.cat((x1f, x0a.flatten(1))), torch.cat((w, w)), torch.cat((b, b)), self.norm)
        a = self._dist(d).clamp_min(1e-8)
        alpha = (a[:m] / (a[:m] + a[m:])).clamp(0.0, self.alpha_max).view(view)
        d1, d2 = d[:m].view_as(x1), d[m:].view_as(x1)
        x1 = ((x1 + self.eta * d1) * (1 - alpha) + (x0a + self.eta * d2) * alpha).clamp(0.0, 1.0)
        is_adv = self.forward(model, x1).argmax(1) != s["y"]
        dist = self._dist(x1 - x0a)
        closer = is_adv & (dist < s["dist"])
        s["best"] = torch.where(closer.view(view), x1, s["best"])
        s["dist"] = torch.where(closer, dist, s["dist"])
        s["x1"] = torch.where(is_adv.view(view), x0a + (x1 - x0a) * self.beta, x1)

    def _single_run(self, model, x0, y, target, rand_start, gen):
        """Minimal-distance search from x0 (all correctly classified); the closest adversarial point found,
        or x0 where none was found."""
        n = x0.shape[0]
        best = x0.clone()
        best_dist = torch.full((n,), float("inf"), device=x0.device)
        s = {"idx": torch.arange(n, device=x0.device), "x0": x0, "x1": self._random_start(x0, gen) if rand_start
             else x0, "y": y, "best": best.clone(), "dist": best_dist.clone()}
        if target is not None:
            s["target"] = target

        def flush(rows):
            i = s["idx"][rows]
            best[i] = s["best"][rows]
            best_dist[i] = s["dist"][rows]

        for it in range(self.steps):
            f, g = self._linearise(model, s["x1"], s["y"], s.get("target"))
            self._step(model, s, f, g)
            if self.early_stop and (it + 1) % self.compact_every == 0 and it + 1 < self.steps:
                settled = s["dist"] <= self.eps
                if bool(settled.any()):
                    flush(settled.nonzero().flatten())
                    rows = (~settled).nonzero().flatten()
                    for key in list(s):
                        s[key] = s[key][rows]
                    if rows.numel() == 0:
                        return best
        flush(torch.arange(s["idx"].numel(), device=x0.device))
        return best

    def settings(self) -> dict[str, Any]:
        targets = {"n_target_classes": self.n_target_classes} if self.multi_target else {}
        return super().settings() | {"steps": self.steps, "restarts": self.restarts, **targets,
                                     "alpha_max": self.alpha_max, "eta": self.eta, "beta": self.beta}
