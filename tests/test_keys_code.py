"""The code part of the checkpoint keys covers every module a stored stage runs."""

from __future__ import annotations

import ast
from pathlib import Path

import remedy_dask
from remedy_dask.io.digest import AMP_CODE, SKY_CODE, code_digest

ROOT = Path(remedy_dask.__file__).parent


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    if not parts:
        return None  # the package's __init__: its version string changes no result
    rel = Path(*parts)
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """remedy_dask modules imported by ``path`` anywhere in it (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("remedy_dask"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("remedy_dask")}
    return out


def _closure(start: str) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += sorted(_imports(path))
    return seen


def _covered(path: Path, parts: tuple[str, ...]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return rel.endswith("__init__.py") or any(rel == p or rel.startswith(p + "/") for p in parts)


def test_every_module_the_amp_chain_imports_is_in_its_key():
    chain = _closure("remedy_dask.workflow.amp_chain") | _closure("remedy_dask.workflow.amp_graph")
    missing = [p.relative_to(ROOT).as_posix() for p in chain if not _covered(p, AMP_CODE)]
    assert missing == []


def test_every_module_the_sky_imports_is_in_its_key():
    missing = [p.relative_to(ROOT).as_posix() for p in _closure("remedy_dask.workflow.exposure")
               if not _covered(p, SKY_CODE)]
    assert missing == []


def test_the_observation_stage_is_not_in_the_checkpoint_keys():
    for parts in (AMP_CODE, SKY_CODE):
        assert all((ROOT / p).exists() for p in parts), parts
        assert not any(p.startswith(("observation", "workflow/observation", "workflow/finalize",
                                     "qa")) for p in parts)
    assert code_digest(AMP_CODE) != code_digest(SKY_CODE) != code_digest()
