"""The plot: tokens/s and peak memory against sequence length, both stacks, drawn with bench.svg_chart.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

from bench.svg_chart import Panel, Series, line_chart

from .cases import GIB, STACKS


def plot(results: list[dict], title: str, memory_label: str) -> str | None:
    """tokens/s and peak memory against sequence length: localtune in blues, the reference in reds, one
    shade and dash pattern per (model, mode)."""
    groups: dict[tuple, list[dict]] = {}
    for cr in results:
        c = cr["case"]
        if c["data"] == "synthetic":
            groups.setdefault((c["model"], c["mode"]), []).append(cr)
    groups = {k: v for k, v in groups.items() if len({cr["case"]["seq_len"] for cr in v}) >= 2}
    if not groups:
        return None
    speed = Panel("real tokens/s", "sequence length", "tokens/s")
    memory = Panel("peak memory", "sequence length", memory_label)
    shades = {"localtune": ("#1f77b4", "#08519c", "#6baed6"), "reference": ("#d62728", "#a50f15", "#fc9272")}
    dashes = ("", "6,4", "2,3", "8,3,2,3")
    for g, ((model, mode), crs) in enumerate(groups.items()):
        for stack in STACKS:
            style = {"color": shades[stack][g % 3], "dash": dashes[g % len(dashes)]}
            name = f"{stack} - {model} {mode}"
            speed.series.append(
                Series(name, [(cr["case"]["seq_len"], cr["summary"][stack]["tokens_per_s"]) for cr in crs], **style)
            )
            mem = [(cr["case"]["seq_len"], cr["summary"][stack]["peak_memory_bytes"]) for cr in crs]
            memory.series.append(Series(name, [(x, None if y is None else y / GIB) for x, y in mem], **style))
    return line_chart([speed, memory], title)
