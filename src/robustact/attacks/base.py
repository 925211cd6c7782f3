"""The attack base class: threat model validation, model-state hygiene, the one model-call path, loss
composition, seeding, and a `repr` that shows every setting (reports print it as the attack's description)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from robustact.attacks.losses import HINGES, LossFn, loss_label, resolve_loss
from robustact.errors import RobustactError

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
NORMS = ("Linf", "L2")
STARTS = ("uniform", "normal")

_NCHW_ONLY: weakref.WeakSet = weakref.WeakSet()  # models whose forward needs NCHW-contiguous maps


L2_EPS_MAX = 4.0  # an L2 radius above this in [0, 1] pixel space is a unit mistake, not a threat model


def validate_eps(eps: float, norm: str = "Linf") -> float:
    """Reject ε values that are surely a unit mistake (8 for 8/255) or not a number."""
    if norm not in NORMS:
        raise RobustactError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise RobustactError(f"eps must be a number, got {eps!r}") from None
    if not math.isfinite(eps) or eps < 0:
        raise RobustactError(f"eps must be a finite number >= 0, got {eps}")
    if norm == "Linf" and eps > 1:
        raise RobustactError(
            f"Linf eps={eps:g} is larger than the [0, 1] pixel range; give it in pixel units, e.g. {eps:g}/255"
        )
    if norm == "L2" and eps > L2_EPS_MAX:
        raise RobustactError(f"L2 eps={eps:g} is far beyond the radii L2 robustness is measured at (0.5 on CIFAR-10 "
                             f"and SVHN, up to ~3 on ImageNet; images in [0, 1]); was it meant as an Linf "
                             f"{eps:g}/255 (--norm Linf)?")
    return eps


def count_setting(value: Any, name: str, low: int = 1) -> int:
    """An attack setting that counts something (steps, restarts, queries): an integer >= `low`, or one line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < low:
        raise RobustactError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def size_setting(value: Any, name: str, low: float = 0.0, high: float | None = None) -> float:
    """An attack setting that is a size (a step, a fraction): a finite number in [low, high], or one line."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RobustactError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < low or (high is not None and number > high):
        bounds = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise RobustactError(f"{name} must be a finite number {bounds}, got {value!r}")
    return number


def check_labels(x: Any, y: Any) -> torch.Tensor:
    """Labels an evaluation can trust: integer class indices >= 0, one per image; returned as int64."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise RobustactError("images and labels must be torch tensors")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise RobustactError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if torch.is_floating_point(y) or torch.is_complex(y) or y.dtype == torch.bool:
        raise RobustactError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise RobustactError(f"labels must be class indices >= 0, got {int(y.min())}")
    return y.long()


