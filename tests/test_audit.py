"""`robustact audit` / `robustact.audit`: a model whose gradients are masked by a quantisation layer comes out
"masking" (BPDA through the layer finds what the claimed attacks miss), the same network without it does not, a
random forward pass brings EOT, the rules decide as written (and as docs/audit.md prints them), bad input is one
line, and the command audits a run directory into RUN/eval/audit.md + .json, reading finished sides back."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_cifar
from test_sanity import Noisy  # dropout kept on in eval mode: a randomised model
from test_sanity import Rounded as Inline  # the rounding written inside forward(): no leaf module to find
from torch import nn

from robustact import audit
from robustact.attacks import PGD, EvalResult
from robustact.attacks.bpda import BPDA, find_gradient_blockers, straight_through
from robustact.attacks.predict import robust_under
from robustact.cli import main
from robustact.errors import RobustactError
from robustact.evaluation.audit import (
    MASKING_FLAGS,
    RULES,
    VERDICTS,
    Side,
    adaptive_side,
    claimed_side,
    conclude,
    rules_table,
)
from robustact.evaluation.stats import paired_difference

pytestmark = pytest.mark.usefixtures("one_thread")

K, SHAPE = 4, (3, 8, 8)
FAST = {"aa": "apgd-ce", "steps": "20"}  # AutoAttack's APGD-CE only, PGD-20 for BPDA and transfer: seconds


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four classes, each a faint random template plus noise (as tests/test_sanity.py)."""
    g = torch.Generator().manual_seed(123)
    templates = torch.rand(K, *SHAPE, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 0.5 + 0.2 * (templates[y] - 0.5) + 0.06 * torch.randn(n, *SHAPE, generator=g)
    return x.clamp(0, 1), y, templates


class Quantize(nn.Module):
    """8-bit rounding: the derivative is zero almost everywhere, so gradient attacks stand still."""

    def forward(self, x):
        return torch.round(x * 255) / 255


class QuantizedPool(nn.Module):
    """Rounding after 2x2 pooling: no gradient, and an output of another shape (no straight-through)."""

    def forward(self, x):
        return torch.round(F.avg_pool2d(x, 2) * 255) / 255


@pytest.fixture(scope="module")
def cnn():
    """A small conv net trained cleanly on the synthetic task for a second; ε = 8/255 breaks ~20% of it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, K))
    x, y, _ = synthetic(256, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    xt, yt, _ = synthetic(64, seed=2)
    with torch.no_grad():
        assert (net(xt).argmax(1) == yt).float().mean() > 0.9
    return net, xt, yt, 8 / 255


@pytest.fixture(scope="module")
def linear():
    """A fixed linear classifier (the class templates, centred): PGD is as good as any attack on it."""
    x, y, templates = synthetic(64, seed=2)
    w = (templates - templates.mean(0)).flatten(1)
    layer = nn.Linear(w.shape[1], K)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(-w @ torch.full((w.shape[1],), 0.5))
    return nn.Sequential(nn.Flatten(), layer).eval(), x, y, 12 / 255


# -- (a) masked gradients: masking --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cnn", "linear"])
def test_a_quantisation_layer_is_masking(kind, request):
    net, x, y, eps = request.getfixturevalue(kind)
    model = nn.Sequential(Quantize(), net).eval()
    r = audit(model, x, y, eps=eps, suite_options=FAST, sanity_n=32)
    assert r.verdict == "masking" and r.rule == "adaptive-drop", r.to_markdown()
    bpda = [name for name in r.adaptive.attacks if name.startswith("bpda")]
    assert bpda == ["bpda-pgd20"] and "layer 0 (Quantize" in r.adaptive.why["bpda-pgd20"]
    assert "BPDA copy" in r.adaptive.why["transfer"]  # no --surrogate: the transfer comes from the BPDA copy
    assert r.drop == paired_difference(r.final, r.claimed.worst, seed=0)
    assert r.drop.significant and -r.drop.diff >= 0.05
    assert r.applies["sanity"]  # and the large-ε check fires as well
    page, data = r.to_markdown(), r.to_json()
    assert "**masking**" in page and "Rule 1 decided" in page and r.drop.format() in page
    assert data["verdict"] == "masking" and data["rule"] == "adaptive-drop"
    assert data["per_example"]["worst_case"] == r.final.int().tolist()
    assert len(data["per_example"]["claimed_worst"]) == len(y)


def test_inline_rounding_without_a_module_is_masking_by_the_sanity_rule(cnn):
    net, x, y, eps = cnn
    r = audit(Inline(net).eval(), x[:32], y[:32], eps=eps, suite_options=FAST, sanity_n=32)
    assert not any(name.startswith("bpda") for name in r.adaptive.attacks)  # nothing to make straight-through
    assert r.verdict == "masking" and r.rule == "sanity"
    assert {f["name"] for f in r.sanity if f["fired"]} & set(MASKING_FLAGS) == {"large_eps_accuracy"}


# -- (b) no masking: not masking ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cnn", "linear"])
def test_the_same_network_without_quantisation_holds(kind, request):
    net, x, y, eps = request.getfixturevalue(kind)
    r = audit(net, x, y, eps=eps, suite_options=FAST, surrogate=copy.deepcopy(net), sanity_n=32)
    assert r.verdict == "holds", r.to_markdown()
    assert list(r.adaptive.attacks) == ["transfer"] and "(--surrogate)" in r.adaptive.why["transfer"]
    assert 0.1 < r.worst_cases()["claimed"] < 0.95  # a real robust accuracy, neither 0 nor clean
    assert not any(f["fired"] for f in r.sanity if f["name"] in MASKING_FLAGS)


# -- (c) a random forward pass brings EOT ------------------------------------------------------------------------
def test_a_random_forward_pass_brings_eot_and_standard_autoattack_is_added_where_missing(cnn):
    net, x, _, eps = cnn
    claimed = claimed_side(net, eps, options=FAST)
    assert list(claimed.attacks) == ["fgsm", "pgd20", "cw30", "aa"]
    noisy = adaptive_side(Noisy(net).eval(), x, eps, options=FAST, claimed=claimed)
    assert "aa-rand" in noisy.attacks and "EOT" in noisy.why["aa-rand"]
    assert "version=rand" in repr(noisy.attacks["aa-rand"])
    plain = adaptive_side(net, x, eps, options=FAST, claimed=claimed)
    assert "aa-rand" not in plain.attacks and any("deterministic" in note for note in plain.notes)
    alone = adaptive_side(net, x, eps, options={"steps": "5"}, claimed=None)  # a claimed side without AutoAttack
    assert list(alone.attacks) == ["aa"] and "version=standard" in repr(alone.attacks["aa"])


def test_a_defense_with_protocols_meets_its_paper_suite_and_its_adaptive_suite():
    from robustact import build_model

    model = build_model("resnet_small", defense="cas").eval()
    claimed = claimed_side(model, 8 / 255)
    assert claimed.description.startswith("the cas paper's protocol")
    assert list(claimed.attacks) == ["fgsm", "pgd20", "cw20"]
    x = torch.rand(4, 3, 32, 32)
    side = adaptive_side(model, x, 8 / 255, options={"steps": "2", "aa": "apgd-ce"}, claimed=claimed)
    assert {"kmask", "bpda-softmask", "aa"} <= set(side.attacks) and "pgd2-auxonly" in side.attacks
    assert side.why["kmask"] == "the cas adaptive suite" and list(side.attacks).count("aa") == 1
    assert not any(name.startswith(("bpda-pgd", "aa-rand", "transfer")) for name in side.attacks)
    with pytest.raises(RobustactError, match="suite 'paper' has no option 'bogus'"):
        claimed_side(model, 8 / 255, options={"paper.bogus": "1"})
    with pytest.raises(RobustactError, match="suite 'adaptive' has no option 'bogus'"):
        adaptive_side(model, x, 8 / 255, options={"bogus": "1"}, claimed=claimed)


# -- BPDA: the layers it finds, the straight-through copy --------------------------------------------------------
def test_gradient_blockers_and_the_straight_through_copy(cnn):
    net, x, y, eps = cnn
    model = nn.Sequential(Quantize(), net).eval()
    found = find_gradient_blockers(model, x)
    assert [(b.name, b.kind, b.straight_through) for b in found] == [("0", "Quantize", True)]
    assert found[0].zero_share == 1.0 and found[0].changed_share > 0.5
    assert find_gradient_blockers(net, x) == []
    pooled = nn.Sequential(QuantizedPool(), nn.Flatten(), nn.Linear(48, K)).eval()
    assert [(b.name, b.straight_through) for b in find_gradient_blockers(pooled, x)] == [("0", False)]

    twin = straight_through(model, ["0"])
    assert isinstance(model[0], Quantize) and not isinstance(twin[0], Quantize)  # a copy; the model is untouched
    xr = x[:8].clone().requires_grad_(True)
    assert torch.equal(twin(xr), model(xr))  # the same forward pass ...
    (g,) = torch.autograd.grad(twin(xr).sum(), xr)
    assert (g.flatten(1) != 0).any(1).all()  # ... with a gradient
    pgd = PGD(eps, steps=10)
    plain = robust_under(model, pgd, x, y).float().mean().item()
    through = robust_under(model, BPDA(pgd, ["0"]), x, y).float().mean().item()
    assert through < plain - 0.1
    assert "straight-through backward: 0" in repr(BPDA(pgd, ["0"]))


# -- the rules ----------------------------------------------------------------------------------------------------
def _side(name: str, clean: torch.Tensor, **robust: torch.Tensor) -> Side:
    side = Side(name, "constructed", attacks=dict.fromkeys(robust))
    side.result = EvalResult(n=len(clean), eps=8 / 255, clean=clean, robust=robust) if robust else None
    return side


def _conclude(claimed: Side, adaptive: Side, baseline: Side | None = None):
    n = len(claimed.result.clean)
    meta = {"model": "constructed", "images": f"{n} images", "n": n, "eps": 8 / 255, "norm": "Linf", "seed": 0,
            "threat_model": "8/255 (Linf)"}
    return conclude(None, None, torch.zeros(n), claimed, adaptive, baseline, eps=8 / 255, norm="Linf", seed=0,
                    batch_size=100, sanity_n=0, meta=meta)


def test_autoattack_a_few_points_below_pgd_flags_nothing_on_a_generic_model():
    """A PGD-AT model: AutoAttack 3 points below PGD-20. AutoAttack is on the claimed side of a generic model, so
    the claim it supports holds; the same gap against a paper protocol without AutoAttack is `partly`, and 6
    points are `masking`."""
    n = 1000
    clean = torch.ones(n, dtype=torch.bool)
    pgd = torch.arange(n) % 2 == 0  # 50%
    aa3, aa6 = pgd.clone(), pgd.clone()
    aa3[torch.arange(0, 60, 2)] = False  # 30 examples: 3 points
    aa6[torch.arange(0, 120, 2)] = False  # 60 examples: 6 points
    generic = _conclude(_side("claimed", clean, pgd20=pgd, aa=aa3), _side("adaptive", clean))
    assert generic.verdict == "holds" and generic.drop.diff == 0
    paper = _conclude(_side("claimed", clean, pgd20=pgd), _side("adaptive", clean, aa=aa3))
    assert (paper.verdict, paper.rule) == ("partly", "small-drop")
    assert paper.drop.diff == pytest.approx(-0.03) and paper.drop.significant
    masked = _conclude(_side("claimed", clean, pgd20=pgd), _side("adaptive", clean, aa=aa6))
    assert (masked.verdict, masked.rule) == ("masking", "adaptive-drop")
    below = _conclude(_side("claimed", clean, pgd20=pgd, aa=aa6), _side("adaptive", clean),
                      _side("baseline", clean, aa=pgd))
    assert (below.verdict, below.rule) == ("partly", "below-baseline")
    assert below.vs_baseline == paired_difference(aa6, pgd, seed=0)
    assert "final − baseline" in below.to_markdown() and below.to_json()["worst_case"]["baseline"] == 0.5


def test_the_rule_table_is_the_one_in_the_docs():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "audit.md").read_text()
    assert rules_table() in doc
    assert [r.verdict for r in RULES][-1] == "holds" and {r.verdict for r in RULES} == set(VERDICTS)


# -- (d) bad input ------------------------------------------------------------------------------------------------
def test_bad_input_to_the_library_is_one_line(cnn):
    net, x, y, _ = cnn
    with pytest.raises(RobustactError, match="nn.Module"):
        audit("model.pt", x, y)
    with pytest.raises(RobustactError, match="labels must have shape"):
        audit(net, x, y[:3])
    with pytest.raises(RobustactError, match=r"\[0, 1\]"):
        audit(net, x * 255, y)
    with pytest.raises(RobustactError, match="no option 'bogus'"):
        audit(net, x, y, suite_options={"bogus": "1"})
    with pytest.raises(RobustactError, match="8/255"):
        audit(net, x, y, eps=8)


TINY = """base: demo
data: {train_subset: null, val_size: 20, batch_size: 20}
model: {arch_kwargs: {width: 4}}
training: {epochs: 1, attack: {steps: 1}, val_n: 10, val_attack_steps: 1, channels_last: false}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A robustact run that trains in about a second, on a CIFAR-10-shaped folder of random images."""
    root = tmp_path_factory.mktemp("audit")
    data = write_tiny_cifar(root / "data")
    (root / "tiny.yaml").write_text(TINY)
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(root / "run"), "--data-dir", str(data),
                 "--no-progress"]) == 0
    return root / "run", data


def _one_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("flags, fragment", [
    (["--n", "0"], "--n must be an integer >= 1"),
    (["--suite-opt", "bogus=1"], "no option 'bogus'"),
    (["--suite-opt", "paper.x=1"], "no paper protocol"),
    (["--eps", "8"], "8/255"),
    (["--baseline", "no-such-run"], "no-such-run"),
])
def test_bad_input_to_the_command_is_one_line_and_exit_2(tiny_run, capsys, flags, fragment):
    run, data = tiny_run
    assert main(["audit", str(run), "--n", "4", "--data-dir", str(data), "--no-progress", *flags]) == 2
    assert fragment in _one_line(capsys)


def test_bad_target_is_one_line(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nothing-here")]) == 2
    assert "neither a run directory nor a checkpoint" in _one_line(capsys)


# -- (e) the command on a run directory ---------------------------------------------------------------------------
def test_audit_command_on_a_run_writes_the_page_and_reads_finished_sides_back(tiny_run, capsys):
    run, data = tiny_run
    args = ["audit", str(run), "--n", "16", "--sanity-n", "16", "--suite-opt", "aa=apgd-ce", "--suite-opt",
            "steps=5", "--baseline", str(run), "--surrogate", str(run), "--data-dir", str(data), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    page, js = run / "eval" / "audit.md", run / "eval" / "audit.json"
    assert page.read_text() in printed and f"audit: {page}" in printed
    report = json.loads(js.read_text())
    assert report["verdict"] in VERDICTS and report["n"] == 16 and report["images"] == "cifar10, first 16 test images"
    assert list(report["claimed"]["attacks"]) == ["fgsm", "pgd20", "cw30", "aa"]
    assert list(report["adaptive"]["attacks"]) == ["transfer"] and str(run) in report["adaptive"]["why"]["transfer"]
    for key in ("worst_case", "claimed_worst", "adaptive_worst", "baseline_worst"):
        assert len(report["per_example"][key]) == 16
    assert report["differences"]["final_vs_baseline"]["only_b"] == 0  # its own baseline: nothing only it keeps
    assert [r["key"] for r in report["rules"]] == [r.key for r in RULES]
    for side in ("claimed", "adaptive", "baseline"):  # each side is an ordinary eval report
        side_report = json.loads((run / "eval" / f"audit-{side}.json").read_text())
        assert side_report["settings"]["suite"] == f"audit-{side}"
        assert report[side]["report"] == str(run / "eval" / f"audit-{side}.json")

    assert main(args) == 0  # again: the finished sides are read back, not run again
    err = capsys.readouterr().err
    assert "the claimed side is done already" in err and "the adaptive side is done already" in err
    assert json.loads(js.read_text())["per_example"] == report["per_example"]

    assert main(["compare", str(js), "--baseline", str(run / "eval" / "audit-baseline.json")]) == 0
    assert "| run | 16 |" in capsys.readouterr().out  # audit.json reads as a report (one model: one row)


def test_a_checkpoint_outside_a_run_prints_the_page_and_writes_nothing(tiny_run, tmp_path, capsys):
    from robustact import build_model
    from robustact.checkpoints import save_weights

    _, data = tiny_run
    path = tmp_path / "model.safetensors"
    save_weights(build_model("resnet_small", width=4), path)
    assert main(["audit", str(path), "--n", "4", "--suite-opt", "aa=apgd-ce", "--sanity-n", "4", "--data-dir",
                 str(data), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "# Audit of " in out.out and "nothing written" in out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
