"""``simulate --report out.html``: one self-contained page with plots of one or several runs.

Plots are made with Plotly (a maintained charting library), and plotly.js is
inlined once in the page, so the file opens anywhere, offline, with no
server and nothing fetched. Three plots, one trace per strategy:

* utilization of the whole fleet (cpu, and memory dotted) along the trace;
* how full the nodes end: the share of nodes per 10%-wide band of cpu
  utilization at the end of the trace;
* rejections by reason.

Then the summary figures of each run in a table. Rendering is pure (the
results in, a string out); the CLI writes the file.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from scheduler.simulate import SimulationResult, comparison_rows

BANDS = 10
"""Bands of cpu utilization in the node-fill plot (0-10%, ..., 90-100%)."""


def _utilization_figure(results: Mapping[str, SimulationResult]) -> go.Figure:
    fig = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for k, (name, result) in enumerate(results.items()):
        lines = [t[0] for t in result.timeline]
        color = palette[k % len(palette)]  # one colour per strategy: cpu solid, memory dotted
        fig.add_trace(
            go.Scatter(
                x=lines,
                y=[t[1] for t in result.timeline],
                name=f"{name} cpu",
                mode="lines",
                line={"color": color},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=lines,
                y=[t[2] for t in result.timeline],
                name=f"{name} memory",
                mode="lines",
                line={"dash": "dot", "color": color},
            )
        )
    fig.update_layout(
        title="Fleet utilization along the trace",
        xaxis_title="trace line",
        yaxis={"title": "allocated / effective capacity", "tickformat": ".0%", "range": [0, 1.02]},
    )
    return fig


def node_fill(result: SimulationResult) -> list[float]:
    """Share of nodes per band of cpu utilization at the end of the run (nodes with no cpu left out)."""
    fleet = result.fleet
    if fleet is None or not fleet.size:
        return [0.0] * BANDS
    cap = fleet.cap_cpu
    has = cap > 0
    used = (cap[has] - fleet.free_cpu[has]) / cap[has]
    band = np.clip((used * BANDS).astype(np.int64), 0, BANDS - 1)
    counts = np.bincount(band, minlength=BANDS)
    return [float(c) / max(1, int(has.sum())) for c in counts]


def _fill_figure(results: Mapping[str, SimulationResult]) -> go.Figure:
    labels = [f"{10 * i}-{10 * (i + 1)}%" for i in range(BANDS)]
    fig = go.Figure([go.Bar(x=labels, y=node_fill(r), name=name) for name, r in results.items()])
    fig.update_layout(
        title="How full the nodes end (cpu)",
        barmode="group",
        xaxis_title="cpu utilization of the node at the end",
        yaxis={"title": "share of nodes", "tickformat": ".0%"},
    )
    return fig


def _rejections_figure(results: Mapping[str, SimulationResult]) -> go.Figure:
    reasons = sorted({r for res in results.values() for r in res.rejected_by_reason}) or ["(none)"]
    fig = go.Figure(
        [
            go.Bar(x=reasons, y=[res.rejected_by_reason.get(r, 0) for r in reasons], name=name)
            for name, res in results.items()
        ]
    )
    fig.update_layout(title="Rejections by reason", barmode="group", yaxis_title="requests")
    return fig


def _summary_table(results: Mapping[str, SimulationResult]) -> str:
    rows = comparison_rows({name: r.summary() for name, r in results.items()})
    head = "".join(f"<th>{html.escape(n)}</th>" for n in results)
    body = "".join(
        "<tr><th>"
        + html.escape(label)
        + "</th>"
        + "".join(f"<td>{html.escape(v)}</td>" for v in values)
        + "</tr>"
        for label, values in rows
    )
    return f'<table id="summary"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_report(results: Mapping[str, SimulationResult], *, title: str = "simulate") -> str:
    """The whole page as one string: plotly.js inline once, three plots, the summary table."""
    figures = [_utilization_figure(results), _fill_figure(results), _rejections_figure(results)]
    ids = ["utilization", "node-fill", "rejections"]
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=ids[i], default_height="420px")
        for i, fig in enumerate(figures)
    ]
    style = (
        "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
        "table{border-collapse:collapse;font-size:14px}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "tbody th{text-align:left;font-weight:normal}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Strategies: {html.escape(', '.join(results))}; same fleet and trace for each.</p>"
        + "".join(parts)
        + "<h2>Summary</h2>"
        + _summary_table(results)
        + "</body></html>\n"
    )
