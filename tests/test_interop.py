"""Other people's models (docs/interop.md): checkpoint layouts from the RobustBench CIFAR-10 zoo and the code it
collects, normalisation carried or stated, L2 and AutoAttack's versions from the command line, the official
AutoAttack side by side, `robustact.benchmark`, and one line for each kind of bad input.

The layouts are built here from robustact's own modules plus the renaming each implies (the key names were checked
against RobustBench's architecture files: wide_resnet.py, resnet.py, dm_wide_resnet.py, and model_zoo/cifar10.py
for the `mu`/`sigma` buffers); the architectures themselves are tested against independent reference computations
in tests/test_interop_models.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import robustact
from robustact.checkpoints import save_weights
from robustact.checkpoints.weights import init_weights_from
from robustact.errors import CheckpointError, ConfigError, RobustactError
from robustact.models import create_model
from robustact.models.normalization import parse_normalize

CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
DATA = os.environ.get("ROBUSTACT_DATA")
needs_cifar = pytest.mark.skipif(not (DATA and (Path(DATA) / "cifar-10-batches-py" / "test_batch").is_file()),
                                 reason="needs CIFAR-10 under ROBUSTACT_DATA")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustact.cli", *args], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=900)


def assert_one_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def images(n: int, seed: int) -> torch.Tensor:
    """Noise images of different brightness: inputs a network's logits visibly depend on."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * 0.5 + torch.linspace(0, 0.5, n).view(n, 1, 1, 1)


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and classifier biases on top of the random (He) init, and BatchNorm
    statistics measured on a batch (random statistics would wash the input out), so that every tensor of a
    layout matters and the logits depend on the input."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            m.momentum = None  # running stats = the plain average over the calibration batch
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
        model.train()
        model(images(16, seed + 100))
    for m in norms:
        m.momentum = 0.1
    return model.eval()


# name: (arch, options, wrap(state_dict) -> object saved, arch-opts a user gives, carried normalisation)
def _with_mu_sigma(sd: dict, prefix: str = "") -> dict:
    return {f"{prefix}{k}": v for k, v in sd.items()} | {
        "mu": torch.tensor(CIFAR10[0]).view(1, 3, 1, 1), "sigma": torch.tensor(CIFAR10[1]).view(1, 3, 1, 1)}


LAYOUTS = {
    # TRADES / Carmon2019 code: DataParallel prefix, the unused sub_block1, under "state_dict" beside other entries
    "trades-wrn-sub_block1": ("wideresnet", {"depth": 10, "widen_factor": 1, "sub_block1": True},
                              lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 76},
                              {}, None),
    # RobustBench Rice2020Overfitting-style: a WRN wrapped in `model.`, mu/sigma buffers beside it
    "robustbench-wrn-mu-sigma": ("wideresnet", {"depth": 10, "widen_factor": 2},
                                 lambda sd: _with_mu_sigma(sd, "model."), {}, CIFAR10),
    # RobustBench Wong2020Fast: PreActBlock (shortcut from the raw input), no final BN, mu/sigma, under "model"
    "wong-fast-preact": ("preact_resnet18", {"width": 4, "shortcut": "input", "final_bn": False},
                         lambda sd: {"model": _with_mu_sigma(sd)}, {"shortcut": "input"}, CIFAR10),
    # kuangliu / PreActBlockV2 (Rice2020OverfittingNetL2): final BN, under "net" with kuangliu's acc/epoch
    "kuangliu-preact": ("preact_resnet18", {"width": 4}, lambda sd: {"net": sd, "acc": 88.0, "epoch": 199},
                        {"shortcut": "preact"}, None),
    "kuangliu-resnet18": ("resnet18", {"width": 8}, lambda sd: {"net": sd, "acc": 95.0, "epoch": 200}, {}, None),
    # DeepMind (Gowal2020Uncovering, Rebuffi2021): Swish; its normalisation lives in the model, not the file
    "deepmind-wrn": ("dm_wideresnet", {"depth": 10, "width": 1, "activation": "silu"}, lambda sd: sd,
                     {"activation": "swish"}, CIFAR10),
    # RobustBench WideResNet(bias_last=False), saved from a torch.compile'd module
    "wrn-no-fc-bias": ("wideresnet", {"depth": 10, "widen_factor": 1, "fc_bias": False},
                       lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, {}, None),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_with_auto_and_explicit_arch_and_gives_the_same_logits(layout, tmp_path):
    arch, options, wrap, given, carried = LAYOUTS[layout]
    source = randomized(create_model(arch, normalize="none", **options))
    path = tmp_path / f"{layout}.pt"
    torch.save(wrap(source.state_dict()), path)
    reference = create_model(arch, normalize=carried, **options).eval()
    reference.load_state_dict(source.state_dict())
    x = images(3, seed=1)
    with torch.no_grad():
        expected = reference(x)
        assert (expected[0] - expected[1]).abs().max() > 0.01  # the logits depend on the input (1000x atol)
        auto = robustact.load_model(path, arch="auto", **given)
        assert auto.arch == arch
        assert torch.allclose(auto(x), expected, atol=1e-5)
        explicit_options = {k: v for k, v in options.items() if k != "activation"}
        explicit = robustact.load_model(path, arch=arch, activation=options.get("activation", "relu"),
                                        **explicit_options)
        assert torch.allclose(explicit(x), expected, atol=1e-5)
    assert auto.build_kwargs["normalize"] == parse_normalize(carried)