def check_batch(x: Any, y: Any) -> torch.Tensor:
    """Images and labels an attack can trust, or one line saying what is wrong with them: float images in
    [0, 1] without NaN, and `check_labels`. Returns the labels as int64."""
    y = check_labels(x, y)
    if not torch.is_floating_point(x):
        raise RobustactError(f"attack inputs must be float images in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0:
        return y
    lo, hi = torch.aminmax(x.detach())
    finite, lo_v, hi_v = torch.stack([torch.isfinite(x.detach()).all().to(lo.dtype), lo, hi]).tolist()  # one sync
    if not finite:
        raise RobustactError("the images contain NaN or infinite values")
    if lo_v < 0 or hi_v > 1:
        raise RobustactError(f"attack inputs must lie in [0, 1] (got [{lo_v:.3g}, {hi_v:.3g}]); put input "
                             "normalisation inside the model")
    return y


def check_labels_fit(y: torch.Tensor, logits: torch.Tensor) -> None:
    """Labels must name one of the model's classes (else a torch IndexError, or examples silently skipped)."""
    k = logits.shape[-1]
    if y.numel() and int(y.max()) >= k:
        raise RobustactError(f"labels must be class indices below the model's {k} classes, got {int(y.max())}")


def check_model_dtype(model: nn.Module, x: torch.Tensor) -> None:
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point() and x.dtype != param.dtype \
            and not torch.is_autocast_enabled(x.device.type):
        raise RobustactError(f"the images are {x.dtype} but the model's weights are {param.dtype}; convert the "
                             f"images (e.g. x.to({param.dtype}))")


def model_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)` as every attack and `predict` call it: images are fed channels_last on CPU (3-4x faster
    convolutions and pooling there, same values to ~1e-8). A model whose forward needs NCHW-contiguous maps
    (`.view` on them) gets a plain retry and keeps getting NCHW. Autograd sees the format change: gradients
    come back in x's layout."""
    if x.dim() == 4 and x.device.type == "cpu" and model not in _NCHW_ONLY:
        try:
            return model(x.contiguous(memory_format=torch.channels_last))
        except RuntimeError:
            _NCHW_ONLY.add(model)
    return model(x)


@contextmanager
def attack_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the model in `mode` ("eval" | "train" | "keep") with parameter gradients off; restore both after."""
    if mode not in ("eval", "train", "keep"):
        raise ValueError(f"model_mode must be eval, train or keep, got {mode!r}")
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if mode != "keep":
            model.train(mode == "train")
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def describe(value: Any) -> str:
    """A setting as a report prints it: numbers to 5 significant digits, callables by name or repr."""
    if isinstance(value, float):
        return f"{value:.5g}"
    if callable(value) and not isinstance(value, type) and type(value).__repr__ is object.__repr__:
        return getattr(value, "__name__", type(value).__name__)
    return str(value)


class Attack:
    """Base of all attacks: `attack(model, x, y) -> x_adv` for x in [0, 1].

    Args:
        eps: radius of the threat model, in pixel units (8/255, not 8).
        norm: "Linf" or "L2".
        loss: "ce", "margin" (CW, with `kappa`), "dlr", "zero" or a callable `(logits, y) -> (N,)`.
        hinge: the margin loss's hinge: "example" (CW: per example) or "batch" (on the batch's summed margin, as
            the official CAS evaluation; `robustact.attacks.losses.margin_loss`).
        clamp_start: clamp the random start to [0, 1] (True); False keeps only the ε-ball, as the official
            CAS evaluation and TRADES/MART code, whose first forward sees the unclamped start.
        extra_loss: optional `(model, logits, y) -> (N,)` added to the loss; defenses use it to include
            their auxiliary logits (`robustact.attacks.aux.AuxTerm`).
        targeted: if True, `y` are target classes and the loss is descended.
        model_mode: "eval" (default), "train" or "keep": the mode the model runs in during the attack.
        seed: int seeds a generator afresh on every call (same input, same result); None uses the global
            torch RNG (training, whose RNG state is checkpointed).
        shard: (rank, world) when this process attacks its share of a global batch (distributed training):
            random starts are drawn for the whole global batch and this share's rows taken, so a job of any
            size draws what one process would.
        validate: check the inputs on every call (three host syncs); the trainer's own attacks, whose inputs
            come from the loader, skip it so that a training step never waits for the device.
    """

    name = "attack"

    def __init__(
        self,
        eps: float,
        norm: str = "Linf",
        *,
        loss: str | LossFn = "ce",
        kappa: float = 0.0,
        hinge: str = "example",
        extra_loss: ExtraLoss | None = None,
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = 0,
        shard: tuple[int, int] | None = None,
        validate: bool = True,
        clamp_start: bool = True,
    ) -> None:
        self.eps = validate_eps(eps, norm)
        self.norm = norm
        self.loss_name = loss_label(loss)
        self.kappa = float(kappa)
        if hinge not in HINGES:
            raise RobustactError(f"hinge must be one of {', '.join(HINGES)}, got {hinge!r}")
        if hinge != "example" and self.loss_name not in ("margin", "cw"):
            raise RobustactError(f"hinge={hinge!r} applies to the margin (cw) loss only, not {self.loss_name!r}")
        self.hinge = hinge
        self.loss_fn = resolve_loss(loss, self.kappa, hinge)
        self.clamp_start = bool(clamp_start)
        self.extra_loss = extra_loss
        self.targeted = targeted
        self.model_mode = model_mode
        self.seed = seed
        self._label_max: int | None = None  # checked against the class count at the next forward
        self.shard = shard  # (rank, world) of a distributed training job: random draws are the global batch's
        self.validate = validate

    # -- the public call ---------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.validate:
            y = self._check_inputs(x, y)
            check_model_dtype(model, x)
        if self.eps == 0 or x.shape[0] == 0:
            return x.clone()
        self._label_max = int(y.max()) if self.validate else None
        try:
            with attack_mode(model, self.model_mode), torch.enable_grad():
                x_adv = self.perturb(model, x.detach(), y.detach())
        finally:
            self._label_max = None
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses --------------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed))
        return g

    def loss(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example objective to ascend (already sign-flipped for targeted attacks)."""
        value = self.loss_fn(logits, y)
        if self.extra_loss is not None:
            value = value + self.extra_loss(model, logits, y)
        return -value if self.targeted else value

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = model_forward(model, x)
        if self._label_max is not None:  # the first forward of a call: do the labels name the model's classes?
            label_max, self._label_max = self._label_max, None
            check_labels_fit(torch.tensor([label_max]), logits)
        return logits

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """(logits, per-example loss, gradient of the summed loss w.r.t. x), all detached."""
        x = x.detach().requires_grad_(True)
        logits = self.forward(model, x)
        loss = self.loss(model, logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return logits.detach(), loss.detach(), grad.detach()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Back into the ε-ball around x and into [0, 1]."""
        return self.into_ball(x_adv, x).clamp(0.0, 1.0)

    def into_ball(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Back into the ε-ball around x (not into [0, 1])."""
        delta = x_adv - x
        if self.norm == "Linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (self.eps / norms).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
        return x + delta

    def project_start(self, x_start: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A random start projected: into the ε-ball, and into [0, 1] unless `clamp_start` is off."""
        return self.project(x_start, x) if self.clamp_start else self.into_ball(x_start, x)

    def draw(self, sample, shape: tuple[int, ...], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        """`sample` (torch.rand / torch.randn) of `shape`; with a shard, drawn for the global batch and sliced."""
        if self.shard is None or self.shard[1] == 1:
            return sample(shape, generator=gen, device=like.device, dtype=like.dtype)
        rank, world = self.shard
        full = sample((shape[0] * world, *shape[1:]), generator=gen, device=like.device, dtype=like.dtype)
        return full[rank * shape[0]:(rank + 1) * shape[0]]

    def random_start(self, x: torch.Tensor, gen: torch.Generator | None, kind: str = "uniform",
                     sigma: float = 0.001) -> torch.Tensor:
        """A start inside the threat model: uniform in the ε-ball (L2: a random direction and radius), or
        `x + sigma·N(0, 1)` ("normal", TRADES' and MART's start), projected (`project_start`: into [0, 1] too
        unless `clamp_start` is off)."""
        if kind == "normal":
            return self.project_start(x + sigma * self.draw(torch.randn, x.shape, gen, x), x)
        if self.norm == "Linf":
            return self.project_start(x + self.eps * (self.draw(torch.rand, x.shape, gen, x) * 2 - 1), x)
        direction = self.draw(torch.randn, x.shape, gen, x)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        radius = self.draw(torch.rand, (x.shape[0],), gen, x)
        return self.project_start(x + self.eps * radius.view(-1, *([1] * (x.dim() - 1))) * direction, x)

    def ascent_step(self, grad: torch.Tensor, step: float) -> torch.Tensor:
        """The steepest-ascent step of size `step` for the norm: sign for Linf, normalised for L2."""
        if self.norm == "Linf":
            return step * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return step * grad / norms

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return check_batch(x, y)

    # -- the description ---------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Every setting that decides the result, in the order `repr` prints them; subclasses add theirs."""
        out: dict[str, Any] = {"eps": self.eps, "norm": self.norm, "loss": self.loss_name}
        if self.loss_name in ("margin", "cw") or self.kappa:
            out["kappa"] = self.kappa
        if self.hinge != "example":
            out["hinge"] = self.hinge
        if self.extra_loss is not None:
            out["extra"] = self.extra_loss
        if self.targeted:
            out["targeted"] = True
        if self.model_mode != "eval":
            out["model_mode"] = self.model_mode
        if not self.clamp_start:
            out["clamp_start"] = False
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={describe(v)}" for k, v in self.settings().items()) + ")"
