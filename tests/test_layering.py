"""Layering: the package's import graph has no cycle (function-level and TYPE_CHECKING imports included),
only the command line, the config module and the run directory touch the composed (OmegaConf) config, and the
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
    """module -> the package's modules it imports anywhere in its file (module level, inside a function, or
    under `if TYPE_CHECKING:`: an import for annotations only is still a dependency, and a cycle through one
    is a cycle).

    `from perft_exp.a import b` is an edge to the module `perft_exp.a.b` when there is one, else to
    `perft_exp.a`. The parent packages that Python imports first are not edges: they are not what the module
    asked for."""
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


# The composed DictConfig is a run's identity and saved config: the command line composes it, config.py makes
# it the typed run spec (TrainConfig and its groups), run_dir.py checks and saves it. Every other module reads
# the typed spec, and so imports neither OmegaConf nor Hydra.
CONFIG_OWNERS = {"perft_exp.cli", "perft_exp.config", "perft_exp.run_dir"}
# The jobs of a multirun command line, by Hydra's override grammar: no config is composed or read there.
HYDRA_OVERRIDE_GRAMMAR = {"perft_exp.sweeps.grid"}
_CONFIG_NAMES = {"DictConfig", "ListConfig", "OmegaConf"}


def config_uses(tree: ast.Module) -> set[str]:
    """What a module uses of OmegaConf and Hydra: the packages it imports (`omegaconf`, `hydra`, anywhere in
    its file, under TYPE_CHECKING too) and the names DictConfig / ListConfig / OmegaConf it spells."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules, names = [a.name for a in node.names], []
        elif isinstance(node, ast.ImportFrom):
            modules, names = [node.module or ""], [a.name for a in node.names]
        elif isinstance(node, ast.Name):
            modules, names = [], [node.id]
        elif isinstance(node, ast.Attribute):
            modules, names = [], [node.attr]
        else:
            continue
        found |= {m.split(".")[0] for m in modules if m.split(".")[0] in ("omegaconf", "hydra")}
        found |= _CONFIG_NAMES.intersection(names)
    return found


def test_the_config_use_finder_finds_planted_uses():
    assert config_uses(ast.parse("from omegaconf import DictConfig")) == {"omegaconf", "DictConfig"}
    assert config_uses(ast.parse("def f(cfg: 'x', c: omegaconf.DictConfig): import hydra.utils")) == {
        "DictConfig",
        "hydra",
    }
    assert config_uses(ast.parse("if TYPE_CHECKING:\n    import omegaconf")) == {"omegaconf"}
    assert config_uses(ast.parse("spec.model.name; OmegaConf.to_container(cfg)")) == {"OmegaConf"}
    assert config_uses(ast.parse("from perft_exp.config import TrainConfig, compose_spec")) == set()


def test_only_the_command_line_the_config_and_the_run_directory_touch_the_composed_config():
    """Everything else takes the typed run spec (issue 27): no module below train() reads a DictConfig."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    assert CONFIG_OWNERS | HYDRA_OVERRIDE_GRAMMAR <= set(files)
    uses = {
        name: config_uses(ast.parse(path.read_text(), filename=str(path))) for name, path in files.items()
    }
    assert uses["perft_exp.config"] >= {
        "omegaconf",
        "hydra",
        "DictConfig",
        "OmegaConf",
    }  # the finder sees them
    allowed = {name: {"hydra"} for name in HYDRA_OVERRIDE_GRAMMAR}
    offending = {
        name: sorted(found - allowed.get(name, set()))
        for name, found in uses.items()
        if name not in CONFIG_OWNERS and found - allowed.get(name, set())
    }
    assert not offending, f"modules that use OmegaConf/Hydra besides {sorted(CONFIG_OWNERS)}: {offending}"


def test_the_run_directory_imports_and_keys_a_tiny_run_without_torch():
    """`import torch` fails in the child process: the package's __init__ (which registers PERFT with PEFT only
    once peft is imported), everything run_dir imports, at module level or in the functions called here (a
    tiny model's build key), must still import."""
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
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == ["ok"], r.stderr[-3000:]
