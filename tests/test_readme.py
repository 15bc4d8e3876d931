"""The README and docs/ as executable documentation: every command of their ```bash blocks runs, shrunk, and
gives the documented result or a one-line error.

    python -m pytest tests/test_readme.py -q        # the coverage check is fast; running the blocks is `slow`
    python -m pytest tests/test_readme.py -q -k toy_sweep   # one page's blocks, after the blocks before them

Every command line of every ```bash block must have an entry in COMMANDS (the fast test fails otherwise, so a
page edit that adds or changes a command fails until its expected result is written down here). Commands that
need a network or a GPU go in ```text blocks, which are not run. The blocks run in order (the README's, then
each docs/ page's in name order), in one scratch directory (`train.py`, `scripts/` linked in; `outputs/`
starts empty), with these shrinks, and no others:

- `python train.py ...`, `make demo` and the sweeps get SHRINK appended: `trainer=debug` (8 steps),
  `logger=none`, `model.pretrained=<a micro OLMoE built in seconds>`, `task.max_train_examples=32`,
  `task.max_test_examples=2`. Commands on the real models (olmoe_1b_7b, mixtral_8x7b) are not shrunk:
  without their data or a network they must fail in one line, and that is what they assert.
- `torchrun ... train.py` and `deepspeed ... train.py` run as `python train.py` (`--local_rank=0` for
  deepspeed, as its launcher passes it); tests/test_app.py runs torchrun and ZeRO-2/3 for real.
- `sweep.py run toy` runs a two-job miniature of sweeps/toy.yaml (its fixed part, env and run names; one
  R block over seeds 0 and 1) instead of its 45 jobs.
- `<task>/<model>/<run>` placeholders become the run the block before trained; fetch_data.py gets
  `--base-url` of a closed local port; the Hugging Face endpoint is a closed local port too, so no command
  can reach a network even where there is one.
- `scripts/peft_example.py` gets `--model=<the micro OLMoE>`.
- `scripts/bench.py --eval`, `--generate` and `--base 4bit ...` run as `--quick --cases R_top2of4_r16` (the
  frozen model and one case, two rounds; `--compile` stays; for `--base`, the page's `--cases`/`--rounds` are
  dropped).
- `make test` is this suite: only its Makefile recipe is checked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO
from test_sweeps import shrink, toy_miniature

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port


@dataclass(frozen=True)
class Expect:
    ok: bool = True  # exit code 0; else a non-zero exit with exactly one `error:` line and no traceback
    says: str = ""  # in stdout (ok) or in the error line
    shrink: bool = False  # append SHRINK (train.py and sweep runs on the embedded default)


def ok(says: str = "", shrink: bool = False) -> Expect:
    return Expect(True, says, shrink)


def error(says: str) -> Expect:
    return Expect(False, says)


NO_DATA = "task.data_dir='data/llm_adapters' does not exist"
COMMANDS = {
    # Set-up
    "make demo": ok("R (Top2/4) [adapter] r16 on tiny_olmoe / synthetic_commonsense", shrink=True),
    "make test": ok(),
    # Running experiments
    "python train.py variant=R perft.num_experts=4 perft.top_k=2 perft.bottleneck=16": ok(
        "R (Top2/4) [adapter] r16", True
    ),
    "python train.py variant=E perft.bottleneck=8": ok("E (Top2/8) [adapter] r8", shrink=True),
    "python train.py variant=qv_lora perft.bottleneck=16": ok("qv-LoRA r16", shrink=True),
    "python train.py variant=none": ok("base model on tiny_olmoe", shrink=True),
    "python train.py seed=1": ok("R-n4-k2-r16-adapter-s1-", shrink=True),
    "python train.py task=synthetic_math eval.mode=greedy": ok("on tiny_olmoe / synthetic_math", shrink=True),
    "python scripts/count_params.py model=olmoe_1b_7b variant=R perft.num_experts=4 perft.top_k=2 "
    "perft.bottleneck=16": ok('"config": "R (Top2/4) r16"'),
    "python scripts/evaluate.py run_dir=outputs/runs/<task>/<model>/<run> eval.mode=paper": ok("written to"),
    # Real models and data
    "python scripts/fetch_data.py --what all": error("cannot download"),
    "python train.py model=olmoe_1b_7b task=commonsense trainer=olmoe variant=R perft.num_experts=8 "
    "perft.top_k=2": error(NO_DATA),
    "torchrun --nproc_per_node 8 train.py model=mixtral_8x7b task=commonsense trainer=mixtral "
    "deepspeed=zero3 variant=E perft.bottleneck=8": error(NO_DATA),
    "deepspeed --num_gpus 8 train.py model=mixtral_8x7b trainer=mixtral deepspeed=zero2": error(
        "model.pretrained='mistralai/Mixtral-8x7B-v0.1' is not in the local Hugging Face cache"
    ),
    "python train.py model=mixtral_8x7b task=commonsense trainer=mixtral model.quantization=4bit "
    "variant=R": error(NO_DATA),
    # Sweeps
    "python scripts/sweep.py list": ok("olmoe_commonsense       100 jobs"),
    "python scripts/sweep.py show olmoe_commonsense": ok(
        "olmoe_commonsense: 100 jobs, all compose and validate"
    ),
    "python scripts/sweep.py show olmoe_commonsense_authors": ok(
        "olmoe_commonsense_authors: 100 jobs, all compose and validate"
    ),
    "python scripts/sweep.py status olmoe_commonsense": ok("olmoe_commonsense: 100 pending"),
    "python scripts/sweep.py run toy": ok("toy: 2 finished", shrink=True),
    "python scripts/sweep.py run olmoe_math --launcher slurm --partition gpu --timeout-min 1440": error(
        "olmoe_math: 52 jobs cannot run: " + NO_DATA
    ),
    "python scripts/sweep.py run toy --launcher slurm --slurm-local trainer=debug": ok(
        "toy: 2 finished", True
    ),
    "python scripts/sweep.py run olmoe_commonsense --launcher gpus --gpus 0,1,2,3,4,5,6,7": error(
        "olmoe_commonsense: 100 jobs cannot run: " + NO_DATA
    ),
    "python scripts/sweep.py run mixtral_math --launcher gpus --gpus 0,1,2,3,4,5,6,7 --gpus-per-job 4 "
    "deepspeed=zero3": error("mixtral_math: 3 jobs cannot run: " + NO_DATA),
    # Compare two variants on the miniature
    "python train.py -m variant=R,E seed=0,1,2 output_root=outputs/compare": ok(shrink=True),
    "python scripts/collect_results.py outputs/compare/runs --out outputs/compare/report": ok(
        "outputs/compare/report/paired.md"
    ),
    # docs/miniature.md: the miniature on a 4-bit base
    "python train.py -m model.quantization=none,4bit seed=0,1,2 output_root=outputs/q4": ok(shrink=True),
    "python scripts/collect_results.py outputs/q4/runs --out outputs/q4/report": ok(
        "outputs/q4/report/paired.md"
    ),
    # From finished runs to tables and figures
    "python scripts/collect_results.py outputs/runs --out outputs/report": ok("outputs/report/results.md"),
    "python scripts/collect_results.py outputs/runs/synthetic_commonsense/tiny_olmoe --runs 'toy-*' "
    "--out outputs/report/toy": ok("outputs/report/toy/results.md"),
    "python scripts/analyze_routing.py run_dir=outputs/runs/synthetic_commonsense/tiny_olmoe runs='toy-*' "
    "out=outputs/routing/toy": ok(),
    # W&B dashboards (the upload commands above them need an account and a network: a ```text block)
    "python scripts/wandb_dashboard.py --sweep toy --entity ENTITY --project perft-exp": error(
        "saving to W&B needs an API key"
    ),
    "python scripts/wandb_dashboard.py --sweep toy --dry-run --out outputs/dashboards/toy": ok("report:"),
    "python scripts/wandb_dashboard.py --sweep toy --check": error(
        "none of the sweep's runs has an offline W&B run"
    ),
    # Use PERFT in your own code
    "python scripts/peft_example.py": ok("reloaded with equal logits"),
    # docs/benchmarks.md
    "python scripts/bench.py --base 4bit --json outputs/bench/cpu_olmoe_mini_4bit.json": ok(
        "the 4-bit frozen step takes"
    ),
    "python scripts/bench.py --base 4bit --gradient-checkpointing --cases R_top2of4_r16 E_r16 --rounds 7 "
    "--json outputs/bench/cpu_olmoe_mini_4bit_gc.json": ok("PASS  4-bit experts' bytes"),
    "python scripts/bench.py --eval --json outputs/bench/cpu_olmoe_mini.json": ok(
        "wrote outputs/bench/cpu_olmoe_mini.json"
    ),
    "python scripts/bench.py --generate --compile --no-memory --json outputs/bench/cpu_generate.json": ok(
        "wrote outputs/bench/cpu_generate.json"
    ),
    "python scripts/bench.py --model olmoe_mini_wide --generate "
    "--json outputs/bench/cpu_olmoe_mini_wide.json": ok("wrote outputs/bench/cpu_olmoe_mini_wide.json"),
    # docs/extending.md
    "python scripts/count_params.py model=qwen3_moe_30b_a3b variant=E perft.bottleneck=8": ok(
        '"config": "E (Top8/128) r8"'
    ),
    "python scripts/count_params.py model=olmoe_1b_7b variant=R perft.top_p=0.5": ok(
        '"config": "R (Top2/4) [top-p=0.5] r16"'
    ),
    "python scripts/sweep.py show toy_top_p": ok("toy_top_p: 6 jobs, all compose and validate"),
    "python scripts/sweep.py show bottleneck_ablation": ok(
        "bottleneck_ablation: 6 jobs, all compose and validate"
    ),
    # docs/method.md
    "python scripts/count_params.py model=olmoe_1b_7b variant=S perft.bottleneck=16": ok(
        '"config": "S (1) r16"'
    ),
    # docs/miniature.md
    "python train.py": ok("R (Top2/4) [adapter] r16 on tiny_olmoe / synthetic_commonsense", shrink=True),
    "python train.py model=tiny_olmoe_random": ok(
        "on tiny_olmoe_random / synthetic_commonsense", shrink=True
    ),
    "python train.py perft.form=lora": ok("R (Top2/4) r16 on tiny_olmoe", shrink=True),
    # docs/protocol.md
    "python scripts/sweep.py show olmoe_math_authors": ok(
        "olmoe_math_authors: 52 jobs, all compose and validate"
    ),
    "python train.py model=olmoe_1b_7b task=commonsense trainer=olmoe eval=paper eval.protocol=authors "
    "task.prompt=authors variant=R perft.authors_weighting_defect=true perft.router_init=authors "
    "perft.router_dtype=model": error(NO_DATA),
    # docs/toy_sweep.md
    "python scripts/sweep.py run toy --jobs 2": ok("toy: 2 finished", shrink=True),
    "python scripts/sweep.py run toy perft.form=adapter --jobs 2": ok("toy: 2 finished", shrink=True),
}


def page_blocks(page: Path) -> list[list[str]]:
    """The command lines of each ```bash block of a page, comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    return [[re.split(r"\s+#", line)[0].strip() for line in b.splitlines() if line.strip()] for b in blocks]


def readme_blocks() -> list[list[str]]:
    """The command blocks of the README, then of each docs/ page, in the order they run."""
    return [block for page in PAGES for block in page_blocks(page)]


def _block_ids() -> list[str]:
    return [f"{page.stem}-{i}-{b[0].split()[1]}" for page in PAGES for i, b in enumerate(page_blocks(page))]


def test_the_docs_pages_have_command_blocks_that_are_run():
    """Every docs/ page linked from the README exists,
    and the blocks of README and docs/ are all collected."""
    linked = set(re.findall(r"\(docs/([\w.]+\.md)[#)]", README.read_text()))
    assert linked == {p.name for p in PAGES[1:]}, linked
    assert len(readme_blocks()) == len(_block_ids()) > len(page_blocks(README))


def test_every_readme_command_has_an_expected_result():
    commands = [c for block in readme_blocks() for c in block]
    assert sorted(set(commands)) == sorted(COMMANDS), (
        "README commands without an entry here: "
        f"{sorted(set(commands) - set(COMMANDS))}; entries no longer in the README: "
        f"{sorted(set(COMMANDS) - set(commands))}"
    )


def test_make_targets_named_in_the_readme_run_what_they_say():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/python train\.py\n", makefile, flags=re.M)
    assert re.search(r"^test:.*\n\t\$\(PYTEST\)\n", makefile, flags=re.M)
    # the whole suite, in processes that each take whole test files (a file's tests may build on each other)
    pytest = r"^PYTEST := .*\$\(BIN\)/python -m pytest -q -n \S+ --dist loadfile --no-loadscope-reorder$"
    assert re.search(pytest, makefile, flags=re.M)
    assert re.search(r'pip install --quiet -e "\.\[dev\]"', makefile)


# --- running the blocks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    for name in ("train.py", "scripts"):
        (work / name).symlink_to(REPO / name)
    toy_miniature(work / "toy.yaml")
    return work


def _argv(command: str, workdir: Path, micro: Path) -> list[str]:
    """The shrunk command line (see the module docstring)."""
    expect = COMMANDS[command]
    argv = shlex.split(command)
    if argv[:2] == ["make", "demo"]:
        argv = ["python", "train.py"]
    elif argv[0] in ("torchrun", "deepspeed"):
        launcher, argv = argv[0], ["python", *argv[argv.index("train.py") :]]
        if launcher == "deepspeed":
            argv.insert(2, "--local_rank=0")
    if argv[:3] == ["python", "scripts/sweep.py", "run"] and argv[3] == "toy":
        argv[3] = str(workdir / "toy.yaml")
    if argv[:2] == ["python", "scripts/peft_example.py"]:
        argv += [f"--model={micro}"]
    if argv[:2] == ["python", "scripts/fetch_data.py"]:
        argv += ["--base-url", CLOSED + "/{ref}/"]
    if argv[:2] == ["python", "scripts/bench.py"] and ("--eval" in argv or "--generate" in argv):
        argv = [a for a in argv if a != "--eval"] + ["--quick", "--cases", "R_top2of4_r16"]
    if argv[:2] == ["python", "scripts/bench.py"] and "--base" in argv:
        cut = [i for i, a in enumerate(argv) if a in ("--cases", "--rounds")]
        keep = argv[: min(cut)] + argv[argv.index("--json") :] if cut else argv
        argv = keep + ["--quick", "--cases", "R_top2of4_r16"]
    if any("<run>" in a for a in argv):
        runs = (workdir / "outputs/runs/synthetic_commonsense/tiny_olmoe").iterdir()
        # the shrunk default
        (trained,) = [d for d in runs if re.fullmatch(r"R-n4-k2-r16-adapter-[0-9a-f]{6}", d.name)]
        argv = [
            a.replace("outputs/runs/<task>/<model>/<run>", str(trained.relative_to(workdir))) for a in argv
        ]
    if expect.shrink:
        argv += [a for a in shrink(micro) if not (a == "trainer=debug" and a in argv)]
    return [sys.executable if a == "python" else a for a in argv]


def _check(command: str, r: subprocess.CompletedProcess) -> None:
    expect = COMMANDS[command]
    tail = f"\n$ {command}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    if expect.ok:
        assert r.returncode == 0, tail
        assert expect.says in r.stdout, tail
        return
    assert r.returncode != 0, tail
    errors = re.findall(r"error: [^\r\n]*", r.stderr)
    assert len(errors) == 1 and expect.says in errors[0], tail
    assert "Traceback" not in r.stderr, tail


def _after(command: str, workdir: Path) -> None:
    """What a command leaves behind, beyond its output."""
    if command.startswith("python scripts/collect_results.py outputs/runs/synthetic_commonsense/tiny_olmoe"):
        report = workdir / "outputs" / "report" / "toy"
        assert "R (Top2/4) {trainer=debug" in (report / "results.md").read_text()  # shrunk runs are marked
        assert (report / "paired.csv").is_file() and (report / "paired.md").is_file()
    if command.startswith("python scripts/collect_results.py outputs/compare"):
        paired = (workdir / "outputs" / "compare" / "report" / "paired.md").read_text()
        assert "R (Top2/4)" in paired and "E (Top" in paired, paired
    if command.startswith("python scripts/analyze_routing.py"):
        assert os.listdir(workdir / "outputs" / "routing" / "toy")


BLOCKS = readme_blocks()
_DONE: set[int] = set()  # blocks already run in this session's scratch directory


def _run_block(index: int, workdir: Path, micro: Path, env: dict) -> None:
    for command in BLOCKS[index]:
        if command == "make test":
            continue  # this suite; test_make_targets_named_in_the_readme_run_what_they_say checks its recipe
        r = subprocess.run(
            _argv(command, workdir, micro), cwd=workdir, env=env, capture_output=True, text=True, timeout=900
        )
        _check(command, r)
        _after(command, workdir)
    _DONE.add(index)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=_block_ids())
def test_readme_block(index, workdir, micro_model_dir, app_env):
    """A block runs after every block before it (run first here when a selection skipped them)."""
    env = {**app_env, "HF_ENDPOINT": CLOSED}
    env.pop("WANDB_API_KEY", None)  # the dashboard save must fail for want of a key
    for earlier in range(index + 1):
        if earlier not in _DONE:
            _run_block(earlier, workdir, micro_model_dir, env)