@needs_cifar
def test_layouts_load_from_the_command_line(tmp_path):
    arch, options, wrap, given, carried = LAYOUTS["wong-fast-preact"]
    path = tmp_path / "wong.pt"
    torch.save(wrap(randomized(create_model(arch, normalize="none", **options)).state_dict()), path)
    proc = run_cli("eval", str(path), "--arch", "auto", "--arch-opt", "shortcut=input", "--attacks", "fgsm",
                   "--n", "20", "--sanity-n", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "fgsm" in proc.stdout and "worst_case" in proc.stdout
    proc = run_cli("eval", str(path), "--arch", "preact_resnet18", "--arch-opt", "width=4,shortcut=input",
                   "--arch-opt", "final_bn=false", "--normalize", "cifar10", "--attacks", "fgsm", "--n", "20",
                   "--sanity-n", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr


def test_auto_says_what_the_keys_cannot_tell(tmp_path):
    for layout, missing in (("wong-fast-preact", "shortcut=input"), ("deepmind-wrn", "activation=swish")):
        arch, options, wrap, _, _ = LAYOUTS[layout]
        path = tmp_path / f"{layout}.pt"
        torch.save(wrap(create_model(arch, **options).state_dict()), path)
        with pytest.raises(CheckpointError, match=missing):
            robustact.load_model(path, arch="auto")
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3), "head.weight": torch.zeros(2, 3)}, path)
    with pytest.raises(CheckpointError, match="match none of the layouts"):
        robustact.load_model(path, arch="auto")


def test_explicit_arch_of_the_wrong_variant_says_which_keys_differ(tmp_path):
    arch, options, wrap, _, _ = LAYOUTS["trades-wrn-sub_block1"]
    path = tmp_path / "trades.pt"
    torch.save(wrap(create_model(arch, **options).state_dict()), path)
    with pytest.raises(CheckpointError, match=r"unexpected \(e.g. sub_block1"):
        robustact.load_model(path, arch="wideresnet", depth=10, widen_factor=1)


