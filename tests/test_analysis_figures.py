"""The analysis figures as a paper would print them: panels compared on one scale, legends whose entries are the
drawn artists, few and non-overlapping channel ticks, legible fonts, titles naming the model, ε, the attack and
the class; the default class (the one the compared models classify best) and the warning for a poor one.

The plotting helpers return matplotlib Figures, inspected here without saving; the end-to-end tests use tiny
random models on synthetic images, with the attacks replaced by a fixed shift (no CIFAR files needed)."""

from __future__ import annotations

import csv
import itertools
from types import SimpleNamespace

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.text import Text
from torch import nn

from robustact import build_model
from robustact.analysis import AnalysisOptions, run_analysis
from robustact.analysis.channels import plot_channels, profile
from robustact.analysis.figures import LABEL, MAX_TICKS, TICK
from robustact.analysis.gates import plot_gates
from robustact.analysis.registry import ClassChoice, choose_class, class_option, resolve_class
from robustact.analysis.relevance import plot_relevance
from robustact.errors import RobustactError
from robustact.evaluation import OpenedRun

CHOICE = ClassChoice(3, "3 (cat)", "chosen", {"at": 0.62, "cas": 0.71}, 103)


# ------------------------------------------------------------------------------------------- inspection helpers
def _draw(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _colour(artist) -> tuple:
    """The colour a legend entry or a drawn artist shows: a line's colour, a patch's (or bar group's) face."""
    if hasattr(artist, "patches"):          # a BarContainer
        artist = artist.patches[0]
    if hasattr(artist, "get_color") and not hasattr(artist, "get_facecolor"):
        return to_rgba(artist.get_color(), artist.get_alpha())
    return tuple(artist.get_facecolor())


def _drawn(ax) -> dict[str, object]:
    """label -> drawn artist of an Axes and its twins (lines, bar groups, patches)."""
    out = {}
    for a in [ax, *[t for t in ax.figure.axes if t is not ax and t.bbox.bounds == ax.bbox.bounds]]:
        for artist in [*a.lines, *a.containers, *a.patches]:
            label = artist.get_label()
            if label and not label.startswith("_"):
                out.setdefault(label, artist)
    return out


def _assert_legend_matches(legend, axes) -> None:
    """Every legend entry names an artist drawn in each of `axes`, with that artist's colour and kind."""
    handles, texts = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
    assert handles and len(handles) == len(texts)
    for ax in axes:
        drawn = _drawn(ax)
        for handle, text in zip(handles, texts):
            assert text in drawn, f"legend entry {text!r} draws nothing in {ax.get_title()!r}"
            artist = drawn[text]
            assert _colour(handle) == pytest.approx(_colour(artist)), text
            is_line = hasattr(artist, "get_linestyle") and hasattr(artist, "get_xdata")
            assert (hasattr(handle, "get_xdata")) == is_line, f"{text}: a line drawn, a patch in the legend"
            if is_line:
                assert handle.get_linestyle() == artist.get_linestyle()


def _assert_ticks_readable(fig, renderer, max_ticks: int = MAX_TICKS + 1) -> None:
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            lo, hi = sorted(axis.get_view_interval())
            labels = [t for t in labels if lo - 1e-9 <= (t.get_position()[0] if axis is ax.xaxis
                                                         else t.get_position()[1]) <= hi + 1e-9]
            assert len(labels) <= max_ticks, f"{len(labels)} ticks on {ax.get_title()!r}"
            boxes = [t.get_window_extent(renderer) for t in labels]
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), f"overlapping tick labels on {ax.get_title()!r}"


def _assert_text_legible(fig, renderer) -> None:
    width = fig.get_figwidth() * fig.dpi
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip():
            assert text.get_fontsize() >= TICK, repr(text.get_text())
    title = fig.get_suptitle()
    box = fig._suptitle.get_window_extent(renderer)
    assert title and box.x0 >= 0 and box.x1 <= width, "the title runs off the figure"


