"""W&B dashboards as code: the project's workspace and a report per sweep, built with `wandb-workspaces`.

    ws = workspace(entity, project, test_sets)       # sections Training, Evaluation, Routing, Efficiency
    rep = sweep_report(entity, project, sweep)       # the paper's figures from one sweep's runs
    write_specs(out, ws, rep)                        # out/workspace.json, out/report.json
    load_workspace(out / "workspace.json"), load_report(out / "report.json")
    missing_keys(referenced_keys(ws) | referenced_keys(rep), [read_offline_run(d) for d in run_dirs])

Every metric a panel plots is a key of perft_exp/metric_schema.py, the module the logging code writes
with. `referenced_keys` walks the panels (and run-set filters and groupings) of a workspace or report
and returns (where, key) pairs; `missing_keys` lists those that no run has, which is how
`scripts/wandb_dashboard.py --check` and the tests find a chart that would be empty.

The JSON files are the library's own serialisation, the one its `save()` uploads: a workspace is an
`internal.View` (`Workspace._to_model()`), a report an `internal.ReportViewspec` (`Report._to_model()`),
dumped with pydantic's `model_dump_json(by_alias=True, exclude_none=True)`, and loaded back with
`model_validate_json` and `_from_model`, as `Workspace.from_url` and `Report.from_url` do. A report's
run sets name their project only when `resolve=True`: the library then looks the project's internal
id up on the server, so dry runs leave it out and the app reads the report's own project.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces import expr
from wandb_workspaces.reports.v2 import internal as report_internal
from wandb_workspaces.workspaces import internal as workspace_internal

from perft_exp import metric_schema as schema
from perft_exp.adapters.variants import get_variant, variant_label
from perft_exp.analysis.offline_runs import OfflineRun

WORKSPACE_NAME = "PERFT"


def _wide(height: int = 8) -> wr.Layout:
    """A full-width layout (a new object per panel: the grid moves panels by editing their layouts)."""
    return wr.Layout(w=24, h=height)


@dataclass
class SweepInfo:
    """What a report needs to know about a sweep (scripts/wandb_dashboard.py fills it from sweeps/*.yaml)."""

    name: str
    file: str  # e.g. sweeps/toy.yaml
    description: str
    test_sets: list[str]
    perft: list[dict]  # every job's `perft` config, in grid order
    commands: list[str] = field(default_factory=list)  # how its runs were made and reached W&B


# --- panels ---------------------------------------------------------------------------------------------


def _grouped(groupby: str | None) -> dict:
    """Panel arguments that merge runs by a config key: their mean, with a standard-error band."""
    if groupby is None:
        return {}
    return {"groupby": wr.Config(groupby), "groupby_aggfunc": "mean", "groupby_rangefunc": "stderr"}


def _line(key: schema.Key, groupby: str | None = schema.VARIANT.name, **kwargs) -> wr.LinePlot:
    """`key` over training steps, runs merged by `groupby`."""
    return wr.LinePlot(
        title=key.title,
        x=schema.STEP.name,
        y=[key.name],
        title_x=schema.STEP.title,
        title_y=key.title,
        **_grouped(groupby),
        **kwargs,
    )


def _layers(stat: str) -> wr.LinePlot:
    """`stat` of every routed layer over training steps (one line per layer and run)."""
    title = f"{schema.ROUTING_STATS[stat][0]}, per layer"
    return wr.LinePlot(
        title=title,
        x=schema.STEP.name,
        metric_regex=schema.routing_layers_regex(stat),
        title_x=schema.STEP.title,
    )


def _bars(title: str, keys: list[str], groupby: str | None = None, **kwargs) -> wr.BarPlot:
    """The runs' final values of `keys` as bars, runs merged by `groupby`."""
    return wr.BarPlot(title=title, metrics=keys, orientation="v", **_grouped(groupby), **kwargs)


def _accuracy_vs_activated(key: schema.Key = schema.AVERAGE_ACCURACY) -> wr.ScatterPlot:
    """The paper's efficiency figure: a run's final `key` against its activated-parameter ratio, log x."""
    x = wr.Config(schema.ACTIVATED_RATIO.name)
    return wr.ScatterPlot(
        title=f"{key.title} vs activated-parameter ratio", x=x, y=wr.SummaryMetric(key.name), log_x=True
    )


def _parallel() -> wr.ParallelCoordinatesPlot:
    columns = [wr.Config(k.name) for k in (schema.N, schema.K, schema.R, schema.ACTIVATED_RATIO)]
    columns += [wr.SummaryMetric(k.name) for k in (schema.AVERAGE_ACCURACY, schema.AVERAGE_SKILL)]
    columns = [wr.ParallelCoordinatesPlotColumn(metric=c) for c in columns]
    return wr.ParallelCoordinatesPlot(title="N, K, r -> accuracy", layout=_wide(), columns=columns)


def training_panels() -> list:
    """The training metrics over steps: losses, learning rate, gradient norm, throughput."""
    keys = (
        schema.LOSS,
        schema.LM_LOSS,
        schema.VAL_LOSS,
        schema.BASE_AUX_LOSS,
        schema.ADAPTER_AUX_LOSS,
        schema.LEARNING_RATE,
        schema.GRAD_NORM,
        schema.TOKENS_PER_S,
    )
    return [_line(key) for key in keys]


def evaluation_panels(test_sets: list[str]) -> list:
    """Accuracy and skill, on average and per test set, the top-prediction share and the records table."""
    return [
        _bars(
            "average accuracy, tuned and untuned",
            [schema.AVERAGE_ACCURACY.name, schema.BASE_AVERAGE.name, schema.AVERAGE_MAJORITY.name],
            groupby=schema.LABEL.name,
        ),
        _bars(schema.AVERAGE_SKILL.title, [schema.AVERAGE_SKILL.name], groupby=schema.LABEL.name),
        _bars("accuracy per test set", [schema.result_key(s, "accuracy") for s in test_sets], layout=_wide()),
        _bars(
            "skill per test set (accuracy - majority)",
            [schema.result_key(s, "skill") for s in test_sets],
            layout=_wide(),
        ),
        _bars(schema.MAX_TOP_SHARE.title, [schema.MAX_TOP_SHARE.name], groupby=schema.LABEL.name),
        wr.WeavePanelSummaryTable(table_name=schema.RECORDS.name, layout=_wide(12)),
    ]


def routing_panels() -> list:
    """The routing statistics over steps (means, per layer, each expert's share) and R's router angles."""
    means = [_line(schema.routing_mean(stat), groupby=schema.LABEL.name) for stat in schema.ROUTING_STATS]
    layers = [_layers(stat) for stat in ("load_entropy", "max_load_ratio")]
    shares = wr.LinePlot(
        title="each PEFT expert's share of its layer's assignments",
        x=schema.STEP.name,
        metric_regex=schema.LOAD_SHARE_REGEX,
        title_x=schema.STEP.title,
        layout=_wide(),
    )
    angles = _bars(
        "R's router against the frozen router: mean principal angle (deg)",
        [schema.ANGLE_MEAN.name, schema.ANGLE_RANDOM.name],
        groupby=schema.LABEL.name,
    )
    return [*means, *layers, shares, angles]


def efficiency_panels() -> list:
    """Parameter counts and ratios, accuracy against the activated ratio, step time and peak memory."""
    keys = (
        schema.N,
        schema.K,
        schema.R,
        schema.TRAINABLE,
        schema.ACTIVATED,
        schema.TRAINABLE_RATIO,
        schema.ACTIVATED_RATIO,
        schema.GLOBAL_BATCH,
    )
    counts = (schema.TRAINABLE, schema.ACTIVATED)  # on a log axis
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k.name), log=k in counts) for k in keys]
    params = wr.ParallelCoordinatesPlot(title="parameters", layout=_wide(), columns=columns)
    return [
        params,
        _accuracy_vs_activated(),
        _line(schema.STEP_TIME, groupby=schema.LABEL.name),
        _line(schema.PEAK_MEMORY, groupby=schema.LABEL.name),
    ]


def _flow(panels: list) -> list:
    """Place panels left to right in rows of 24 grid units, a new row when one does not fit.

    Explicit positions, because the library's own collision fix is pairwise and can leave overlaps."""
    x = y = row_height = 0
    for panel in panels:
        layout = panel.layout
        if x + layout.w > 24:
            x, y, row_height = 0, y + row_height, 0
        layout.x, layout.y = x, y
        x, row_height = x + layout.w, max(row_height, layout.h)
    return panels


# --- the workspace --------------------------------------------------------------------------------------


def workspace(entity: str, project: str, test_sets: list[str], name: str = WORKSPACE_NAME) -> ws.Workspace:
    """The project's saved view: four sections, runs grouped by sweep, then variant."""
    sections = [
        ws.Section(name="Training", panels=_flow(training_panels()), is_open=True),
        ws.Section(name="Evaluation", panels=_flow(evaluation_panels(test_sets)), is_open=True),
        ws.Section(name="Routing", panels=_flow(routing_panels()), is_open=True),
        ws.Section(name="Efficiency", panels=_flow(efficiency_panels()), is_open=True),
    ]
    runset = ws.RunsetSettings(groupby=[expr.Config(schema.SWEEP.name), expr.Config(schema.VARIANT.name)])
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=sections,
        runset_settings=runset,
        settings=ws.WorkspaceSettings(x_axis=schema.STEP.name),
    )


# --- the report per sweep -------------------------------------------------------------------------------


def _quote(value) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def series(sweep: SweepInfo) -> list[tuple[str, dict]]:
    """One (label, config filter) per variant/(N, K) of the sweep, in grid order: the figures' series.

    E's N and K are the model's (not in the sweep file), so E's series is the variant alone."""
    out: dict[str, dict] = {}
    for perft in sweep.perft:
        keys = {schema.VARIANT.name: perft["variant"]}
        knobs = get_variant(perft["variant"]).knobs
        keys |= {
            key.name: perft[knob]
            for knob, key in (("num_experts", schema.N), ("top_k", schema.K))
            if knob in knobs
        }
        out.setdefault(variant_label(perft), keys)
    return list(out.items())


def runsets(sweep: SweepInfo, entity: str = "", project: str = "") -> list[wr.Runset]:
    """A run set per series, each filtered to the sweep's runs."""
    found = []
    for label, keys in series(sweep):
        terms = {schema.SWEEP.name: sweep.name, **keys}
        filters = " and ".join(f"Config('{k}') = {_quote(v)}" for k, v in terms.items())
        found.append(wr.Runset(entity=entity, project=project, name=label, filters=filters))
    return found


def _how_made(sweep: SweepInfo) -> str:
    lines = [
        f"Runs of the sweep **{sweep.name}** (`{sweep.file}`, {len(sweep.perft)} jobs).",
        *([sweep.description.strip()] if sweep.description.strip() else []),
        "",
        "Made and uploaded with:",
        "",
        "```bash",
        *sweep.commands,
        "```",
    ]
    return "\n".join(lines)


def sweep_report(entity: str, project: str, sweep: SweepInfo, resolve: bool = False) -> wr.Report:
    """The paper's figures and tables from one sweep's runs; `resolve`: name the project in the run sets."""
    sets = runsets(sweep, entity if resolve else "", project if resolve else "")
    figures = [
        _accuracy_vs_activated(),
        _accuracy_vs_activated(schema.AVERAGE_SKILL),
        _parallel(),
        _bars(
            "accuracy per test set",
            [schema.result_key(s, "accuracy") for s in sweep.test_sets],
            groupby=schema.R.name,
            layout=_wide(),
        ),
        _bars(
            "skill per test set (accuracy - majority)",
            [schema.result_key(s, "skill") for s in sweep.test_sets],
            groupby=schema.R.name,
            layout=_wide(),
        ),
        _line(schema.LOSS),
        _line(schema.VAL_LOSS),
    ]
    blocks = [
        wr.H1(f"{sweep.name}: PERFT variants against the activated-parameter ratio"),
        wr.MarkdownBlock(text=_how_made(sweep)),
        wr.H2("Figures"),
        wr.P(
            "One run set per configuration (variant and N, K; E takes the model's); bars and curves are "
            "means over the runs of each bottleneck r or variant, with standard-error bands."
        ),
        wr.PanelGrid(runsets=sets, panels=_flow(figures)),
    ]
    return wr.Report(
        entity=entity,
        project=project,
        title=f"PERFT sweep {sweep.name}",
        description=sweep.description.strip().splitlines()[0] if sweep.description.strip() else "",
        blocks=blocks,
    )


# --- serialisation --------------------------------------------------------------------------------------


def workspace_json(workspace_: ws.Workspace) -> str:
    """The workspace as W&B's JSON view spec."""
    return workspace_._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=1)


def report_json(report: wr.Report) -> str:
    """The report as W&B's JSON view spec."""
    return report._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=1)


def load_workspace(path: str | Path) -> ws.Workspace:
    """A workspace read back from a workspace_json file."""
    return ws.Workspace._from_model(workspace_internal.View.model_validate_json(Path(path).read_text()))


def load_report(path: str | Path) -> wr.Report:
    """A report read back from a report_json file."""
    return wr.Report._from_model(report_internal.ReportViewspec.model_validate_json(Path(path).read_text()))


def write_specs(out: str | Path, workspace_: ws.Workspace, report: wr.Report) -> dict[str, Path]:
    """Write workspace.json and report.json into `out`; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"workspace": out / "workspace.json", "report": out / "report.json"}
    paths["workspace"].write_text(workspace_json(workspace_) + "\n")
    paths["report"].write_text(report_json(report) + "\n")
    return paths


# --- which keys the panels read -------------------------------------------------------------------------

_CONFIG_IN_FILTER = re.compile(r"""Config\(\s*['"]([^'"]+)['"]\s*\)""")


def _metric(value, default: str) -> tuple[str, str]:
    """(where, key) of a panel's metric: a Config, a SummaryMetric,
    or a name (a Metric) read from `default`"""
    if isinstance(value, (wr.Config, expr.Config)):
        return "config", value.name
    if isinstance(value, (wr.SummaryMetric, expr.Summary)):
        return "summary", value.name
    name = value.name if isinstance(value, (wr.Metric, expr.Metric)) else str(value)
    return default, expr.to_backend_name(name)


def _panel_keys(panel) -> set[tuple[str, str]]:
    keys = set()
    if isinstance(panel, wr.LinePlot):
        keys |= {_metric(m, "history") for m in [panel.x, *panel.y] if m is not None}
        if panel.metric_regex:
            keys.add(("history-regex", panel.metric_regex))
    elif isinstance(panel, wr.BarPlot):
        keys |= {_metric(m, "summary") for m in panel.metrics}
    elif isinstance(panel, wr.ScatterPlot):
        keys |= {_metric(m, "summary") for m in (panel.x, panel.y, panel.z) if m is not None}
    elif isinstance(panel, wr.ParallelCoordinatesPlot):
        keys |= {_metric(c.metric, "summary") for c in panel.columns}
    elif isinstance(panel, wr.WeavePanelSummaryTable):
        keys.add(("summary", panel.table_name))
    if getattr(panel, "groupby", None) is not None:
        keys.add(_metric(panel.groupby, "config"))
    return keys


def referenced_keys(obj: ws.Workspace | wr.Report) -> set[tuple[str, str]]:
    """Every (where, key) a workspace's or report's panels, run-set filters and groupings read.

    where is config, history, summary, or history-regex (a pattern that some history key must match)."""
    keys: set[tuple[str, str]] = set()
    if isinstance(obj, ws.Workspace):
        panels = [p for section in obj.sections for p in section.panels]
        keys |= {_metric(g, "config") for g in obj.runset_settings.groupby}
        keys |= {("config", k) for k in _CONFIG_IN_FILTER.findall(str(obj.runset_settings.filters))}
        keys |= {_metric(obj.settings.x_axis, "history")}
    else:
        grids = [b for b in obj.blocks if isinstance(b, wr.PanelGrid)]
        panels = [p for grid in grids for p in grid.panels]
        for runset in (r for grid in grids for r in grid.runsets):
            keys |= {("config", k) for k in _CONFIG_IN_FILTER.findall(str(runset.filters))}
    for panel in panels:
        keys |= _panel_keys(panel)
    return keys


def _present(run: OfflineRun, where: str, key: str) -> bool:
    if where == "history-regex":
        return any(re.fullmatch(key, k) for k in run.history_keys)
    return run.has(where, key)


def missing_keys(keys: Iterable[tuple[str, str]], runs: list[OfflineRun]) -> list[tuple[str, str]]:
    """The (where, key) pairs that none of `runs` has: panels that would be empty."""
    return sorted((where, key) for where, key in set(keys) if not any(_present(r, where, key) for r in runs))
