"""Nothing lost, nothing silent (docs/reliability.md): a training process killed after each file operation of a
checkpoint write resumes to the bit-identical result; a full disk is one line and a resumable run; a run directory
and a report have one writer; and the input that used to end in a traceback or a silently wrong result now gets
one line. Each test here failed before its fix."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_cifar
from safetensors.torch import load_file

from robustact import build_model
from robustact.cli import main
from robustact.errors import CheckpointError, RobustactError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = """base: demo
data: {train_subset: null, val_size: 20, batch_size: 20}
model: {arch_kwargs: {width: 4}}
training: {epochs: 3, attack: {steps: 1}, val_n: 10, val_attack_steps: 1, channels_last: false}
"""
TIMING = ("epoch_seconds", "train_images_per_s")

# The child process: train, and SIGKILL itself right after the k-th file operation of epoch 2's end (metrics line,
# `best` and `last` checkpoint directories: every mkdir, fsync, rename and removal counts).
KILLER = r"""
import os, shutil, signal, sys
import torch
torch.set_num_threads(1)
k, argv = int(sys.argv[1]), sys.argv[2:]
armed, done = [False], [0]

def counted(module, name):
    real = getattr(module, name)
    def op(*args, **kwargs):
        out = real(*args, **kwargs)
        if armed[0]:
            done[0] += 1
            if done[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(module, name, op)

for name in ("mkdir", "fsync", "rename", "replace", "unlink", "rmdir"):
    counted(os, name)
counted(shutil, "rmtree")

from robustact.training.trainer import Trainer
real_end = Trainer.end_epoch
def end_epoch(self, epoch, record):
    armed[0] = epoch == 1
    try:
        real_end(self, epoch, record)
    finally:
        armed[0] = False
Trainer.end_epoch = end_epoch

from robustact.cli import main
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    data = write_tiny_cifar(root / "data")
    config = root / "tiny.yaml"
    config.write_text(TINY)
    return root, data, config


def train_args(config: Path, out: Path, data: Path) -> list[str]:
    return ["train", "--config", str(config), "--out", str(out), "--data-dir", str(data), "--no-progress"]


def final_state(run: Path) -> tuple[dict, dict, list[dict]]:
    last = run / "checkpoints" / "last"
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return load_file(last / "model.safetensors"), load_file(last / "state.safetensors"), metrics


def assert_same_run(a: Path, b: Path) -> None:
    wa, sa, ma = final_state(a)
    wb, sb, mb = final_state(b)
    assert wa.keys() == wb.keys() and sa.keys() == sb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "optimizer / RNG state differs"
    assert ma == mb
    leftovers = [p.name for p in (b / "checkpoints").iterdir() if p.name.startswith(".") or p.name.endswith(".old")]
    assert leftovers == []


@pytest.fixture(scope="module")
def reference(tiny):
    root, data, config = tiny
    out = root / "reference"
    assert main(train_args(config, out, data)) == 0
    return out


# -- 1. a checkpoint is one unit; kill -9 after every file operation ---------------------------------------------
def test_killed_after_each_file_operation_of_a_checkpoint_write_resumes_bit_identically(tiny, reference, capsys):
    root, data, config = tiny
    kills = 0
    for k in range(1, 60):
        out = root / f"killed-{k}"
        proc = subprocess.run([sys.executable, "-c", KILLER, str(k), *train_args(config, out, data)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:  # k is past the last operation: the run finished
            assert_same_run(reference, out)
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        kills += 1
        assert main(["train", "--resume", str(out), "--data-dir", str(data), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "taking over the lock of process" in err and "resuming" in err
        assert_same_run(reference, out)
    assert kills >= 15  # the metrics line and both checkpoint directories, operation by operation


def test_full_disk_during_a_checkpoint_write_is_one_line_and_resumable(tiny, reference, monkeypatch, capsys):
    import robustact.fileio as fileio

    root, data, config = tiny
    out, real, calls = root / "full-disk", fileio._write_synced, [0]

    def write_synced(path, data_):
        calls[0] += 1
        if calls[0] == 9:  # during epoch 2's checkpoints (epoch 1 writes 7 files: best 3, last 4)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data_)

    monkeypatch.setattr(fileio, "_write_synced", write_synced)
    assert main(train_args(config, out, data)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "No space left on device" in err[0] and "nothing complete was lost" in err[0], err
    monkeypatch.setattr(fileio, "_write_synced", real)
    assert main(["train", "--resume", str(out), "--data-dir", str(data), "--no-progress"]) == 0
    assert_same_run(reference, out)


def test_a_run_of_the_earlier_layout_resumes(tiny, reference, tmp_path):
    """0.1.0 kept `checkpoints/last.safetensors`, `last.state.safetensors` and `last.json` side by side."""
    import shutil

    root, data, config = tiny
    out = tmp_path / "old"

    class StopAfterTwo(Exception):
        pass

    from robustact.config import load_config_file, resolve
    from robustact.training import Trainer

    class Stop(Trainer):
        def end_epoch(self, epoch, record):
            super().end_epoch(epoch, record)
            if epoch == 1:
                raise StopAfterTwo

    with pytest.raises(StopAfterTwo):
        Stop(resolve(load_config_file(config)), out, data_root=str(data), progress=False).fit()
    ckpts = out / "checkpoints"
    for tag in ("last", "best"):  # rewrite as 0.1.0 laid it out
        (ckpts / tag / "model.safetensors").rename(ckpts / f"{tag}.safetensors")
        if (ckpts / tag / "state.safetensors").exists():
            (ckpts / tag / "state.safetensors").rename(ckpts / f"{tag}.state.safetensors")
        (ckpts / tag / "info.json").rename(ckpts / f"{tag}.json")
        shutil.rmtree(ckpts / tag)
    assert main(["eval", str(out), "--attacks", "fgsm", "--n", "8", "--sanity-n", "0", "--data-dir", str(data),
                 "--no-progress"]) == 0
    assert main(["train", "--resume", str(out), "--data-dir", str(data), "--no-progress"]) == 0
    assert_same_run(reference, out)


# -- 2. one writer per run directory and per report --------------------------------------------------------------
HOLDER = ("import sys, time; from robustact.fileio import WriterLock; WriterLock(sys.argv[1], 'x').__enter__(); "
          "print('held', flush=True); time.sleep(120)")


def _hold(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_of_a_run_is_refused_and_a_dead_ones_lock_taken_over(tiny, tmp_path, capsys):
    root, data, config = tiny
    out = tmp_path / "run"
    holder = _hold(out / ".lock")
    try:
        assert main(train_args(config, out, data)) == 2
        err = capsys.readouterr().err
        assert f"is being written by process {holder.pid}" in err and len(err.strip().splitlines()) == 1
        assert not (out / "config.yaml").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert main([*train_args(config, out, data), "--set", "training.epochs=1"]) == 0
    assert f"taking over the lock of process {holder.pid}" in capsys.readouterr().err
    assert main([*train_args(config, out, data), "--set", "training.epochs=1"]) == 2  # a finished run: --resume
    assert "already holds a run" in capsys.readouterr().err


def test_a_second_writer_of_a_report_is_refused(tmp_path, tiny, capsys):
    _, data, _ = tiny
    ckpt = tmp_path / "m.safetensors"
    from robustact.checkpoints import save_weights

    save_weights(build_model("resnet_small", width=4), ckpt)
    out = tmp_path / "r.json"
    holder = _hold(tmp_path / ".r.lock")
    try:
        assert main(["eval", str(ckpt), "--attacks", "fgsm", "--n", "4", "--out", str(out), "--sanity-n", "0",
                     "--data-dir", str(data)]) == 2
        assert "is being written by process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


# -- 3. an evaluation does not silently replace an earlier report ------------------------------------------------
def test_reports_are_named_by_what_they_evaluated(tiny, reference, capsys):
    _, data, _ = tiny
    common = ["--attacks", "fgsm", "--n", "8", "--sanity-n", "0", "--data-dir", str(data), "--no-progress"]
    assert main(["eval", str(reference), *common]) == 0
    assert main(["eval", str(reference), *common, "--which", "last"]) == 0
    assert (reference / "eval" / "eval.json").is_file() and (reference / "eval" / "eval-last.json").is_file()
    assert main(["eval", str(reference), *common]) == 0  # the same evaluation again may rewrite its report
    capsys.readouterr()
    other = ["--attacks", "pgd5", "--n", "8", "--sanity-n", "0", "--data-dir", str(data), "--no-progress"]
    assert main(["eval", str(reference), *other]) == 2
    assert "holds the report of another evaluation (other attacks" in capsys.readouterr().err
    assert json.loads((reference / "eval" / "eval.json").read_text())["accuracy"].keys() >= {"fgsm"}


# -- 4. out-of-range numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, fragment", [
    (["--n", "0"], "--n must be an integer >= 1"), (["--n", "-5"], "--n must be an integer >= 1"),
    (["--n", "20000"], "cifar10 has 10000; use 1..10000"), (["--n", "41"], "test split here has 40; use 1..40"),
    (["--batch-size", "-3"], "--batch-size must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be"), (["--sanity-n", "-1"], "--sanity-n must be"),
])
def test_out_of_range_eval_numbers_are_refused(tiny, reference, flags, fragment, capsys):
    _, data, _ = tiny
    assert main(["eval", str(reference), "--attacks", "fgsm", "--data-dir", str(data), *flags]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_attack_settings_that_would_become_other_numbers_are_refused():
    from robustact.attacks import APGD, FAB, FGSM, PGD, Square

    for make, fragment in [(lambda: PGD(8 / 255, steps=2.7), "PGD steps must be an integer"),
                           (lambda: PGD(8 / 255, alpha=-1), "alpha must be a finite number >= 0"),
                           (lambda: PGD(8 / 255, restarts=0), "restarts must be an integer >= 1"),
                           (lambda: FGSM(8 / 255, alpha=float("nan")), "alpha must be a finite number"),
                           (lambda: APGD(8 / 255, steps=True), "APGD steps"),
                           (lambda: FAB(8 / 255, eta=-1), "FAB eta"),
                           (lambda: Square(8 / 255, n_queries=10.5), "n_queries"),
                           (lambda: Square(8 / 255, p_init=0), "p_init")]:
        with pytest.raises(RobustactError, match=fragment):
            make()
    assert PGD(8 / 255, steps=20.0).steps == 20  # an integral float is that integer


# -- 5. tampered weights ---------------------------------------------------------------------------------------------
def _with_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(new) == n
    path.write_bytes(raw[:8] + new + raw[8 + n:])


def test_tampered_weights_are_refused(tmp_path, capsys):
    from robustact.checkpoints import load_model, save_weights

    model = build_model("resnet_small", width=4)
    path = tmp_path / "m.safetensors"
    save_weights(model, path)

    def int32(header):
        header["conv1.weight"]["dtype"] = "I32"

    _with_header(path, int32)
    with pytest.raises(CheckpointError, match=r"other shape or dtype \(e.g. conv1.weight: .*torch.int32 vs"):
        load_model(path)
    save_weights(model, path)

    def bad_meta(header):
        header["__metadata__"]["build_kwargs"] = "{not json" + " " * (len(header["__metadata__"]["build_kwargs"]) - 9)

    _with_header(path, bad_meta)
    assert main(["eval", str(path), "--attacks", "fgsm", "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "'build_kwargs' is not valid JSON" in err and "Traceback" not in err


def test_a_damaged_checkpoint_directory_is_refused_on_resume(tiny, reference, tmp_path, capsys):
    import shutil

    _, data, _ = tiny
    run = tmp_path / "damaged"
    shutil.copytree(reference, run)
    weights = run / "checkpoints" / "last" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert main(["train", "--resume", str(run), "--data-dir", str(data)]) == 2
    assert "does not match its manifest" in capsys.readouterr().err


# -- 6. tracebacks that are one line now -----------------------------------------------------------------------------
def test_broken_preset_file_leaves_the_listing_usable(monkeypatch, capsys):
    import robustact.config.presets as presets

    real = presets.load_preset

    def load(name):
        if name == "demo":
            raise presets.ConfigError("preset 'demo' is not valid YAML: mapping values are not allowed here")
        return real(name)

    monkeypatch.setattr(presets, "load_preset", load)
    monkeypatch.setattr("robustact.config.load_preset", load)
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "(broken: preset 'demo' is not valid YAML" in out and "pgd-at-small-cifar10" in out


def test_out_that_is_a_file_or_below_a_file(tiny, tmp_path, capsys):
    root, data, config = tiny
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        assert main(train_args(config, out, data)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(blocker) in err[0], err


def test_run_directory_with_missing_or_invalid_config(tiny, reference, tmp_path, capsys):
    import shutil

    _, data, _ = tiny
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "config.yaml").write_text("training: {epochs: [1, 2}\n")
    for args in (["train", "--resume", str(run)], ["eval", str(run), "--n", "4"]):
        assert main([*args, "--data-dir", str(data)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config.yaml" in err[0] and "not valid YAML" in err[0], err
    (run / "config.yaml").unlink()
    assert main(["train", "--resume", str(run), "--data-dir", str(data)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there(tiny, reference, capsys):
    _, data, config = tiny
    for args in (["eval", str(reference), "--n", "4", "--device", "cuda"],
                 train_args(config, reference.parent / "cuda-run", data) + ["--device", "cuda:1"],
                 ["eval", str(reference), "--n", "4", "--device", "tpu"]):
        assert main([*args, "--data-dir", str(data)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("no CUDA device" in err[0] or "unknown device" in err[0]), err


def test_a_training_split_smaller_than_one_batch(tiny, tmp_path, capsys):
    _, data, config = tiny
    assert main([*train_args(config, tmp_path / "r", data), "--set", "data.batch_size=200"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size=200 is larger than the training split (80 images" in err
    assert not (tmp_path / "r").exists()


# -- 7. library inputs -----------------------------------------------------------------------------------------------
def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()


@pytest.mark.parametrize("name", ["pgd", "fgsm", "apgd", "apgd-t", "fab", "square", "aa"])
def test_labels_out_of_range_are_one_line_for_every_attack(name):
    from robustact.attacks import APGD, APGDT, FAB, FGSM, PGD, AutoAttack, Square

    attack = {"pgd": PGD(8 / 255, steps=2), "fgsm": FGSM(8 / 255), "apgd": APGD(8 / 255, steps=2),
              "apgd-t": APGDT(8 / 255, steps=2, n_target_classes=1), "fab": FAB(8 / 255, steps=2),
              "square": Square(8 / 255, n_queries=2), "aa": AutoAttack(8 / 255, version="custom",
                                                                     attacks=["apgd-ce"])}[name]
    x, model = torch.rand(4, 3, 8, 8), _net()
    y = model(x).argmax(1)
    y[1] = 7  # the model has 5 classes
    run = attack.run if name == "aa" else attack
    with pytest.raises(RobustactError, match="below the model's 5 classes, got 7"):
        run(model, x, y)
    with pytest.raises(RobustactError, match=">= 0"):
        run(model, x, y.clamp(max=4) - 5)


def test_label_dtypes_images_and_empty_batches():
    from robustact.attacks import PGD
    from robustact.evaluation import evaluate

    x, model = torch.rand(4, 3, 8, 8), _net()
    y = model(x).argmax(1)
    attack = PGD(8 / 255, steps=2)
    assert torch.equal(attack(model, x, y.int()), attack(model, x, y))  # int32 labels are class indices too
    with pytest.raises(RobustactError, match="integer class indices, got dtype torch.float32"):
        attack(model, x, y.float())
    with pytest.raises(RobustactError, match="images are torch.float64 but the model's weights are torch.float32"):
        attack(model, x.double(), y)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(RobustactError, match="NaN"):
        attack(model, nan, y)
    assert attack(model, x[:0], y[:0]).shape == (0, 3, 8, 8)
    result = evaluate(model, x, y, {"pgd": attack}, eps=8 / 255, progress=False)
    assert result.accuracy()["clean"] == 1.0
    with pytest.raises(RobustactError, match="below the model's 5 classes"):
        evaluate(model, x, y + 5, {"pgd": attack}, eps=8 / 255, progress=False)


# -- 9. small things a user notices ----------------------------------------------------------------------------------
def test_atomic_files_get_the_umask_mode_and_no_progress_frames_in_logs(tmp_path):
    from robustact.fileio import atomic_write_text, publish_dir

    for mask, mode in ((0o022, 0o644), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            atomic_write_text(tmp_path / f"f{mask}.txt", "x")
            folder = publish_dir(tmp_path, f"d{mask}", {"a": b"1"})
        finally:
            os.umask(old)
        assert (tmp_path / f"f{mask}.txt").stat().st_mode & 0o777 == mode  # was 0o600 whatever the umask
        assert (folder / "a").stat().st_mode & 0o777 == mode
    from robustact.utils import show_progress

    assert show_progress(True) is sys.stderr.isatty() and show_progress(False) is False
