"""The shape of the package (ARCHITECTURE.md): cli → pipeline → stage packages → errors, one way, no cycles.

These tests read the source with :mod:`ast`, so they check every import, including those inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", "bench", ".venv", "build", "demo-output", ".git", ".ci"}
MAX_LINES = 700


def _package_dirs() -> list[Path]:
    return sorted(p.parent for p in ROOT.rglob("__init__.py")
                  if not (set(p.relative_to(ROOT).parts) & SKIP) and "egg-info" not in str(p))


def _modules() -> dict[str, Path]:
    """Dotted module name (``slidestream.tiling.tiler``) → file, for every library file."""
    out = {}
    for pkg in _package_dirs():
        for f in pkg.glob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("slidestream", *rel))
            out[name.removesuffix(".__init__")] = f
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def _imports() -> dict[str, set[str]]:
    """Module → the slidestream modules it imports (at any depth of the file, TYPE_CHECKING blocks aside)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, path.name == "__init__.py", node)
                candidates = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                if c in mods and c != name:
                    deps.add(c)
                    break
        graph[name] = deps
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_root_holds_only_the_package_init_and_the_errors():
    loose = sorted(p.name for p in ROOT.glob("*.py"))
    assert loose == ["__init__.py", "errors.py"]


def test_no_import_cycle_between_files():
    assert _cycles(_imports()) == []


def test_no_import_cycle_between_top_level_packages():
    graph: dict[str, set[str]] = {}
    for mod, deps in _imports().items():
        graph.setdefault(_top(mod), set()).update(_top(d) for d in deps if _top(d) != _top(mod))
    assert _cycles(graph) == []


def test_nothing_imports_the_cli_and_no_stage_imports_the_orchestration():
    bad = []
    for mod, deps in _imports().items():
        for d in deps:
            if _top(d) == "cli" and _top(mod) != "cli":
                bad.append(f"{mod} imports {d}")
            if _top(d) == "pipeline" and _top(mod) not in ("pipeline", "cli"):
                bad.append(f"{mod} imports {d}")
    assert bad == []


def test_errors_import_nothing_of_ours():
    assert _imports()["slidestream.errors"] == set()


def test_no_library_file_is_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_package_is_installed():
    # a subpackage missing from pyproject would import from the source tree and break in a wheel
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("slidestream", *p.relative_to(ROOT).parts)) if p != ROOT else "slidestream"
             for p in _package_dirs()}
    assert listed == found


def test_code_cites_no_file_outside_the_repository():
    cited = [f"{p.relative_to(ROOT)}" for p in _modules().values() if "shared/docs" in p.read_text()]
    assert cited == []


@pytest.mark.parametrize("command", [["encoders"], ["--help"], ["tile", "--help"]])
def test_light_commands_do_not_load_torch(command):
    code = ("import sys; from click.testing import CliRunner; from slidestream.cli.main import main; "
            f"r = CliRunner().invoke(main, {command!r}); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_readme_and_architecture_describe_every_package_and_only_those():
    packages = {p.relative_to(ROOT).parts[0] for p in _package_dirs() if p != ROOT}
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 1)]
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    for text, where in ((layout, "README layout"), (architecture, "ARCHITECTURE.md")):
        named = {m for m in __import__("re").findall(r"`([a-z_]+)/`", text)}
        assert packages <= named, f"{where} misses {sorted(packages - named)}"
        assert named - packages <= {"tests", "bench"}, f"{where} names folders that are not there"