def test_wrn_34_20_is_an_option_away(tmp_path):
    """Rice2020Overfitting's WRN-34-20: the shapes RobustBench's WideResNet(34, widen_factor=20) has (built on
    the meta device: 184M parameters are not allocated)."""
    with torch.device("meta"):
        model = create_model("wideresnet", depth=34, widen_factor=20)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["block1.layer.0.conv1.weight"] == (320, 16, 3, 3)
    assert shapes["block3.layer.4.conv2.weight"] == (1280, 1280, 3, 3)
    assert shapes["fc.weight"] == (10, 1280)
    assert sum(v.numel() for v in model.parameters()) == 184_531_674  # by hand from the layer shapes
    from robustact.cli import parse_arch_options

    assert parse_arch_options(["depth=34,widen_factor=20"]) == {"depth": 34, "widen_factor": 20}


# ---------------------------------------------------------------- normalisation


def test_normalisation_forms():
    assert parse_normalize("cifar10") == [list(CIFAR10[0]), list(CIFAR10[1])]
    assert parse_normalize("none") is None
    assert parse_normalize("0.5,0.25") == [[0.5] * 3, [0.25] * 3]
    assert parse_normalize("0.1,0.2,0.3,0.4,0.5,0.6") == [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    assert parse_normalize((torch.tensor(CIFAR10[0]).view(1, 3, 1, 1), torch.tensor(CIFAR10[1]))) == \
        [list(CIFAR10[0]), list(CIFAR10[1])]  # float32 buffers read back as the published 4 decimals
    for bad in ("cifar11", "0.5,0.5,0.5", "0.5,0"):
        with pytest.raises(ConfigError):
            parse_normalize(bad)


def test_a_foreign_checkpoint_without_buffers_takes_the_stated_normalisation(tmp_path):
    source = randomized(create_model("resnet18", width=8))
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    loaded = robustact.load_model(tmp_path / "plain.pt", arch="resnet18", width=8, normalize="cifar10")
    reference = create_model("resnet18", width=8, normalize="cifar10").eval()
    reference.load_state_dict(source.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-6)
        assert not torch.allclose(loaded(x), source(x), atol=1e-3)  # normalisation changes the logits


def test_robustact_checkpoints_keep_their_normalisation_and_refuse_another(tmp_path):
    model = randomized(robustact.build_model("resnet_small", normalize="cifar10"))
    save_weights(model, tmp_path / "normed.safetensors")
    loaded = robustact.load_model(tmp_path / "normed.safetensors")
    assert loaded.build_kwargs["normalize"] == parse_normalize("cifar10")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    robustact.load_model(tmp_path / "normed.safetensors", normalize="cifar10")  # agreeing: fine
    for wrong in ("none", "cifar100"):
        with pytest.raises(CheckpointError, match="contradicts"):
            robustact.load_model(tmp_path / "normed.safetensors", normalize=wrong)
    save_weights(randomized(robustact.build_model("resnet_small")), tmp_path / "raw.safetensors")
    with pytest.raises(CheckpointError, match="input normalisation none; --normalize cifar10 contradicts"):
        robustact.load_model(tmp_path / "raw.safetensors", normalize="cifar10")


def test_init_from_weights_of_another_normalisation_is_an_error(tmp_path):
    save_weights(robustact.build_model("resnet_small", normalize="cifar10"), tmp_path / "src.safetensors")
    target = robustact.build_model("resnet_small")
    with pytest.raises(CheckpointError, match="normalisation cifar10, this model has none"):
        init_weights_from(target, tmp_path / "src.safetensors", optional=lambda key: False)
    init_weights_from(robustact.build_model("resnet_small", normalize="cifar10"), tmp_path / "src.safetensors",
                      optional=lambda key: False)


def test_config_normalize_accepts_names():
    from robustact.config import resolve
    from robustact.config.presets import apply_overrides, load_preset

    base = load_preset("pgd-at-small-cifar10")
    assert resolve(apply_overrides(base, ["model.normalize=cifar10"])).model.normalize == parse_normalize("cifar10")
    assert resolve(apply_overrides(base, ["model.normalize=none"])).model.normalize == "none"
    with pytest.raises(ConfigError, match="model.normalize"):
        resolve(apply_overrides(base, ["model.normalize=cifar11"]))


# ---------------------------------------------------------------- threat models, AutoAttack versions


@pytest.fixture(scope="module")
def small_robust_checkpoint(tmp_path_factory) -> Path:
    """resnet_small (width 8) after a short PGD-AT on 2,000 CIFAR-10 training images (~15 s on one core)."""
    from robustact.bench import quick_pgd_at
    from robustact.data import load_dataset

    if not DATA:
        pytest.skip("needs CIFAR-10 under ROBUSTACT_DATA")
    torch.manual_seed(0)
    x, y = load_dataset("cifar10", "train")
    model = robustact.build_model("resnet_small", width=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        quick_pgd_at(model, x[:2000].float() / 255, y[:2000], 4)
    path = tmp_path_factory.mktemp("robust") / "small.safetensors"
    save_weights(model.eval(), path)
    return path


@needs_cifar
def test_l2_autoattack_from_the_cli_agrees_with_the_official_per_example(small_robust_checkpoint, tmp_path):
    out = tmp_path / "l2.json"
    proc = run_cli("eval", str(small_robust_checkpoint), "--norm", "L2", "--attacks", "aa", "--official", "--n",
                   "100", "--sanity-n", "0", "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(out.read_text())
    assert report["norm"] == "L2" and report["eps"] == 0.5
    agreement = report["meta"]["official_agreement"]["aa vs aa-official"]
    assert agreement["examples"] >= 20 and agreement["agree"] == agreement["examples"], agreement
    acc = report["accuracy"]
    assert 0 < acc["aa"] < acc["clean"]  # a real attack on a partly robust model, not a trivial agreement
    assert report["per_example"]["aa"] == report["per_example"]["aa-official"]
    assert "same outcome on" in proc.stdout and "eps = L2 0.5" in proc.stdout


class RandomSignModel(nn.Module):
    """A model with a random forward pass that hides its gradient: logits_k = <v_k, x - 0.5> / 10 with dense
    random-sign v_k (Square, whose squares have one sign per channel, needs many queries to align with it; the
    gradient aligns at once), plus noise·sin(ω·Ux) with fresh noise on every call: small in the logits (0.02),
    large in the gradient (ω = 10⁴), zero in expectation — what EOT averages away."""

    def __init__(self, amp: float = 0.02, freq: float = 1e4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("v", torch.randint(0, 2, (10, 3072), generator=g).float() * 2 - 1)
        self.register_buffer("u", torch.randn(10, 3072, generator=g) / 3072 ** 0.5)
        self.amp, self.freq = amp, freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        out = (f - 0.5) @ self.v.t() / 10
        return out + self.amp * torch.randn_like(out) * torch.sin(self.freq * f @ self.u.t())


@needs_cifar
def test_rand_version_flags_and_defeats_a_random_model_that_standard_overrates():
    from robustact.attacks import AutoAttack
    from robustact.data import load_dataset
    from robustact.evaluation.sanity import check_randomness

    x = load_dataset("cifar10", "test")[0][:100].float() / 255
    model = RandomSignModel().eval()
    with torch.no_grad():
        y = ((x.flatten(1) - 0.5) @ model.v.t()).argmax(1)  # its own noiseless predictions are the labels
    flag = check_randomness(model, x)
    assert flag.fired and "aa-rand" in flag.message
    torch.manual_seed(0)
    standard = AutoAttack(1 / 255, version="standard", seed=0).run(model, x, y).accuracy()["worst_case"]
    torch.manual_seed(0)
    rand = AutoAttack(1 / 255, version="rand", seed=0).run(model, x, y).accuracy()["worst_case"]
    torch.manual_seed(0)
    truth = AutoAttack(1 / 255, version="custom", attacks=["apgd-ce"], seed=0).run(
        RandomSignModel(amp=0.0).eval(), x, y).accuracy()["worst_case"]  # the same model without the noise
    assert standard > rand + 0.15, (standard, rand)
    assert rand < truth + 0.1, (rand, truth)


@needs_cifar
def test_rand_and_plus_from_the_cli_and_bad_threat_models(small_robust_checkpoint):
    proc = run_cli("eval", str(small_robust_checkpoint), "--attacks", "aa-rand", "--n", "20", "--sanity-n", "0",
                   "--no-progress")
    assert proc.returncode == 0 and "aa-rand" in proc.stdout, proc.stderr
    assert_one_line(run_cli("eval", str(small_robust_checkpoint), "--norm", "L2", "--eps", "8"), "L2 eps=8")
    assert_one_line(run_cli("eval", str(small_robust_checkpoint), "--eps", "8"), "8/255")
    assert_one_line(run_cli("eval", str(small_robust_checkpoint), "--suite", "paper", "--protocol", "cas",
                            "--norm", "L2"), "L∞ protocol")
    bad = run_cli("eval", str(small_robust_checkpoint), "--norm", "L3")
    assert bad.returncode == 2 and "expected Linf or L2" in bad.stderr
    assert_one_line(run_cli("eval", str(small_robust_checkpoint), "--attacks", "pgd20", "--official"),
                    "no AutoAttack")


# ---------------------------------------------------------------- robustact.benchmark


@needs_cifar
def test_benchmark_gives_the_numbers_of_eval_to_the_example(small_robust_checkpoint, tmp_path):
    from robustact.evaluation import EvalOptions, run_eval

    by_cli = run_eval(small_robust_checkpoint, EvalOptions(attacks="fgsm,pgd20,apgd-ce", n=200, sanity_n=50,
                                                           progress=False))
    model = robustact.load_model(small_robust_checkpoint)
    out = tmp_path / "bench.json"
    result = robustact.benchmark(model, "cifar10", "Linf", 8 / 255, n=200, attacks="fgsm,pgd20,apgd-ce",
                                 sanity_n=50, out=out)
    assert result.accuracy() == by_cli.accuracy()
    for name in ("fgsm", "pgd20", "apgd-ce"):
        assert torch.equal(result.robust[name], by_cli.robust[name])
    assert [f["fired"] for f in result.sanity] == [f["fired"] for f in by_cli.sanity]
    assert out.is_file() and out.with_suffix(".md").is_file() and result.meta["report"] == str(out)
    with pytest.raises(RobustactError, match="no option 'arch'"):
        robustact.benchmark(model, attacks="fgsm", arch="resnet18")
    with pytest.raises(RobustactError, match="nn.Module"):
        robustact.benchmark("runs/at")


# ---------------------------------------------------------------- bad input: one line, exit 2


@needs_cifar
def test_bad_interop_input_is_one_line(tmp_path):
    carried = tmp_path / "mu_sigma.pt"
    arch, options, wrap, _, _ = LAYOUTS["robustbench-wrn-mu-sigma"]
    torch.save(wrap(create_model(arch, normalize="none", **options).state_dict()), carried)
    assert_one_line(run_cli("eval", str(carried), "--arch", "auto", "--normalize", "cifar100", "--n", "10"),
                    "mu/sigma", "cifar100 contradicts")
    assert_one_line(run_cli("eval", str(carried), "--arch", "auto", "--normalize", "cifar9", "--n", "10"),
                    "--normalize", "cifar10 |")
    layout = tmp_path / "optimizer_only.pt"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, layout)
    assert_one_line(run_cli("eval", str(layout), "--arch", "resnet18"), "unknown checkpoint layout", "'optimizer'")
    plain = tmp_path / "plain.pt"
    torch.save(create_model("resnet18", width=8).state_dict(), plain)
    assert_one_line(run_cli("eval", str(plain), "--arch", "resnet18", "--arch-opt", "depth=34"),
                    "does not take depth", "it takes: width")
    assert_one_line(run_cli("eval", str(plain), "--arch-opt", "width=8"), "--arch")