# ------------------------------------------------------------------------------------------------- class choice
def test_choose_class_takes_the_highest_lowest_accuracy_over_the_models():
    accuracy = torch.tensor([[0.95, 0.50, 0.70, 1.00, 0.70, float("nan")],
                             [0.20, 0.60, 0.65, 1.00, 0.65, float("nan")]])
    counts = torch.tensor([100, 100, 100, 3, 100, 0])
    # class 0: best for model 0 and best mean, but model 1 hardly knows it; class 3: too few images; class 5: none;
    # classes 2 and 4 tie on the lowest accuracy and the mean: the lower index
    assert choose_class(accuracy, counts) == 2
    accuracy[0, 4] = 0.8                                   # the tie broken by the higher mean
    assert choose_class(accuracy, counts) == 4
    assert choose_class(accuracy, torch.tensor([5, 5, 5, 3, 5, 0])) == 3   # no class has 10: all classes with images
    assert choose_class(accuracy[:1], counts) == 0         # one model: its best class
    with pytest.raises(RobustactError, match="no class"):
        choose_class(accuracy, torch.zeros(6, dtype=torch.long))


class _Oracle(nn.Module):
    """Reads the label off pixel (0, 0, 0) and answers it for the classes it knows; for any other class a wrong
    answer (class 1 for class 0, class 0 for the rest)."""

    def __init__(self, known: set[int]):
        super().__init__()
        self.known, self.fc = known, nn.Linear(1, 10)

    def classifier_layer(self) -> nn.Linear:
        return self.fc

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 10).round().long()
        answer = torch.where(torch.isin(label, torch.tensor(sorted(self.known))), label, (label == 0).long())
        return nn.functional.one_hot(answer, 10).float()


def _fake_run(known: set[int], per_class: int = 12) -> OpenedRun:
    y = torch.arange(10).repeat(per_class)
    x = torch.zeros(len(y), 3, 4, 4)
    x[:, 0, 0, 0] = y / 10
    config = SimpleNamespace(data=SimpleNamespace(dataset="cifar10", classes=None))
    return OpenedRun(_Oracle(known), x, y, config, None, torch.device("cpu"))


def test_default_class_is_one_every_model_classifies_and_a_poor_given_class_warns(capsys):
    runs = [("at", _fake_run({2, 3, 7})), ("cas", _fake_run({3, 5, 7}))]
    choice = resolve_class(None, runs)
    assert (choice.index, choice.how, choice.name) == (3, "chosen", "3 (cat)")    # 3 and 7 tie: the lower index
    assert choice.accuracy == {"at": 1.0, "cas": 1.0} and choice.n_images == 12
    assert capsys.readouterr().err == ""
    described = choice.describe()
    assert "class 3 (cat)" in described and "at 100%" in described and "cas 100%" in described

    given = resolve_class(2, runs)                         # known to "at" only
    assert given.how == "given" and given.accuracy == {"at": 1.0, "cas": 0.0}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "cas 0%" in err and "at 100%" not in err
    assert resolve_class("7", runs).index == 7 and capsys.readouterr().err == ""

    mean = resolve_class("mean", runs)
    assert mean.index is None and mean.stem == "classmean" and mean.classes == list(range(10))
    assert mean.accuracy == {"at": pytest.approx(0.3), "cas": pytest.approx(0.3)}
    with pytest.raises(RobustactError, match="--class"):
        resolve_class(12, runs)


def test_class_option_and_the_cli_flag():
    from robustact.cli import build_parser

    assert [class_option(v) for v in (None, 3, "4", " Mean ")] == [None, 3, 4, "mean"]
    with pytest.raises(RobustactError, match="class index .* or 'mean'"):
        class_option("cat")
    args = build_parser().parse_args(["analyze", "RUN", "--kind", "channels", "--class", "mean"])
    assert args.class_idx == "mean"
    assert build_parser().parse_args(["analyze", "RUN", "--kind", "channels"]).class_idx is None


