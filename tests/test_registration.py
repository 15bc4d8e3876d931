"""PERFT is registered with PEFT whatever the import order, and in processes that never import perft_exp
(the start-up line `_perft_exp.pth`, _perft_exp.py). Every order runs in a fresh interpreter: an import
order cannot be tested inside a process that has already imported something."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import perft_exp
from perft_exp.adapters.layer import perft_layers

REPO = Path(__file__).resolve().parents[1]
PTH_LINE = "import _perft_exp; _perft_exp.install()"
# Takes the start-up finder off again: the process then behaves as one where perft-exp is not installed but
# importable (a checkout on sys.path), so `import perft_exp` alone has to arm the registration.
NO_STARTUP_HOOK = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_RegisterAfterPeft']"
)
CHECK = (
    "import peft.mapping as m; assert m.PEFT_TYPE_TO_CONFIG_MAPPING['PERFT'].__name__ == 'PerftPeftConfig'; "
    "print('ok')"
)
# name -> (the import order as a user types it, whether the start-up finder is taken off first)
ORDERS = {
    "from_perft_exp_import_PerftConfig": (
        "from perft_exp import PerftConfig; PerftConfig(variant='R')",
        True,
    ),
    "import_perft_exp_then_attribute": ("import perft_exp; perft_exp.PerftConfig(variant='R')", True),
    "star_import": ("from perft_exp import *; PerftConfig(variant='R')", True),
    "peft_first": ("import peft; import perft_exp; perft_exp.PerftConfig(variant='R')", True),
    "transformers_first": (
        "import transformers; from transformers import AutoModelForCausalLM; "
        "from perft_exp import PerftConfig; PerftConfig(variant='R')",
        True,
    ),
    "trl_first": ("import trl; from trl import SFTTrainer; import perft_exp; perft_exp.PerftConfig()", True),
    "peft_alone_with_the_startup_line": ("import peft", False),
}


def _python(code: str, cwd: str) -> tuple[str, str]:
    """(the last line of stdout, stderr) of `python -c code` in a fresh interpreter: the code's answer comes
    last, after whatever a library printed (transformers' wandb integration announces WANDB_MODE)."""
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    lines = r.stdout.strip().splitlines()
    return (lines[-1] if lines else ""), r.stderr


# Each costs a fresh interpreter's import of torch and peft (about 6 s): the reported failure (the first) and
# the start-up line alone run in the fast tests, the others with the end-to-end runs.
FAST = {"from_perft_exp_import_PerftConfig", "peft_alone_with_the_startup_line"}


@pytest.mark.parametrize(
    "order", [o if o in FAST else pytest.param(o, marks=pytest.mark.slow) for o in sorted(ORDERS)]
)
def test_every_import_order_registers_perft(order):
    code, strip = ORDERS[order]
    out, err = _python(f"{NO_STARTUP_HOOK}\n{code}\n{CHECK}" if strip else f"{code}\n{CHECK}", cwd="/")
    assert out == "ok", err[-3000:]


def _site_packages_pth() -> Path | None:
    import site

    for d in site.getsitepackages():
        if (Path(d) / "_perft_exp.pth").is_file():
            return Path(d) / "_perft_exp.pth"
    return None


def test_the_startup_line_is_installed_and_imports_nothing_heavy():
    pth = _site_packages_pth()
    if pth is None:
        pytest.skip("perft-exp is not installed in this interpreter (make install)")
    assert pth.read_text().strip() == PTH_LINE
    code = (
        "import sys; heavy = ('torch', 'peft', 'transformers', 'perft_exp');"
        "print(sorted(m for m in heavy if m in sys.modules));"
        "print(any(type(f).__name__ == '_RegisterAfterPeft' for f in sys.meta_path))"
    )
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[]", "True"]
    # `-X importtime` lines: "import time: self [us] | cumulative | name"; the module costs ~0.2-2 ms
    (line,) = [ln for ln in r.stderr.splitlines() if ln.split("|")[-1].strip() == "_perft_exp"]
    assert int(line.split("|")[1]) < 10_000, line


def test_a_tool_that_never_imports_perft_exp_loads_a_perft_adapter(micro_model_dir, tmp_path):
    """AutoPeftModelForCausalLM in a process whose code never names perft_exp: equal logits."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    if _site_packages_pth() is None:
        pytest.skip("perft-exp is not installed in this interpreter (make install)")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(micro_model_dir),
        perft_exp.PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=4),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (p for layer in perft_layers(model) for p in layer.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        torch.save(model.eval()(input_ids=ids).logits, tmp_path / "ref.pt")
    model.save_pretrained(tmp_path / "adapter")
    code = f"""
import sys
assert "perft_exp" not in sys.modules
import torch
torch.set_num_threads({torch.get_num_threads()})  # the reference's: threads set the order of float sums
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / "adapter")!r}).eval()
with torch.no_grad():
    out = model(input_ids=torch.tensor({ids.tolist()})).logits
torch.testing.assert_close(out, torch.load({str(tmp_path / "ref.pt")!r}), atol=0, rtol=0)
print(type(model.base_model).__name__)
"""
    out, err = _python(code, cwd=str(tmp_path))
    assert out == "PerftModel", err[-3000:]


def _build(tmp_path: Path, hook: str) -> Path:
    """Build a wheel of a copy of the project through setuptools' PEP 517 hook `hook`."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "perft_exp", src / "perft_exp", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "_perft_exp.py", "_perft_exp.pth", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path / "dist"
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / r.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("hook", ["build_wheel", "build_editable"])
def test_both_kinds_of_install_ship_the_startup_line(hook, tmp_path):
    """`pip install .` installs a wheel, `pip install -e .` an editable wheel: both carry the line at the top
    of site-packages, listed in RECORD (so pip uninstall removes it)."""
    with zipfile.ZipFile(_build(tmp_path, hook)) as whl:
        assert whl.read("_perft_exp.pth").decode().strip() == PTH_LINE
        record = next(n for n in whl.namelist() if n.endswith(".dist-info/RECORD"))
        assert "_perft_exp.pth," in whl.read(record).decode()
        if hook == "build_wheel":
            assert "_perft_exp.py" in whl.namelist()
        else:  # the editable finder maps the top-level module to the checkout
            finder = next(n for n in whl.namelist() if n.endswith("_finder.py"))
            assert "'_perft_exp':" in whl.read(finder).decode()
