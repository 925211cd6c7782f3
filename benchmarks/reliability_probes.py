"""Probe robustact as a hostile but realistic user would and count the outcomes (docs/reliability.md).

    python benchmarks/reliability_probes.py [--out docs/reliability-probes.md]

Each probe is a command line (run as `python -m robustact ...` in a subprocess) or a library call, with what a
correct answer is: a clean one-line error (exit 2, one stderr line, no traceback), or success with the right
result. Outcomes: clean, traceback, silent (a wrong result or a success where an error was due), lost (a run
that does not resume to the uninterrupted result). Runs on tiny fake CIFAR-10 data in a temporary folder: a
few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import write_tiny_cifar  # noqa: E402
from test_reliability import KILLER, TINY, final_state  # noqa: E402

GROUPS = {
    1: "checkpoint written as one unit (kill -9 after each file operation)",
    2: "one writer per run directory and report",
    3: "reports not silently replaced",
    4: "out-of-range numbers",
    5: "tampered or damaged weights",
    6: "tracebacks of 0.1.0 (config, paths, devices, data)",
    7: "library inputs",
    8: "validation before anything expensive or on disk",
    9: "small things a user notices",
}


def robustact(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustact", *args], capture_output=True, text=True, timeout=600,
                          env=os.environ | (env or {}))


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    if "Traceback" in proc.stderr or proc.returncode not in (0, 2):
        return "traceback"
    lines = [line for line in proc.stderr.splitlines() if line.strip() and line.startswith("robustact: error")]
    if proc.returncode == 0 or len(lines) != 1 or not all(f in lines[0] for f in fragments):
        return "silent"
    return "clean"


def succeeds(proc: subprocess.CompletedProcess, check=lambda: True) -> str:
    if "Traceback" in proc.stderr:
        return "traceback"
    return "clean" if proc.returncode == 0 and check() else "silent"


def library(code: str, expect: str) -> str:
    """Run `code` in a fresh interpreter: it must raise a RobustactError whose text holds `expect` (or print
    `ok` when `expect` is empty)."""
    wrapper = ("import sys, torch\nfrom robustact.errors import RobustactError\ntry:\n"
               + "".join(f"    {line}\n" for line in code.splitlines())
               + "    print('ok')\nexcept RobustactError as exc:\n    print('error:', exc)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=300)
    if "Traceback" in proc.stderr:
        return "traceback"
    out = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if not expect:
        return "clean" if out == "ok" else "silent"
    return "clean" if out.startswith("error:") and expect in out else "silent"


class Probes:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: list[tuple[int, str, str]] = []
        self.data = write_tiny_cifar(work / "data")
        self.config = work / "tiny.yaml"
        self.config.write_text(TINY)
        os.environ["ROBUSTACT_DATA"] = str(self.data)
        os.environ["OMP_NUM_THREADS"] = "1"  # every process computes alike (the kill probes compare bit for bit)
        self.reference = work / "reference"
        assert robustact(*self.train(self.reference)).returncode == 0
        self.ckpt = self.reference / "checkpoints" / "best" / "model.safetensors"

    def train(self, out: Path, *extra: str) -> list[str]:
        return ["train", "--config", str(self.config), "--out", str(out), "--no-progress", *extra]

    def add(self, group: int, what: str, outcome: str) -> None:
        self.rows.append((group, what, outcome))
        print(f"[{outcome:9s}] {group}: {what}", flush=True)

    def same_as_reference(self, run: Path) -> bool:
        a, b = final_state(self.reference), final_state(run)
        import torch

        return all(torch.equal(x[k], y[k]) for x, y in zip(a[:2], b[:2]) for k in x) and a[2] == b[2]

    # -- groups ----------------------------------------------------------------------------------------------------
    def kills(self) -> None:
        for k in range(1, 60):
            out = self.work / f"killed-{k}"
            proc = subprocess.run([sys.executable, "-c", KILLER, str(k), *self.train(out)], capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode == 0:
                break
            resumed = robustact("train", "--resume", str(out), "--no-progress")
            ok = proc.returncode == -signal.SIGKILL and resumed.returncode == 0 and self.same_as_reference(out)
            self.add(1, f"kill -9 after file operation {k} of epoch 2's checkpoint writes, then --resume",
                     "clean" if ok else ("traceback" if "Traceback" in resumed.stderr else "lost"))
        disk = self.work / "full-disk"
        inject = ("import errno, sys, robustact.fileio as f\nreal, n = f._write_synced, [0]\n"
                  "def w(p, d):\n    n[0] += 1\n    if n[0] == 9: raise OSError(errno.ENOSPC, 'No space left on "
                  "device', str(p))\n    return real(p, d)\nf._write_synced = w\nfrom robustact.cli import main\n"
                  "sys.exit(main(sys.argv[1:]))\n")
        proc = subprocess.run([sys.executable, "-c", inject, *self.train(disk)], capture_output=True, text=True)
        first = one_line_error(proc, "No space left on device")
        resumed = robustact("train", "--resume", str(disk), "--no-progress")
        ok = first == "clean" and resumed.returncode == 0 and self.same_as_reference(disk)
        self.add(1, "disk full during a checkpoint write: one line, then --resume", "clean" if ok else "lost")

    def writers(self) -> None:
        holder = ("import sys, time; from robustact.fileio import WriterLock; WriterLock(sys.argv[1], 'x')"
                  ".__enter__(); print('held', flush=True); time.sleep(300)")
        for what, lock, args in [
            ("a second `train` into a run being trained", self.work / "busy" / ".lock", self.train(self.work / "busy")),
            ("a second `eval` writing the same report", self.reference / "eval" / ".eval.lock",
             ["eval", str(self.reference), "--n", "4", "--sanity-n", "0"]),
        ]:
            lock.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE, text=True)
            proc.stdout.readline()
            self.add(2, what, one_line_error(robustact(*args), "is being written by process"))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        taken = robustact(*self.train(self.work / "busy", "--set", "training.epochs=1"))
        self.add(2, "the lock of a killed writer is taken over, with a message",
                 succeeds(taken, lambda: "taking over the lock" in taken.stderr))
        self.add(2, "a new `train` into a finished run (without --resume)",
                 one_line_error(robustact(*self.train(self.reference)), "already holds a run"))

    def reports(self) -> None:
        run = self.work / "reports"
        shutil.copytree(self.reference, run)
        common = ["--n", "8", "--sanity-n", "0", "--no-progress"]
        robustact("eval", str(run), "--attacks", "fgsm", *common)
        last = robustact("eval", str(run), "--attacks", "fgsm", "--which", "last", *common)
        self.add(3, "`eval` then `eval --which last`: two reports",
                 succeeds(last, lambda: (run / "eval" / "eval-last.json").is_file()))
        self.add(3, "`eval` with other attacks into an existing report", one_line_error(
            robustact("eval", str(run), "--attacks", "pgd5", *common), "holds the report of another evaluation"))
        self.add(3, "... with --overwrite", succeeds(robustact("eval", str(run), "--attacks", "pgd5", "--overwrite",
                                                               *common)))

    def numbers(self) -> None:
        ev = ["eval", str(self.reference), "--attacks", "fgsm", "--sanity-n", "0"]
        for flags, expect in [(["--n", "0"], "--n must be"), (["--n", "-5"], "--n must be"),
                              (["--n", "20000"], "has 10000"), (["--n", "41"], "has 40"),
                              (["--batch-size", "-3"], "--batch-size must be"), (["--batch-size", "0"], "--batch-size"),
                              (["--sanity-n", "-1"], "--sanity-n must be"), (["--eps", "8"], "8/255"),
                              (["--eps", "abc"], "eps must be a number")]:
            self.add(4, f"eval {' '.join(flags)}", one_line_error(robustact(*ev, *flags), expect))
        for override, expect in [("training.epochs=0", "training.epochs"), ("training.attack.steps=2.7", "integer"),
                                 ("training.attack.alpha=-1", "training.attack.alpha"),
                                 ("training.optimizer.lr=0", "training.optimizer.lr")]:
            self.add(4, f"train --set {override}", one_line_error(
                robustact(*self.train(self.work / "never", "--set", override)), expect))
        for code, expect in [("from robustact.attacks import PGD; PGD(8/255, steps=2.7)", "PGD steps"),
                             ("from robustact.attacks import PGD; PGD(8/255, alpha=-1)", "alpha"),
                             ("from robustact.attacks import Square; Square(8/255, p_init=2)", "p_init")]:
            self.add(4, code.split("; ")[1], library(code, expect))

    def tampered(self) -> None:
        bad = self.work / "tampered"
        bad.mkdir()
        raw = self.ckpt.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        header["conv1.weight"]["dtype"] = "I32"
        new = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        (bad / "i32.safetensors").write_bytes(raw[:8] + new + raw[8 + n:])
        header["conv1.weight"]["dtype"] = "F32"
        header["__metadata__"]["build_kwargs"] = "{oops"
        new = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        (bad / "meta.safetensors").write_bytes(raw[:8] + new + raw[8 + n:])
        (bad / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
        import torch

        from robustact import build_model

        torch.save(build_model("resnet_small", width=4), bad / "pickled.pt")
        for name, expect in [("i32.safetensors", "dtype"), ("meta.safetensors", "not valid JSON"),
                             ("cut.safetensors", "not a readable safetensors"), ("pickled.pt", "weights_only")]:
            args = ["eval", str(bad / name), "--n", "4", "--sanity-n", "0"] + (["--arch", "resnet_small"]
                                                                             if name.endswith(".pt") else [])
            self.add(5, f"eval of {name}", one_line_error(robustact(*args), expect))
        damaged = self.work / "damaged"
        shutil.copytree(self.reference, damaged)
        w = damaged / "checkpoints" / "last" / "model.safetensors"
        b = bytearray(w.read_bytes())
        b[-1] ^= 0xFF
        w.write_bytes(bytes(b))
        self.add(5, "--resume of a run whose last checkpoint has a flipped byte",
                 one_line_error(robustact("train", "--resume", str(damaged)), "manifest"))

    def tracebacks(self) -> None:
        files = self.work / "configs"
        files.mkdir()
        (files / "list.yaml").write_text("- 1\n- 2\n")
        (files / "broken.yaml").write_text("training: {epochs: 3\n")
        (files / "stepz.yaml").write_text("base: demo\ntraining: {attack: {stepz: 20}}\n")
        (files / "mapping.yaml").write_text("base: demo\ntraining: fast\n")
        blocker = self.work / "a-file"
        blocker.write_text("x")
        for what, args, expect in [
            ("--set training.epochs=abc", self.train(self.work / "n1", "--set", "training.epochs=abc"), "integer"),
            ("--config whose top level is a list", ["train", "--config", str(files / "list.yaml"), "--out",
                                                    str(self.work / "n2")], "mapping"),
            ("--config with a YAML error", ["train", "--config", str(files / "broken.yaml"), "--out",
                                            str(self.work / "n3")], "not valid YAML"),
            ("--config with training.attack.stepz", ["train", "--config", str(files / "stepz.yaml"), "--out",
                                                     str(self.work / "n4")], "training.attack.stepz"),
            ("--config with a string where a mapping belongs", ["train", "--config", str(files / "mapping.yaml"),
                                                                "--out", str(self.work / "n5")], "mapping"),
            ("--out that is a file", self.train(blocker), "is a file"),
            ("--out below a file", self.train(blocker / "run"), "cannot write"),
            ("--device cuda without CUDA", ["eval", str(self.reference), "--n", "4", "--device", "cuda"], "CUDA"),
            ("--device tpu", ["eval", str(self.reference), "--n", "4", "--device", "tpu"], "unknown device"),
            ("a training split smaller than one batch", self.train(self.work / "n6", "--set", "data.batch_size=500"),
             "larger than the training split"),
        ]:
            self.add(6, what, one_line_error(robustact(*args), expect))
        noconf = self.work / "no-config"
        shutil.copytree(self.reference, noconf)
        (noconf / "config.yaml").unlink()
        self.add(6, "--resume of a run without config.yaml",
                 one_line_error(robustact("train", "--resume", str(noconf)), "not a run directory"))
        badconf = self.work / "bad-config"
        shutil.copytree(self.reference, badconf)
        (badconf / "config.yaml").write_text("model: [\n")
        self.add(6, "eval of a run with an invalid config.yaml",
                 one_line_error(robustact("eval", str(badconf), "--n", "4"), "config.yaml"))
        listing = robustact("presets")
        self.add(6, "`robustact presets` lists every preset", succeeds(listing, lambda: "demo" in listing.stdout))

    def inputs(self) -> None:
        net = ("import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
               "m = nn.Sequential(nn.Flatten(), nn.Linear(3*8*8, 5)).eval()\nx = torch.rand(4, 3, 8, 8)\n"
               "y = m(x).argmax(1)\n")
        attacks = {"PGD": "PGD(8/255, steps=2)", "APGD": "APGD(8/255, steps=2)", "FAB": "FAB(8/255, steps=2)",
                   "Square": "Square(8/255, n_queries=2)"}
        for name, make in attacks.items():
            self.add(7, f"{name} with a label out of range", library(
                net + f"from robustact.attacks import {name}\ny[1] = 7\n{make}(m, x, y)", "below the model's 5"))
        self.add(7, "AutoAttack with a label out of range", library(
            net + "from robustact.attacks import AutoAttack\ny[1] = 7\n"
                  "AutoAttack(8/255, version='custom', attacks=['apgd-ce']).run(m, x, y)", "below the model's 5"))
        for what, tail, expect in [
            ("int32 labels", "PGD(8/255, steps=2)(m, x, y.int())", ""),
            ("float labels", "PGD(8/255, steps=2)(m, x, y.float())", "integer class indices"),
            ("negative labels", "PGD(8/255, steps=2)(m, x, y - 5)", ">= 0"),
            ("float64 images", "PGD(8/255, steps=2)(m, x.double(), y)", "float64"),
            ("an empty batch", "assert PGD(8/255, steps=2)(m, x[:0], y[:0]).shape[0] == 0", ""),
            ("NaN pixels", "x[0, 0, 0, 0] = float('nan')\nPGD(8/255, steps=2)(m, x, y)", "NaN"),
            ("pixels outside [0, 1]", "PGD(8/255, steps=2)(m, x * 255, y)", "[0, 1]"),
        ]:
            self.add(7, what, library(net + "from robustact.attacks import PGD\n" + tail, expect))
        self.add(7, "evaluate() with a label out of range", library(
            net + "from robustact.attacks import PGD\nfrom robustact.evaluation import evaluate\n"
                  "evaluate(m, x, y + 5, {'p': PGD(8/255, steps=1)}, eps=8/255, progress=False)", "below"))

    def late(self) -> None:
        for override, expect in [("training.attack.eps=8", "8/255"), ("training.attack.steps=0", ">= 1"),
                                 ("model.arch=resnet1000", "unknown arch"),
                                 ("model.defense_kwargs={betta: 1}", "without a defense")]:
            out = self.work / f"late-{override.split('=')[0]}"
            proc = robustact(*self.train(out, "--set", override))
            outcome = one_line_error(proc, expect)
            self.add(8, f"--set {override}: one line, nothing on disk",
                     outcome if outcome != "clean" or not out.exists() else "silent")

    def small(self) -> None:
        proc = subprocess.run(["sh", "-c", f"umask 022 && {sys.executable} -m robustact eval {self.reference} "
                                           "--attacks fgsm --n 4 --sanity-n 0 --out " + str(self.work / "m.json")],
                              capture_output=True, text=True)
        mode = (self.work / "m.json").stat().st_mode & 0o777 if proc.returncode == 0 else None
        self.add(9, "report files get the umask's mode (0644), not 0600", "clean" if mode == 0o644 else "silent")
        log = robustact("train", "--config", str(self.config), "--out", str(self.work / "log-run"), "--set",
                        "training.epochs=1")  # progress bars asked for, output to a pipe
        self.add(9, "progress bars write no carriage-return frames into a log", succeeds(
            log, lambda: "\r" not in log.stderr + log.stdout))

    def run(self) -> None:
        for step in (self.kills, self.writers, self.reports, self.numbers, self.tampered, self.tracebacks,
                     self.inputs, self.late, self.small):
            step()


def table(rows: list[tuple[int, str, str]]) -> str:
    kinds = ("clean", "traceback", "silent", "lost")
    out = ["| group | tried | clean one-line error / right result | traceback | silent wrong result | data lost |",
           "|---|---:|---:|---:|---:|---:|"]
    total = Counter()
    for g, title in GROUPS.items():
        c = Counter(o for gg, _, o in rows if gg == g)
        total += c
        out.append(f"| {g}. {title} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in kinds) + " |")
    out.append(f"| **total** | **{sum(total.values())}** | " + " | ".join(f"**{total[k]}**" for k in kinds) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="also write the table and every probe as Markdown")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="robustact-probes-") as tmp:
        probes = Probes(Path(tmp))
        probes.run()
    text = table(probes.rows)
    print("\n" + text)
    if args.out:
        lines = [text, "| group | probe | outcome |", "|---|---|---|"]
        lines += [f"| {g} | {what} | {outcome} |" for g, what, outcome in probes.rows]
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0 if all(o == "clean" for *_, o in probes.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
