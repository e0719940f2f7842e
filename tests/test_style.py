"""The house style holds: ruff's lint and format, and mypy on the modules that carry the models, the profile,
the plan's catalogue and the result store (pyproject.toml's [tool.mypy] files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_and_format():
    lint = _run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = _run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout[-3000:]


def test_mypy_on_models_profile_plan_and_store():
    r = _run("mypy")
    assert r.returncode == 0, r.stdout[-3000:]


def _imports(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its body (lazy imports count: a cycle is a cycle)."""
    import ast

    mods: dict[str, set[str]] = {}
    for pkg in packages:
        for f in (root / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            deps: set[str] = set()
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps.add(node.module)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names)
            mods[name] = deps
    return {m: {d for d in deps if d in mods} for m, deps in mods.items()}


def test_no_import_cycles():
    """Data flows one way (profile → provision → load → ingest → evaluate → decide → notify): no module
    imports, even lazily, a module that imports it back."""
    graph = _imports(ROOT, ("soundcheck", "tasks", "flows", "infra"))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, " ; ".join(" → ".join(c) for c in cycles)


#: Test files that test the project as a whole rather than one module.
PROJECT_TESTS = {"test_docs.py", "test_style.py"}


def _tested_module(test: Path) -> Path | None:
    """tests/<package path>/test_<module>[_<aspect>].py → <package path>/<module>.py (the longest module name
    that prefixes the file's), or None when no module of that package fits."""
    package = ROOT / test.parent.relative_to(ROOT / "tests")
    name = test.stem.removeprefix("test_")
    fits = [m for m in package.glob("*.py") if name == m.stem or name.startswith(m.stem + "_")]
    return max(fits, key=lambda m: len(m.stem)) if fits else None


def test_test_files_mirror_the_modules():
    """Where a module's tests live is its path: tests/tasks/test_safety_abort.py tests tasks/safety.py (its abort
    watcher), tests/infra/sut/test_app.py tests infra/sut/app.py."""
    tests = [
        p for p in (ROOT / "tests").rglob("test_*.py") if p.relative_to(ROOT / "tests").as_posix() not in PROJECT_TESTS
    ]
    assert len(tests) > 50
    orphans = [t.relative_to(ROOT).as_posix() for t in tests if _tested_module(t) is None]
    assert not orphans, f"test files that name no module: {orphans}"
