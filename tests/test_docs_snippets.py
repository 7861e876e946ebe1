"""The Python snippets of docs/tutorial.md marked ``<!-- test -->`` run against the e2e products.

The tutorial's snippets use the paths of its simulated night (``night/raw``, ``reduced/...``,
``cal/...``); the test lays those names out as links to the session's end-to-end night and runs
every marked block in order in one namespace, as a reader pasting them into one session would.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
MARKED_BLOCK = re.compile(r"<!-- test -->\s*\n```python\n(.*?)\n```", re.DOTALL)


def runnable_blocks(text: str) -> list[str]:
    """The code of every ```python block directly preceded by ``<!-- test -->``."""
    return MARKED_BLOCK.findall(text)


def test_marker_extraction_finds_only_marked_blocks():
    text = ("<!-- test -->\n```python\nx = 1\n```\n\n```python\nraise SystemExit\n```\n"
            "<!-- test -->\n\n```python\ny = 2\n```\n")
    assert runnable_blocks(text) == ["x = 1", "y = 2"]


def test_tutorial_has_runnable_snippets():
    blocks = runnable_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 5
    assert any("RawArchive" in b for b in blocks)
    assert any("h5netcdf" in b for b in blocks) and any("WCS(" in b for b in blocks)


@pytest.mark.e2e
def test_tutorial_snippets_run(e2e, tmp_path, monkeypatch, capsys):
    (tmp_path / "night").symlink_to(e2e["sim"], target_is_directory=True)
    (tmp_path / "reduced").symlink_to(e2e["out"], target_is_directory=True)
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "cal_20190822.h5").symlink_to(e2e["cal"])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__tutorial__"}
    for i, code in enumerate(runnable_blocks(TUTORIAL.read_text())):
        try:
            exec(compile(code, f"docs/tutorial.md snippet {i + 1}", "exec"), namespace)  # noqa: S102 (our own docs)
        except Exception as exc:  # name the snippet, keep the traceback
            raise AssertionError(f"tutorial snippet {i + 1} failed: {exc!r}\n{code}") from exc
    out = capsys.readouterr().out
    assert "20190822 0000007 sci" in out          # the listing found the science observation
    assert "nearest fiber: IFU slot" in out
    assert "1e-17 erg / (Angstrom s cm2)" in out  # BUNIT parsed by astropy.units
