"""Attacks by name, as the CLI and presets write them: `fgsm`, `pgd20`, `pgd100x5`, `cw`, `cw30`, `apgd-ce`,
`apgd-t`, `fab-t`, `square`, `aa` (AutoAttack standard), `aa-plus`, `aa-rand` (EOT, for random models), and
`aa-official` / `aa-plus-official` / `aa-rand-official` (the official implementation, `pip install pyautoattack`)."""

from __future__ import annotations

import re

from robustact.attacks.apgd import APGD, APGDT
from robustact.attacks.autoattack import AutoAttack
from robustact.attacks.base import Attack
from robustact.attacks.fab import FAB
from robustact.attacks.fgsm import FGSM
from robustact.attacks.official import OfficialAutoAttack
from robustact.attacks.pgd import PGD
from robustact.attacks.square import Square
from robustact.errors import RobustactError

_PGD = re.compile(r"^(pgd|cw)(\d+)?(?:x(\d+))?$")
KNOWN = "fgsm, pgdK (e.g. pgd20), pgdKxR (R restarts), cw / cwK (CW-inf margin, default 30 steps), " \
        "apgd-ce, apgd-dlr, apgd-t, fab-t, square, aa (AutoAttack standard), aa-plus, aa-rand (EOT, random " \
        "models), and aa[-plus|-rand]-official (the official code, pyautoattack)"
AUTOATTACKS = {"aa": "standard", "aa-standard": "standard", "aa-plus": "plus", "aa-rand": "rand"}


def official_counterpart(name: str) -> str | None:
    """`aa` -> `aa-official` (likewise -plus, -rand): what `--official` adds beside each AutoAttack."""
    key = name.strip().lower()
    return f"{key}-official" if key in AUTOATTACKS else None


def make_attack(name: str, eps: float, norm: str = "Linf", *, seed: int = 0, **kwargs) -> Attack:
    """Build an attack from its short name. PGD-K uses step 2.5·ε/K (Madry et al.) unless `alpha` is given;
    CW-K is PGD-K on the margin loss (κ = `kappa`, default 0)."""
    key = name.strip().lower()
    if key == "fgsm":
        return FGSM(eps, norm, seed=seed, **kwargs)
    m = _PGD.match(key)
    if m:
        kind, steps, restarts = m.group(1), m.group(2), m.group(3)
        steps = int(steps) if steps else (30 if kind == "cw" else 20)
        if kind == "cw":
            kwargs.setdefault("loss", "margin")
        return PGD(eps, norm, steps=steps, restarts=int(restarts or 1), seed=seed, **kwargs)
    strong = {
        "apgd-ce": lambda: APGD(eps, norm, loss="ce", seed=seed, **kwargs),
        "apgd-dlr": lambda: APGD(eps, norm, loss="dlr", seed=seed, **kwargs),
        "apgd-t": lambda: APGDT(eps, norm, seed=seed, **kwargs),
        "fab-t": lambda: FAB(eps, norm, seed=seed, **kwargs),
        "square": lambda: Square(eps, norm, seed=seed, **kwargs),
    }
    if key in strong:
        return strong[key]()
    if key in AUTOATTACKS:
        return AutoAttack(eps, norm, version=AUTOATTACKS[key], seed=seed, **kwargs)
    if key.endswith("-official") and key.removesuffix("-official") in AUTOATTACKS:
        return OfficialAutoAttack(eps, norm, version=AUTOATTACKS[key.removesuffix("-official")], seed=seed, **kwargs)
    raise RobustactError(f"unknown attack {name!r}; known: {KNOWN}")


def parse_attack_list(spec: str | list[str]) -> list[str]:
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise RobustactError("no attacks given; e.g. --attacks fgsm,pgd20,cw")
    return names
