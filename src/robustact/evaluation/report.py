"""Evaluation reports: a table for the terminal, JSON with per-example results, Markdown for docs/."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robustact.attacks.result import EvalResult
from robustact.fileio import atomic_write_text


def format_table(result: EvalResult, title: str = "") -> str:
    acc = result.accuracy()
    width = max(len(k) for k in acc) + 2
    lines = [title] if title else []
    lines.append(f"{'attack':<{width}}{'accuracy':>10}{'seconds':>10}")
    for name, value in acc.items():
        secs = result.seconds.get(name)
        lines.append(f"{name:<{width}}{100 * value:>9.2f}%{'' if secs is None else f'{secs:>10.1f}'}")
    lines.append(f"(n = {result.n} test images, eps = {result.threat_model()})")
    if result.cascaded:
        lines.append(f"cascaded (run only on the examples robust to every attack above): {', '.join(result.cascaded)}")
    lines += agreement_lines(result)
    fired = [f for f in result.sanity if f["fired"]]
    if result.sanity:
        lines.append(f"sanity checks: {len(result.sanity) - len(fired)} passed, {len(fired)} flagged")
    lines += [f"  FLAG {f['name']}: {f['message']}" for f in fired]
    return "\n".join(lines)


def agreement_lines(result: EvalResult) -> list[str]:
    """robustact's AutoAttack vs the official one (`--official`), per example."""
    out = []
    for pair, a in result.meta.get("official_agreement", {}).items():
        differ = a["differ"]
        shown = ", ".join(map(str, differ[:10])) + (", ..." if len(differ) > 10 else "")
        out.append(f"{pair}: same outcome on {a['agree']} of {a['examples']} attacked examples"
                   + (f" (differ on test images {shown})" if differ else ""))
    return out


def format_markdown(result: EvalResult, title: str = "Evaluation", meta: dict | None = None) -> str:
    acc = result.accuracy()
    out = [f"# {title}", ""]
    for key, value in (meta or {}).items():
        out.append(f"- {key}: {value}")
    out += [f"- n: {result.n} (the first {result.n} test images)", f"- eps: {result.threat_model()}",
            f"- seed: {result.seed}"]
    if result.cascaded:
        out.append(f"- cascaded (run only on the examples robust to every attack above them; their accuracy is "
                   f"cumulative): {', '.join(result.cascaded)}")
    out += ["- " + line for line in agreement_lines(result)]
    out += ["", "| attack | accuracy (%) | seconds | settings |",
            "| --- | ---: | ---: | --- |"]
    for name, value in acc.items():
        secs = result.seconds.get(name)
        out.append(f"| {name} | {100 * value:.2f} | {'' if secs is None else f'{secs:.1f}'} "
                   f"| {result.attacks.get(name, '')} |")
    if result.sanity:
        out += ["", "## Sanity checks", "", "| check | flagged | value | what it suggests |",
                "| --- | --- | ---: | --- |"]
        out += [f"| {f['name']} | {'**yes**' if f['fired'] else 'no'} | {f['value']:.4g} | {f['message']} |"
                for f in result.sanity]
    return "\n".join(out) + "\n"


def result_from_report(data: dict) -> EvalResult:
    """The `EvalResult` a JSON report (`write_reports`) holds: per-example outcomes, attacks, timings, sanity."""
    per_example = data["per_example"]
    attacks = dict(data.get("attacks", {}))
    robust = {name: torch.tensor(per_example[name], dtype=torch.bool) for name in attacks}
    return EvalResult(n=int(data["n"]), eps=float(data["eps"]), norm=data.get("norm", "Linf"),
                      clean=torch.tensor(per_example["clean"], dtype=torch.bool), robust=robust,
                      seconds=dict(data.get("seconds", {})), attacks=attacks, seed=int(data.get("seed", 0)),
                      sanity=list(data.get("sanity", [])), cascaded=list(data.get("cascaded", [])),
                      meta=dict(data.get("meta", {})))


def write_reports(result: EvalResult, json_path: Path, meta: dict | None = None, title: str = "Evaluation",
                  settings: dict | None = None) -> None:
    """JSON (with per-example results, and the settings that decided them) and a Markdown twin next to it."""
    extra = {"meta": meta or {}} | ({"settings": settings} if settings is not None else {})
    atomic_write_text(json_path, json.dumps(result.to_json() | extra, indent=1))
    atomic_write_text(json_path.with_suffix(".md"), format_markdown(result, title, meta))
