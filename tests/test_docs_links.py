"""Every relative link in the README and docs/ names a file the repository ships: a table cell linking to a report
that is ignored by git (and so absent from a fresh clone) is a broken promise, not a result."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def shipped_files() -> set[str]:
    """Tracked files plus new ones git would add (not ignored); the file system where this is no git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts}
    return {line for line in out.splitlines() if (ROOT / line).exists()}


def test_relative_links_in_the_docs_resolve_to_shipped_files():
    shipped = shipped_files()
    folders = {str(p) for f in shipped for p in Path(f).parents}
    documents = sorted(f for f in shipped if f.endswith(".md") and (f == "README.md" or f.startswith("docs/")))
    assert "README.md" in documents and len(documents) > 5
    broken = []
    for document in documents:
        for target in LINK.findall((ROOT / document).read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            path = os.path.normpath(os.path.join(os.path.dirname(document), target.split("#")[0]))
            if path not in shipped and path not in folders:
                broken.append(f"{document}: {target}")
    assert not broken, f"{len(broken)} links name files a fresh clone lacks, e.g. {broken[:5]}"
