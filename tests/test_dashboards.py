"""W&B dashboards as code: the metric schema, the dry-run specs, and an offline run that feeds every panel."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from conftest import REPO, run_train

from perft_exp import metric_schema as schema
from perft_exp.analysis import dashboards
from perft_exp.analysis.offline_runs import read_offline_run
from perft_exp.config import compose

_spec = importlib.util.spec_from_file_location("wandb_dashboard_cli", REPO / "scripts" / "wandb_dashboard.py")
dashboard_cli = sys.modules["wandb_dashboard_cli"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dashboard_cli)

TOY_SETS = [s for s in compose(["task=synthetic_commonsense"]).task.test_sets]


def _history_keys() -> list[schema.Key]:
    found = [v for v in vars(schema).values() if isinstance(v, schema.Key) and v.where == "history"]
    return found + [schema.routing_mean(stat) for stat in schema.ROUTING_STATS]


def test_trainer_names_are_what_hf_renames_to_the_schema_keys():
    from transformers.integrations.integration_utils import rewrite_logs

    for key in _history_keys():
        assert rewrite_logs({schema.trainer_name(key): 1.0}) == {key.name: 1.0}


def _declared(where: str, key: str) -> bool:
    """Is (where, key) a name metric_schema declares? (keys, key builders and regexes)."""
    keys = {
        (k.where, k.name) for k in [*vars(schema).values(), *_history_keys()] if isinstance(k, schema.Key)
    }
    sets = [*TOY_SETS, "average"]
    keys |= {("summary", schema.result_key(s, m)) for s in sets for m in schema.SET_METRICS}
    keys |= {("summary", schema.base_key(s)) for s in sets}
    regexes = {schema.routing_layers_regex(stat) for stat in schema.ROUTING_STATS} | {schema.LOAD_SHARE_REGEX}
    return (where, key) in keys or (where == "history-regex" and key in regexes)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboards")
    assert dashboard_cli.main(["--sweep", "toy", "--dry-run", "--out", str(out)]) == 0
    return out


def test_dry_run_writes_both_specs_in_the_librarys_own_format(specs):
    workspace = dashboards.load_workspace(specs / "workspace.json")
    report = dashboards.load_report(specs / "report.json")
    assert isinstance(workspace, ws.Workspace) and isinstance(report, wr.Report)
    assert [s.name for s in workspace.sections] == ["Training", "Evaluation", "Routing", "Efficiency"]
    assert [g.name for g in workspace.runset_settings.groupby] == [schema.SWEEP.name, schema.VARIANT.name]
    # Loading and saving again reproduces the report byte for byte.
    assert dashboards.report_json(report) == (specs / "report.json").read_text().strip()


def test_every_key_a_panel_reads_is_declared_in_the_schema(specs):
    for path, load in (
        ("workspace.json", dashboards.load_workspace),
        ("report.json", dashboards.load_report),
    ):
        keys = dashboards.referenced_keys(load(specs / path))
        assert keys, path
        assert [k for k in keys if not _declared(*k)] == [], path


def test_workspace_spec_loads_back_with_the_same_panels(specs):
    built = dashboards.workspace("ENTITY", "perft-exp", TOY_SETS)
    loaded = dashboards.load_workspace(specs / "workspace.json")
    assert dashboards.referenced_keys(loaded) == dashboards.referenced_keys(built)
    for a, b in zip(built.sections, loaded.sections):
        assert [(type(p), getattr(p, "title", None)) for p in a.panels] == [
            (type(p), getattr(p, "title", None)) for p in b.panels
        ]


def test_report_reproduces_the_papers_figures_for_the_sweep(specs):
    report = dashboards.load_report(specs / "report.json")
    grid = next(b for b in report.blocks if isinstance(b, wr.PanelGrid))
    # one run set (one series) per variant/(N, K) of sweeps/toy.yaml, each restricted to the sweep
    assert [r.name for r in grid.runsets] == ["qv-LoRA", "S (1)", "E", "D (4)", "R (Top2/4)"]
    assert all("Config(\"sweep_name\") == 'toy'" in r.filters for r in grid.runsets)
    assert 'Config("N") == 4 and Config("K") == 2' in grid.runsets[-1].filters
    scatter = next(p for p in grid.panels if isinstance(p, wr.ScatterPlot))
    assert scatter.log_x and scatter.x == wr.Config(schema.ACTIVATED_RATIO.name)
    assert scatter.y == wr.SummaryMetric(schema.AVERAGE_ACCURACY.name)
    parallel = next(p for p in grid.panels if isinstance(p, wr.ParallelCoordinatesPlot))
    assert [c.metric for c in parallel.columns][:3] == [wr.Config("N"), wr.Config("K"), wr.Config("r")]
    bars = [p for p in grid.panels if isinstance(p, wr.BarPlot)]
    assert {m.name if hasattr(m, "name") else m for m in bars[0].metrics} == {
        f"test/{s}/accuracy" for s in TOY_SETS
    }
    loss = [p for p in grid.panels if isinstance(p, wr.LinePlot)]
    assert loss[0].groupby == wr.Config(schema.VARIANT.name)
    text = next(b for b in report.blocks if isinstance(b, wr.MarkdownBlock)).text
    assert "sweeps/toy.yaml" in text and "python scripts/sweep.py run toy" in text
    assert "wandb sync" in text and "python scripts/wandb_dashboard.py --sweep toy" in text


def test_saving_without_an_account_says_what_is_missing_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert dashboard_cli.main(["--sweep", "toy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--entity" in err and "API key" in err and "--dry-run" in err
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert dashboard_cli.main(["--sweep", "toy", "--project", "p"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--entity" in err and "API key" not in err


@pytest.mark.slow
def test_an_offline_run_feeds_every_panel(micro_model_dir, app_env, tmp_path):
    """A real offline run of R, read back with wandb's reader, has every key the dashboards reference."""
    run_dir = tmp_path / "run"
    args = [
        "trainer=debug",
        f"model.pretrained={micro_model_dir}",
        "task.max_train_examples=64",
        "task.max_test_examples=5",
        "logger.group=toy",
        "logger.table_rows_per_set=3",
        f"hydra.run.dir={run_dir}",
    ]
    done = run_train(args, app_env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    run = read_offline_run(run_dir)

    sweep = dashboards.SweepInfo("toy", "sweeps/toy.yaml", "", TOY_SETS, [results["perft"]])
    keys = dashboards.referenced_keys(dashboards.workspace("E", "P", TOY_SETS))
    keys |= dashboards.referenced_keys(dashboards.sweep_report("E", "P", sweep))
    assert dashboards.missing_keys(keys, [run]) == []

    c, params = run.config, results["params"]
    label = "R (Top2/4) [adapter]"  # the tiny model's form of the PEFT experts
    assert (c["variant"], c["config_label"], c["N"], c["K"], c["r"]) == ("R", label, 4, 2, 16)
    assert (c["task_name"], c["model_name"], c["seed"], c["sweep_name"]) == (
        "synthetic_commonsense",
        "tiny_olmoe",
        42,
        "toy",
    )
    assert (c["trainable_params"], c["activated_params"]) == (
        params["trainable"],
        params["activated_trainable"],
    )
    assert c["activated_ratio"] == pytest.approx(params["activated_ratio"])
    assert c["global_batch_size"] == 4  # trainer=debug: 4 per device, no accumulation, one process
    s, ev = run.summary, results["eval"]
    assert s["test/average/accuracy"] == pytest.approx(ev["average"])
    assert s["test/boolq/skill"] == pytest.approx(ev["boolq"]["skill"])
    assert s["base/average/accuracy"] == pytest.approx(results["base_eval"]["average"])
    assert s["test/records"]["nrows"] == 3 * len(TOY_SETS) and s["test/records"]["ncols"] == 7
    assert 0.0 <= s["routing/mean/angle_mean_deg"] <= 90.0
    assert s["train/peak_memory_gb"] > 0 and s["train/step_time_s"] > 0
    shares = [v for k, v in s.items() if k.startswith("eval/routing/layer0/load_share/")]
    assert len(shares) == 4 and sum(shares) == pytest.approx(1.0)
