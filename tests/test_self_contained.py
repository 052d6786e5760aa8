"""A clone is all a user has: nothing in the repository may read files from beside it
(the steering folder `../shared` exists on the developers' machines and in CI, not in a clone)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `../shared`, `parent / "shared"`, `"shared" / "spec"`, `parents[2] / "shared"` and the like
OUTSIDE = re.compile(r"""\.\./shared\b|\bparents?(\[\d+\])?\s*/\s*["']shared["']|["']shared["']\s*/\s*["']spec["']""")


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode == 0:
        return [REPO / line for line in listed.stdout.splitlines() if line]
    return [p for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts]


def test_the_pattern_catches_what_it_must():
    for text in ['Path("../shared/spec/x.yaml")', 'REPO.parent / "shared" / "spec"', "root.parents[1] / 'shared'",
                 'cat ../shared/DESIGN.md']:
        assert OUTSIDE.search(text), text
    assert not OUTSIDE.search('REPO / "tests" / "spec" / "openai-openapi.yaml"')


def test_no_file_reads_outside_the_clone():
    offenders = []
    for path in repository_files():
        if path == Path(__file__).resolve() or not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                      for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, "files that reach outside the repository:\n" + "\n".join(offenders)


def test_the_spec_is_in_the_repository(monkeypatch):
    from tests.spec_validator import REPO_ROOT, spec_path
    monkeypatch.delenv("GPTSERVE_SPEC", raising=False)
    assert REPO_ROOT == REPO
    path = spec_path()
    assert path.is_file() and REPO in path.resolve().parents, path
