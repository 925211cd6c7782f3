"""Square Attack (Andriushchenko et al. 2020): random search over square-shaped updates, no gradients.

It only reads logits, so gradient masking (shattered, obfuscated or zero gradients) does not stop it: in
AutoAttack it is the check that the gradient attacks were not fooled by the defense. Each query changes one
random square window per image (side from the official `p` schedule) to a vertex of the ε-ball, and keeps the
change if the margin `z_y - max_{j≠y} z_j` dropped. Windows are drawn per image (the paper's algorithm);
examples leave the batch as soon as they are misclassified.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks.base import Attack, count_setting, size_setting
from robustact.attacks.losses import other_max
from robustact.errors import RobustactError

_P_STEPS = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
            (8000, 256))


def p_schedule(it: int, p_init: float, n_queries: int, rescale: bool = False) -> float:
    """Fraction of pixels the square covers at query `it`: p_init halved at 10, 50, 200, 500, 1k, 2k, 4k,
    6k, 8k queries (the schedule is stretched to 10k queries when `rescale`)."""
    if rescale:
        it = int(it / n_queries * 10000)
    div = 512
    for bound, d in _P_STEPS:
        if it <= bound:
            div = d
            break
    return p_init / div


def _rect_profile(h: int, w: int, device) -> torch.Tensor:
    """Concentric rectangles around the centre, ring k weighted by Σ_{j>=k} 1/(j+1)^2; unit L2 norm."""
    ci, cj = h // 2, w // 2
    rings = max(ci + 1, cj + 1)
    weights = 1.0 / torch.arange(1, rings + 1, device=device, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = Σ_{j>=k} weights[j]
    di = (torch.arange(h, device=device) - ci).abs()
    dj = (torch.arange(w, device=device) - cj).abs()
    ring = torch.maximum(di[:, None], dj[None, :])
    prof = tail[ring]
    return prof / prof.norm()


def _l2_square(s: int, device) -> torch.Tensor:
    """The L2 update shape: +rectangles on the top half, -rectangles on the bottom half, unit norm."""
    top, bottom = s // 2, s - s // 2
    prof = torch.zeros(s, s, device=device)
    if top > 0:
        prof[:top] = _rect_profile(top, s, device)
    prof[top:] = -_rect_profile(bottom, s, device)
    return prof / prof.norm()


class Square(Attack):
    """Score-based Square Attack, Linf or L2, on the logit margin (`loss="margin"`, AutoAttack's) or CE.

    `n_queries` per restart; `p_init` the initial square size (fraction of the image); restarts run on the
    examples still robust. A fooled example gets its misclassified point, a robust one its lowest-margin
    point. `compact_every` (default: every query on CPU, every 10 on accelerators) bounds host syncs.
    """

    name = "square"

    def __init__(self, eps: float, norm: str = "Linf", *, n_queries: int = 5000, p_init: float = 0.8,
                 restarts: int = 1, loss: str = "margin", rescale_schedule: bool = False,
                 compact_every: int | None = None, **kwargs) -> None:
        if loss not in ("margin", "ce"):
            raise ValueError(f"Square's loss must be 'margin' or 'ce', got {loss!r}")
        if kwargs.get("extra_loss") is not None:
            raise ValueError("Square is gradient-free; extra_loss is for gradient attacks")
        super().__init__(eps, norm, loss="margin" if loss == "margin" else "ce", **kwargs)
        self.n_queries = count_setting(n_queries, "Square n_queries")
        self.p_init = size_setting(p_init, "Square p_init", 0.0, 1.0)
        if self.p_init == 0:
            raise RobustactError("Square p_init must be > 0 (the first square's share of the image), got 0")
        self.restarts = count_setting(restarts, "Square restarts")
        self.loss_kind = loss
        self.rescale_schedule = bool(rescale_schedule)
        self.compact_every = None if compact_every is None else count_setting(compact_every, "Square compact_every")

    def _margin_loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin, loss), both minimised; margin <= 0 means success."""
        logits = logits.float()
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        margin = z_y - other_max(logits, y)
        if self.targeted:
            return -margin, F.cross_entropy(logits, y, reduction="none")
        if self.loss_kind == "ce":
            return margin, -F.cross_entropy(logits, y, reduction="none")
        return margin, margin

    def _signs(self, shape, gen, device) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=gen, device=device).float() * 2 - 1

    def _corner(self, n: int, span: int, gen, device) -> torch.Tensor:
        """Top-left coordinate of a window, uniform in [0, span) (0 when the window fills the side)."""
        return (torch.rand(n, generator=gen, device=device) * span).long()

    @staticmethod
    def _window_mask(vh, vw, s: int, h: int, w: int) -> torch.Tensor:
        rows = torch.arange(h, device=vh.device)
        cols = torch.arange(w, device=vh.device)
        in_r = (rows[None, :] >= vh[:, None]) & (rows[None, :] < vh[:, None] + s)
        in_c = (cols[None, :] >= vw[:, None]) & (cols[None, :] < vw[:, None] + s)
        return (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (n, 1, h, w)

    @staticmethod
    def _window_index(vh, vw, s: int, w: int, c: int) -> torch.Tensor:
        """Flat spatial indices of each window, (n, c, s*s), for gather/scatter on (n, c, h*w)."""
        ar = torch.arange(s, device=vh.device)
        idx = (vh[:, None, None] + ar[None, :, None]) * w + (vw[:, None, None] + ar[None, None, :])
        return idx.flatten(1)[:, None, :].expand(-1, c, -1)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise RobustactError(f"Square needs images (N, C, H, W), got shape {tuple(x.shape)}")
        gen = self.generator(x.device)
        every = self.compact_every or (1 if x.device.type == "cpu" else 10)
        with torch.no_grad():
            margin, _ = self._margin_loss(self.forward(model, x), y)
            robust = margin > 0
            out = x.clone()
            best_margin = torch.full((x.shape[0],), float("inf"), device=x.device)
            for _ in range(self.restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                x_r, m_r = self._single_run(model, x[idx], y[idx], gen, every)
                take = (m_r <= 0) | (m_r < best_margin[idx])
                out[idx[take]] = x_r[take]
                best_margin[idx] = torch.where(take, m_r, best_margin[idx])
                robust[idx[m_r <= 0]] = False
        return out

    def _single_run(self, model, x, y, gen, every):
        n, c, h, w = x.shape
        dev = x.device
        if self.norm == "Linf":
            lo, hi = (x - self.eps).clamp_min(0.0), (x + self.eps).clamp_max(1.0)
            stripes = self._signs((n, c, 1, w), gen, dev)  # vertical stripes, as the official init
            x_best = torch.clamp(x + self.eps * stripes, lo, hi)
        else:
            x_best = self._l2_init(x, gen)
        margin, loss = self._margin_loss(self.forward(model, x_best), y)

        best_out, margin_out = x_best.clone(), margin.clone()
        s_ = {"idx": torch.arange(n, device=dev), "x": x, "y": y, "x_best": x_best, "margin": margin,
              "loss": loss}
        if self.norm == "Linf":
            s_["lo"], s_["hi"] = lo, hi

        def compact() -> bool:
            live = s_["margin"] > 0
            if bool(live.all()):
                return True
            gone = (~live).nonzero().flatten()
            best_out[s_["idx"][gone]] = s_["x_best"][gone]
            margin_out[s_["idx"][gone]] = s_["margin"][gone]
            rows = live.nonzero().flatten()
            for key in list(s_):
                s_[key] = s_[key][rows]
            return rows.numel() > 0

        if not compact():
            return best_out, margin_out
        for i in range(self.n_queries):
            p = p_schedule(i, self.p_init, self.n_queries, self.rescale_schedule)
            m = s_["x"].shape[0]
            if self.norm == "Linf":
                side = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
                x_new = self._linf_candidate(s_, side, gen)
            else:
                side = max(int(round(math.sqrt(p * h * w))), 3)
                side = min(side + (side % 2 == 0), h, w)
                x_new = self._l2_candidate(s_, side, gen)
            margin, loss = self._margin_loss(self.forward(model, x_new), s_["y"])
            live = s_["margin"] > 0  # examples fooled since the last compaction stay frozen
            improved = live & (loss < s_["loss"])
            s_["loss"] = torch.where(improved, loss, s_["loss"])
            improved = improved | (live & (margin <= 0))
            s_["margin"] = torch.where(improved, margin, s_["margin"])
            s_["x_best"] = torch.where(improved.view(m, 1, 1, 1), x_new, s_["x_best"])
            if (i + 1) % every == 0 and not compact():
                return best_out, margin_out
        i = s_["idx"]
        best_out[i], margin_out[i] = s_["x_best"], s_["margin"]
        return best_out, margin_out

    # -- Linf ----------------------------------------------------------------------------------------
    def _linf_candidate(self, s_, side, gen):
        x_best = s_["x_best"]
        m, c, h, w = x_best.shape
        vh = self._corner(m, h - side, gen, x_best.device)
        vw = self._corner(m, w - side, gen, x_best.device)
        mask = self._window_mask(vh, vw, side, h, w)
        step = 2.0 * self.eps * self._signs((m, c, 1, 1), gen, x_best.device)
        return torch.clamp(torch.where(mask, x_best + step, x_best), s_["lo"], s_["hi"])

    # -- L2 ------------------------------------------------------------------------------------------
    def _unit_l2(self, d: torch.Tensor) -> torch.Tensor:
        return d / (d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)

    def _l2_init(self, x, gen):
        """A 5x5 grid of ±(rectangle profile) windows per channel, scaled to norm ε."""
        n, c, h, w = x.shape
        s = h // 5
        if s < 1:
            raise RobustactError(f"L2 Square needs images of at least 5x5 pixels, got {h}x{w}")
        start = (h - 5 * s) // 2
        delta = torch.zeros_like(x)
        prof = _l2_square(s, x.device)
        for i in range(h // s):
            for j in range(w // s):
                r, q = start + i * s, start + j * s
                if r + s > h or q + s > w:
                    continue
                pr = torch.where(torch.rand(n, 1, 1, 1, generator=gen, device=x.device) > 0.5, prof.T, prof)
                delta[:, :, r:r + s, q:q + s] += pr * self._signs((n, c, 1, 1), gen, x.device)
        return (x + self._unit_l2(delta) * self.eps).clamp(0.0, 1.0)

    def _l2_candidate(self, s_, side, gen):
        x, x_best = s_["x"], s_["x_best"]
        m, c, h, w = x.shape
        dev = x.device
        delta = x_best - x
        vh1, vw1 = self._corner(m, h - side, gen, dev), self._corner(m, w - side, gen, dev)
        vh2, vw2 = self._corner(m, h - side, gen, dev), self._corner(m, w - side, gen, dev)
        idx1 = self._window_index(vh1, vw1, side, w, c)
        mask = self._window_mask(vh1, vw1, side, h, w) | self._window_mask(vh2, vw2, side, h, w)
        flat = delta.flatten(2)
        win1 = flat.gather(2, idx1)  # (m, c, s*s)
        norm_win1 = win1.norm(dim=2, keepdim=True)
        norm_img = delta.flatten(1).norm(dim=1).view(m, 1, 1)
        norm_both = (delta * mask).flatten(2).norm(dim=2, keepdim=True)
        prof = _l2_square(side, dev).flatten()
        prof_t = _l2_square(side, dev).T.flatten()
        shape = torch.where(torch.rand(m, 1, 1, generator=gen, device=dev) > 0.5, prof_t, prof)
        new = shape * self._signs((m, c, 1), gen, dev) + win1 / (norm_win1 + 1e-12)
        budget = ((self.eps ** 2 - norm_img ** 2).clamp_min(0.0) / c + norm_both ** 2).sqrt()
        new = new / (new.norm(dim=2, keepdim=True) + 1e-12) * budget
        mask2 = self._window_mask(vh2, vw2, side, h, w)
        delta = torch.where(mask2, torch.zeros_like(delta), delta).flatten(2).scatter(2, idx1, new)
        return (x + self._unit_l2(delta.view_as(x)) * self.eps).clamp(0.0, 1.0)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"n_queries": self.n_queries, "p_init": self.p_init, "restarts": self.restarts}
