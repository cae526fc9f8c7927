"""Inline SVG figures for the report: interval bars, tornado charts, swimlane timelines and
folio maps. Colours come from the page's CSS classes, so light, dark and print all apply."""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any

from memfail.report.html.cex import LANES


def _e(s: object) -> str:
    return escape(str(s), quote=True)


def _num(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else "n/a"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _svg(w: float, h: float, label: str, body: list[str], cls: str = "fig") -> str:
    return (f'<svg class="{cls}" role="img" aria-label="{_e(label)}" viewBox="0 0 {w:.0f} '
            f'{h:.0f}" width="{w:.0f}" height="{h:.0f}" preserveAspectRatio="xMinYMin meet">'
            f'<title>{_e(label)}</title>'
            + "".join(body) + "</svg>")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def interval_bars(title: str, rows: list[tuple[str, dict[str, Any]]], unit: str,
                  baseline: str | None = None) -> str:
    """One horizontal bar per policy with its 95 % interval; a rate never seen is drawn as
    an open marker at its rule-of-three upper bound."""
    left, right, bar_h, gap, top = 110, 180, 14, 6, 26
    w = 540
    h = top + len(rows) * (bar_h + gap) + 24
    hi = max([float(iv.get("high", 0.0)) for _, iv in rows] + [0.0])
    scale = (w - left - right) / hi if hi > 0 else 0.0
    body = [f'<text class="t" x="0" y="14">{_e(title)}</text>']
    for i, (name, iv) in enumerate(rows):
        y = top + i * (bar_h + gap)
        est, lo, up = (float(iv.get(k, 0.0)) for k in ("estimate", "low", "high"))
        cls = "bar base" if name == baseline else "bar"
        body.append(f'<text class="lbl" x="{left - 6}" y="{y + bar_h - 3}" '
                    f'text-anchor="end">{_e(name)}</text>')
        if est > 0:
            body.append(f'<rect class="{cls}" x="{left}" y="{y}" width="{max(1.0, est * scale):.1f}"'
                        f' height="{bar_h}"><title>{_e(name)}: {_num(est)} [{_num(lo)}, '
                        f'{_num(up)}] {_e(unit)}</title></rect>')
            ym = y + bar_h / 2
            body.append(f'<line class="whisk" x1="{left + lo * scale:.1f}" y1="{ym}" '
                        f'x2="{left + up * scale:.1f}" y2="{ym}"/>')
            txt = f"{_num(est)} [{_num(lo)}, {_num(up)}]"
        else:
            body.append(f'<circle class="never" cx="{left + up * scale:.1f}" '
                        f'cy="{y + bar_h / 2}" r="4"><title>{_e(name)}: never seen; 95 % upper '
                        f'bound {_num(up)}</title></circle>')
            txt = f"0 (< {_num(up)})"
        body.append(f'<text class="val" x="{w - 2}" y="{y + bar_h - 3}" '
                    f'text-anchor="end">{_e(txt)}</text>')
    body.append(f'<text class="ax" x="{left}" y="{h - 6}">0</text>'
                f'<text class="ax" x="{w - right}" y="{h - 6}" text-anchor="end">'
                f'{_num(hi)} {_e(unit)}</text>')
    return _svg(w, h, title, body)


def tornado(title: str, centre: float, rows: list[tuple[str, float, float]], unit: str,
            band: tuple[float, float] | None = None) -> str:
    """Each parameter's swing of one rate: bars from the rate at the low end to the rate at
    the high end of the parameter's range, widest first, around the default's rate; ``band``
    (the default's 95 % interval) is shaded behind them: a swing inside it is within the
    sampling noise of the points."""
    rows = sorted(rows, key=lambda r: -abs(r[2] - r[1]))
    left, right, bar_h, gap, top = 250, 20, 14, 6, 30
    w = 640
    h = top + len(rows) * (bar_h + gap) + 28
    vals = [centre] + [v for _, a, b in rows for v in (a, b)] + list(band or ())
    lo_v, hi_v = min(vals), max(vals)
    if hi_v == lo_v:
        hi_v = lo_v + (abs(lo_v) or 1.0)
    span = w - left - right

    def x(v: float) -> float:
        return left + (v - lo_v) / (hi_v - lo_v) * span

    body = [f'<text class="t" x="0" y="14">{_e(title)}</text>']
    cx = x(centre)
    if band is not None:
        b0, b1 = x(band[0]), x(band[1])
        body.append(f'<rect class="band" x="{b0:.1f}" y="{top - 4}" '
                    f'width="{max(1.0, b1 - b0):.1f}" height="{h - 22 - top + 4}"><title>the '
                    f"default's 95 % interval: {_num(band[0])} to {_num(band[1])} "
                    f"{_e(unit)}</title></rect>")
    for i, (name, a, b) in enumerate(rows):
        y = top + i * (bar_h + gap)
        body.append(f'<text class="lbl" x="{left - 6}" y="{y + bar_h - 3}" '
                    f'text-anchor="end">{_e(_clip(name, 40))}</text>')
        for v, cls, end in ((a, "tlow", "low"), (b, "thigh", "high")):
            x0, x1 = sorted((cx, x(v)))
            body.append(f'<rect class="{cls}" x="{x0:.1f}" y="{y}" width="{max(1.0, x1 - x0):.1f}"'
                        f' height="{bar_h}"><title>{_e(name)} at its {end} end: {_num(v)} '
                        f'{_e(unit)} (default {_num(centre)})</title></rect>')
    body.append(f'<line class="axis" x1="{cx:.1f}" y1="{top - 4}" x2="{cx:.1f}" '
                f'y2="{h - 22}"/>')
    body.append(f'<text class="ax" x="{left}" y="{h - 6}">{_num(lo_v)}</text>'
                f'<text class="ax" x="{cx:.1f}" y="{h - 6}" text-anchor="middle">default '
                f'{_num(centre)}</text><text class="ax" x="{w - right}" y="{h - 6}" '
                f'text-anchor="end">{_num(hi_v)} {_e(unit)}</text>')
    return _svg(w, h, title, body)


def swimlane(cex: dict[str, Any]) -> str:
    """Lanes (CPU / machine check ... guest) down, the counterexample's steps across; the step
    where the property fails is outlined and named."""
    steps = cex["steps"]
    lane_w, col_w, head_h, line_h, pad = 150, 270, 40, 14, 6
    lines_per_lane = {k: max([len(s["lanes"].get(k, [])) for s in steps] + [1])
                      for k, _ in LANES}
    heights = {k: min(n, 6) * line_h + 2 * pad for k, n in lines_per_lane.items()}
    w = lane_w + col_w * len(steps) + 4
    h = head_h + sum(heights.values()) + 4
    body = []
    for j, st in enumerate(steps):
        x = lane_w + j * col_w
        failing = j == len(steps) - 1
        body.append(f'<rect class="{"colfail" if failing else "col"}" x="{x + 2}" y="2" '
                    f'width="{col_w - 4}" height="{h - 4}" rx="4"/>')
        body.append(f'<text class="step" x="{x + 8}" y="16">step {j + 1}'
                    f'{" — " + _e(cex["property"]) + " fails" if failing else ""}</text>')
        body.append(f'<text class="lbl" x="{x + 8}" y="31">{_e(_clip(st["label"], 40))}'
                    f'<title>{_e(st["label"])}</title></text>')
    y = head_h
    for key, name in LANES:
        hh = heights[key]
        body.append(f'<line class="lane" x1="0" y1="{y}" x2="{w}" y2="{y}"/>')
        body.append(f'<text class="lanename" x="6" y="{y + pad + 11}">{_e(name)}</text>')
        for j, st in enumerate(steps):
            items = st["lanes"].get(key, [])
            x = lane_w + j * col_w + 8
            shown = items if len(items) <= 6 else [*items[:5], f"+{len(items) - 5} more"]
            for k, text in enumerate(shown):
                bad = _bad(text)
                body.append(f'<text class="{"ev bad" if bad else "ev"}" x="{x}" '
                            f'y="{y + pad + 11 + k * line_h}">{_e(_clip(text, 37 if bad else 42))}'
                            f'<title>{_e(text)}</title></text>')
        y += hh
    return _svg(w, h, f"timeline of {cex['policy']} violating {cex['property']}", body,
                "fig lanes")


_BAD = re.compile(r"panic|handed out|(?<!un)consumed|killed|paused|signal 7|fatal")


def _bad(text: str) -> bool:
    """An event a reader should see first: a panic, poison consumed or handed out, a VM or
    process lost."""
    return _BAD.search(text.lower()) is not None


def folio_legend() -> str:
    """The key to the folio map cells."""
    items = [("cell failed", "raw page with an uncorrectable error"),
             ("cell detected", "error reported to memory_failure() (a corner mark on a failed page)"),
             ("cell hwp", "PG_hwpoison (raw page or folio)"),
             ("cell table", "recorded in the policy's global table (C1)")]
    body = []
    for i, (cls, text) in enumerate(items):
        x = 4 + (i % 2) * 300
        y = 4 + (i // 2) * 22
        body.append(f'<rect class="{cls}" x="{x}" y="{y}" width="16" height="16"/>'
                    f'<text class="lbl" x="{x + 22}" y="{y + 13}">{_e(text)}</text>')
    body.append('<text class="lbl" x="4" y="62">marks: G = the guest reaches it through '
                'stage 2, H = a host mapping, X = a hwpoison entry in a host page table;</text>'
                '<text class="lbl" x="4" y="78">a dashed outline = a split (4 KiB) page, '
                'a box around the row = one huge folio.</text>')
    return _svg(640, 86, "folio map legend", body, "fig legend")


def folio_map(cex: dict[str, Any]) -> str:
    """The huge folio as a grid of its base pages, one row per state: before step 1, then
    after each step."""
    states: list[list[dict[str, Any]]] = cex["folio"]
    if not states:
        return ""
    n = len(states[0])
    per_row = min(n, 32)
    rows_per_state = math.ceil(n / per_row)
    cell, gap, left, top = 34, 3, 260, 8
    labels = ["before step 1"] + [f"after step {i}: {s['label']}"
                                  for i, s in enumerate(cex["steps"], 1)]
    block_h = rows_per_state * (cell + gap) + 10
    w = left + per_row * (cell + gap) + 10
    h = top + len(states) * block_h + 6
    body = []
    for si, pages in enumerate(states):
        y0 = top + si * block_h
        body.append(f'<text class="lbl" x="0" y="{y0 + cell / 2 + 4}">'
                    f'{_e(_clip(labels[si], 40))}<title>{_e(labels[si])}</title></text>')
        huge = all(p["where"] == "folio" and p["order"] > 0 for p in pages)
        if huge:
            body.append(f'<rect class="huge" x="{left - 3}" y="{y0 - 3}" '
                        f'width="{per_row * (cell + gap) + 3}" '
                        f'height="{rows_per_state * (cell + gap) + 3}" rx="3"/>')
        for i, p in enumerate(pages):
            x = left + (i % per_row) * (cell + gap)
            y = y0 + (i // per_row) * (cell + gap)
            cls = ["cell"]
            if p["failed"]:
                cls.append("failed")
            if p["detected"] and not p["failed"]:
                cls.append("detected")
            if p["hwpoison"] or p["folio_hwpoison"]:
                cls.append("hwp")
            if p["table"]:
                cls.append("table")
            if p["where"] != "folio":
                cls.append("split")
            marks = ("G" if p["stage2"] else "") + ("H" if p["host"] else "") + \
                ("X" if p["hwpoison_entry"] else "")
            tip = (f"pfn {p['pfn']:#x}: {p['where']} order {p['order']}; "
                   f"failed={p['failed']} detected={p['detected']} "
                   f"PG_hwpoison={'raw' if p['hwpoison'] else 'folio' if p['folio_hwpoison'] else 'no'}"
                   f" table={p['table']}; stage 2: {', '.join(p['stage2']) or '-'}; host: "
                   f"{', '.join(p['host']) or '-'}; hwpoison entry: "
                   f"{', '.join(p['hwpoison_entry']) or '-'}")
            body.append(f'<rect class="{" ".join(cls)}" x="{x}" y="{y}" width="{cell}" '
                        f'height="{cell}" rx="2"><title>{_e(tip)}</title></rect>')
            if p["table"]:
                body.append(f'<rect class="tmark" x="{x + cell - 9}" y="{y + 2}" width="7" '
                            f'height="7"/>')
            if p["detected"]:
                body.append(f'<rect class="dmark" x="{x + 2}" y="{y + 2}" width="7" '
                            f'height="7"/>')
            if marks:
                body.append(f'<text class="mark" x="{x + cell / 2}" y="{y + cell - 7}" '
                            f'text-anchor="middle">{marks}</text>')
    return _svg(w, h, f"folio map of {cex['policy']} violating {cex['property']}", body,
                "fig folio")