# ------------------------------------------------------------------------------------------------------ figures
def _channel_result(channels: int, scale: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    stats = {}
    for kind in ("natural", "adversarial"):
        stats[kind] = {"freq": torch.randint(0, 100, (channels,), generator=g),
                       "mean": torch.rand(channels, generator=g) * scale}
    return stats | {"n": 100, "acc_natural": 0.6, "acc_adversarial": 0.3}


@pytest.mark.parametrize("channels", [64, 512])
def test_channel_figure_shares_axes_and_its_legends_are_the_drawn_artists(channels):
    panels = [(name, profile(r) | {k: r[k] for k in ("acc_natural", "acc_adversarial", "n")})
              for name, r in (("at", _channel_result(channels, 0.3, 0)), ("cas", _channel_result(channels, 3.0, 1)))]
    fig = plot_channels(panels, CHOICE, 8 / 255, "layer4.1.site")
    axes = fig.axes
    assert len(axes) == 4
    top, bottom = [axes[0], axes[1]], [axes[2], axes[3]]   # created row by row
    for row in (top, bottom):
        assert row[0].get_ylim() == row[1].get_ylim()      # magnitudes 10x apart, one scale
    assert len({ax.get_xlim() for ax in axes}) == 1
    assert top[0].get_ylim()[1] >= max(float(p["freq_adversarial"].max()) for _, p in panels)
    assert bottom[0].get_ylim()[1] >= max(float(p["mag_natural"].max()) for _, p in panels)
    legends = [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    assert len(legends) == 2
    _assert_legend_matches(top[0].get_legend(), top)
    _assert_legend_matches(bottom[0].get_legend(), bottom)
    renderer = _draw(fig)
    _assert_ticks_readable(fig, renderer)
    _assert_text_legible(fig, renderer)
    title = fig.get_suptitle()
    for part in ("PGD-20", "ε = 8/255", "class 3 (cat)", "at 62%", "cas 71%", "layer4.1.site"):
        assert part in title
    assert [ax.get_title().split("\n")[0] for ax in top] == ["at", "cas"]
    assert all(ax.xaxis.label.get_size() >= LABEL for ax in axes)


def _relevance_profile(channels: int, scale: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = torch.sort(torch.randn(channels, generator=g) * 0.1, descending=True).values
    return {"order": torch.randperm(channels, generator=g), "weight": w,
            "nat": torch.rand(channels, generator=g) * scale, "adv": torch.rand(channels, generator=g) * scale,
            "clean_acc": 0.5, "adv_acc": 0.25, "n": 100}


def test_relevance_figure_shares_axes_and_one_legend_of_the_drawn_lines():
    profiles = [("at", _relevance_profile(512, 0.7, 0)), ("cifs", _relevance_profile(512, 0.014, 1))]
    fig = plot_relevance(profiles, CHOICE, 8 / 255)
    main = [ax for ax in fig.axes if ax.get_ylabel().startswith("activation")]
    twins = [ax for ax in fig.axes if ax not in main]
    assert len(main) == 2 and len(twins) == 2
    assert main[0].get_ylim() == main[1].get_ylim() and main[0].get_xlim() == main[1].get_xlim()
    assert twins[0].get_ylim() == twins[1].get_ylim()
    # the CIFS features are 50x smaller, yet fill the same scale: each model divided by its own natural mean
    peaks = [max(line.get_ydata().max() for line in ax.lines) for ax in main]
    assert min(peaks) > 0.3 * max(peaks)
    assert len(fig.legends) == 1
    _assert_legend_matches(fig.legends[0], main)
    renderer = _draw(fig)
    _assert_ticks_readable(fig, renderer)
    _assert_text_legible(fig, renderer)
    assert all(s in fig.get_suptitle() for s in ("PGD-20", "ε = 8/255", "class 3 (cat)", "at 62%"))
    assert [ax.get_title().split(":")[0] for ax in main] == ["at", "cifs"]


def test_gates_figure_compares_natural_and_adversarial_on_one_scale():
    g = torch.Generator().manual_seed(0)
    nat = {"act": torch.rand(8, 8, generator=g) * 0.5, "layer1": torch.rand(4, 4, generator=g) * 0.1 + 0.5}
    adv = {k: v + 0.05 * torch.rand(v.shape, generator=g) for k, v in nat.items()}
    fig = plot_gates("sparta-run", nat, adv, 8 / 255, "the first 100 test images, all classes", (0.4, 0.2))
    grid = [ax for ax in fig.axes if ax.images]
    assert len(grid) == 6                                  # rows natural / adversarial / difference × 2 stages
    clim = {ax.get_title(): ax.images[0].get_clim() for ax in grid}
    for stage in nat:
        nat_ax = next(t for t in clim if t.startswith(f"{stage}: natural"))
        adv_ax = next(t for t in clim if t.startswith(f"{stage}: adversarial"))
        assert clim[nat_ax] == clim[adv_ax]
    diffs = [c for t, c in clim.items() if "adv − nat" in t]
    assert len(set(diffs)) == 1 and diffs[0][0] == -diffs[0][1]   # one symmetric scale for every stage
    renderer = _draw(fig)
    _assert_text_legible(fig, renderer)
    assert all(s in fig.get_suptitle() for s in ("sparta-run", "PGD-20", "ε = 8/255", "clean 40%"))


# ------------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """Two tiny runs (plain and CAS) and 40 synthetic test images; attacks replaced by a fixed shift."""
    from robustact.analysis import channels, relevance
    from robustact.checkpoints import save_weights

    torch.manual_seed(0)
    runs = []
    for name, defense in (("at", None), ("cas", "cas")):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("data: {dataset: cifar10}\n")
        save_weights(build_model("resnet_small", defense=defense, width=8), run / "checkpoints" / "last.safetensors")
        runs.append(run)
    fake_x = (torch.rand(40, 3, 32, 32) * 255).to(torch.uint8)
    fake_y = torch.arange(40) % 10
    monkeypatch.setattr("robustact.evaluation.runner.test_split", lambda *a, **k: (fake_x, fake_y))
    monkeypatch.setattr(channels, "_adversarial", lambda model, x, y, eps, seed: (x + eps).clamp(0, 1))
    monkeypatch.setattr(relevance, "_adversary", lambda model, eps, seed: (lambda m, x, y: (x + eps).clamp(0, 1)))
    return runs


def test_default_class_end_to_end_is_the_best_classified_one(fake_runs, tmp_path):
    from robustact.analysis.registry import accuracy_by_class
    from robustact.evaluation import open_run

    opened = [open_run(r, "last", 40, "cpu") for r in fake_runs]
    table = [accuracy_by_class(r.model, r.x, r.y, 10) for r in opened]
    expected = choose_class(torch.stack([a for a, _ in table]), table[0][1])
    out = tmp_path / "out"
    written = run_analysis("channels", fake_runs, AnalysisOptions(out=out, n=40, which="last", device="cpu"))
    assert {p.name for p in written} == {f"channels_class{expected}.png", f"channels_class{expected}.csv"}
    rows = list(csv.DictReader(open(out / f"channels_class{expected}.csv")))
    assert {r["class"] for r in rows} == {str(expected)} and len(rows) == 2 * 64 and rows[0]["freq_natural"]


def test_class_mean_end_to_end(fake_runs, tmp_path):
    out = tmp_path / "out"
    written = run_analysis("channels", fake_runs, AnalysisOptions(out=out, class_idx="mean", n=40, which="last",
                                                                   device="cpu"))
    assert {p.name for p in written} == {"channels_classmean.png", "channels_classmean.csv"}
    rows = list(csv.DictReader(open(out / "channels_classmean.csv")))
    assert len(rows) == 2 * 10 * 64 and {r["class"] for r in rows} == {str(c) for c in range(10)}
    written = run_analysis("relevance", fake_runs, AnalysisOptions(out=out, class_idx="mean", n=40, which="last",
                                                                    device="cpu"))
    assert {p.name for p in written} == {"relevance-at-classmean.csv", "relevance-cas-classmean.csv",
                                         "relevance-summary-classmean.csv", "relevance-classmean.png"}
    summary = list(csv.DictReader(open(out / "relevance-summary-classmean.csv")))
    assert [r["class"] for r in summary] == [*map(str, range(10)), "mean"] * 2
    assert int(summary[10]["n_images"]) == 40
