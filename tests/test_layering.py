"""Layering: the package's import graph has no cycle (function-level and TYPE_CHECKING imports included), and the
run directory module stays torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "perft_exp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (module level, inside a function, or under
    `if TYPE_CHECKING:`: an import for annotations only is still a dependency, and a cycle through one is a cycle).

    `from perft_exp.a import b` is an edge to the module `perft_exp.a.b` when there is one, else to `perft_exp.a`.
    The parent packages that Python imports first are not edges: they are not what the module asked for."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path `[a, b, ..., a]`, or None (depth-first search with a stack of the current path)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path, stack = [start], {start}, [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_level_relative_and_annotation_only_imports():
    graph = import_graph()
    assert "perft_exp.adapters.config" in graph["perft_exp.run_dir"]  # imported inside a function
    assert "perft_exp.models.tiny_spec" in graph["perft_exp.run_dir"]
    assert "perft_exp.adapters.routing" in graph["perft_exp.adapters.layer"]
    assert "perft_exp.models.arch" in graph["perft_exp.adapters.config"]  # under TYPE_CHECKING only


def test_the_package_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_run_directory_imports_and_keys_a_tiny_run_without_torch():
    """`import torch` fails in the child process: the package's __init__ (which registers PERFT with PEFT only
    once peft is imported), everything run_dir imports, at module level or in the functions called here (a tiny
    model's build key), must still import."""
    code = """
import sys
sys.modules["torch"] = None
from omegaconf import OmegaConf
import perft_exp.run_dir as run_dir
cfg = OmegaConf.create({"model": {"pretrained": "tiny:tiny_olmoe"}, "perft": {"variant": "R"}})
ident = run_dir.run_identity(cfg)
assert ident["tiny_build"], ident
assert "torch" not in [m for m, v in sys.modules.items() if v is not None], "torch was imported"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
