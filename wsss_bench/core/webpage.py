"""The leaderboard as one static web page, ``<name>.html`` beside ``<name>.json``.

The page is rendered from the board alone and needs no server and no network: CSS and
JavaScript are inline, figures are linked by their path relative to the page
(``figures/<name>/<file>.png``). Every text taken from the board is HTML-escaped; the data
the script needs (sort keys and the parts a row is filtered by) is embedded as JSON with
``<``, ``>`` and ``&`` escaped. The same board and figures give the same bytes.
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from typing import Any
from urllib.parse import quote

from wsss_bench.core import leaderboard
from wsss_bench.core.leaderboard import METRIC_NOTES, SORT_METRIC, STAT_COLUMNS, is_reported
from wsss_bench.core.metrics import METRIC_NAMES

GALLERY = {prefix: title[:1].upper() + title[1:]  # figure-name prefix -> gallery section
           for prefix, title in leaderboard.FIGURE_KINDS.items()}
NONE = "(none)"  # the filter value of a row without the part (Empty, single backbones)
FILTERS = {"cam": "CAM", "ensemble": "Ensemble", "filter": "Filter", "backbone": "Backbone"}


def _inline(text: str) -> str:
    """Markdown-ish text (the notes the markdown board shares) as escaped HTML: `code`,
    **bold** and *italic*."""
    out = escape(text)
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", out)


def _pre(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _header(board: dict[str, Any]) -> list[str]:
    """The facts the markdown header has, as list items."""
    items = []
    if board.get("command"):
        items.append(f"Reproduce: <code>{escape(board['command'])}</code>")
    items.append(f"Dataset: <code>{escape(board['dataset'])}</code>")
    if prep := leaderboard._preprocessing(board):
        items.append(f"Preprocessing: {escape(prep)}")
    if split := board.get("split"):
        made = (f"from <code>{escape(str(board['split_file']))}</code>" if board.get("split_file")
                else f"seed {escape(str(board.get('split_seed')))}")
        folds = "; ".join(f"fold {i}: {escape(', '.join(f))}" for i, f in enumerate(split))
        items.append(f"Split: patient-level {len(split)}-fold cross-validation ({made}); "
                     f"validation cases per fold: {folds}")
    items.append("Method: <code>ensemble(backbones) / CAM / filter</code>, or one backbone; "
                 "<code>Empty</code> predicts no lesion anywhere.")
    items.append(f"Rows ranked (<code>#</code>) by <code>{SORT_METRIC}</code>; mean ± std "
                 "(population) over folds (and seeds). Click a column header to sort by it, "
                 "again to reverse; click ▸ to see a row's thresholds, per-fold metrics, config "
                 "and provenance.")
    if any(is_reported(r) for r in board["rows"]):
        items.append("Rows marked <span class=\"badge\">reported</span> (grey, italic) are the "
                     "numbers the paper reports on the full dataset, copied, not measured here: "
                     "only <code>paper_dsc</code> and <code>paper_miou</code>, no std.")
    items += [_inline(line.removeprefix("- ")) for line in leaderboard.statistics_notes(board)]
    return items


def _fold_labels(row: dict[str, Any], n: int) -> list[str]:
    """``seed S, fold F`` of each of ``n`` per-fold entries (seed-major, as rows keep them)."""
    cases = row.get("per_case")
    if isinstance(cases, list) and len(cases) == n and all(isinstance(c, dict) for c in cases):
        return [f"seed {c.get('seed')}, fold {c.get('fold')}" for c in cases]
    seeds = row.get("seeds") or []
    if seeds and n % len(seeds) == 0:
        k = n // len(seeds)
        return [f"seed {seeds[i // k]}, fold {i % k}" for i in range(n)]
    return [f"entry {i}" for i in range(n)]


def _details(row: dict[str, Any]) -> str:
    """A row's expanded view: thresholds and metrics per fold, options, config, provenance."""
    thresholds = row.get("thresholds") or []
    folds = {m: (row["metrics"].get(m) or {}).get("folds") or [] for m in METRIC_NAMES}
    n = max([len(thresholds), *map(len, folds.values())])
    parts = []
    if n:
        nets = row.get("backbones") or []
        head = "".join(f"<th>threshold {escape(b)}</th>" for b in nets) or "<th>thresholds</th>"
        body = []
        for i, label in enumerate(_fold_labels(row, n)):
            t = thresholds[i] if i < len(thresholds) else None
            if isinstance(t, list) and len(t) == max(len(nets), 1):
                cells = "".join(f"<td>{escape(str(v))}</td>" for v in t)
            else:
                cells = f"<td colspan=\"{max(len(nets), 1)}\">{escape(_text(t))}</td>"
            values = "".join(f"<td>{_number(folds[m][i] if i < len(folds[m]) else None)}</td>"
                             for m in METRIC_NAMES)
            body.append(f"<tr><th>{escape(label)}</th>{cells}{values}</tr>")
        metric_heads = "".join(f"<th>{m}</th>" for m in METRIC_NAMES)
        parts.append(f"<h4>Thresholds and metrics per fold</h4><table class=\"folds\"><thead>"
                     f"<tr><th></th>{head}{metric_heads}</tr></thead><tbody>{''.join(body)}"
                     "</tbody></table>")
    facts = [("backbones", ", ".join(row.get("backbones") or []) or None),
             *((k, row.get(k)) for k in ("cam", "ensemble", "filter")),
             ("seeds", ", ".join(map(str, row.get("seeds") or [])) or None),
             ("reference", row.get("reference")), ("note", row.get("note"))]
    parts.append(_dl([(k, escape(_text(v))) for k, v in facts if v is not None]))
    if row.get("options") or row.get("dataset_options"):
        parts.append("<h4>Non-default options</h4>"
                     + _pre({"plugins": row.get("options") or {},
                             "dataset": row.get("dataset_options") or {}}))
    run = row.get("run") or {}
    if run:
        keys = ("date", "git_commit", "device", "torch", "wsss_bench", "python", "seed",
                "command")
        parts.append("<h4>Provenance</h4>"
                     + _dl([(k, escape(_text(run[k]))) for k in keys if k in run]))
        for key, title in (("effective", "In effect"), ("config", "Config (run.config)"),
                           ("plugins", "Plugin settings"), ("plugin_versions", "Plugins")):
            if run.get(key):
                parts.append(f"<details><summary>{title}</summary>{_pre(run[key])}</details>")
    if row.get("stats"):
        parts.append(f"<details><summary>Statistics</summary>{_pre(row['stats'])}</details>")
    return "".join(parts)


def _dl(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _text(value: Any) -> str:
    return "—" if value is None else str(value)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def _filter_values(row: dict[str, Any]) -> dict[str, list[str]]:
    """The parts a row is filtered by; an absent part is :data:`NONE`."""
    out = {k: [row[k]] if row.get(k) else [NONE] for k in ("cam", "ensemble", "filter")}
    out["backbone"] = list(row.get("backbones") or []) or [NONE]
    return out


def _sort_keys(row: dict[str, Any], rank: int, shown: str) -> list[Any]:
    """One sort key per table column (None, also for a missing or non-finite number, sorts
    last either way)."""
    st = row.get("stats") or {}
    ci = (st.get("ci") or {}).get(SORT_METRIC) or [None]
    numbers = [*((row["metrics"].get(m) or {}).get("mean") for m in METRIC_NAMES), ci[0],
               (st.get("rank") or {}).get("median"), (st.get("vs_best") or {}).get("diff"),
               (st.get("vs_empty") or {}).get("diff")]
    finite = [v if isinstance(v, int | float) and math.isfinite(v) else None for v in numbers]
    return [rank, shown.lower(), *finite, row.get("source", "measured")]


def _deviation(entry: dict[str, Any]) -> str:
    """One deviation of the board's header (topic, kind, datasets; paper, here, why)."""
    where = ", ".join(f"<code>{escape(str(d))}</code>" for d in entry.get("datasets") or ())
    parts = "".join(f"<li>{label}: {_inline(str(entry.get(key, '')))}</li>"
                    for label, key in (("Paper / authors' code", "paper"), ("wsss-bench", "here"),
                                       ("Why", "why")))
    return (f"<li><b>{escape(str(entry.get('topic', '')))}</b> ({escape(str(entry.get('kind')))}"
            f"; {where or 'all datasets'})<ul>{parts}</ul></li>")


def _gallery(board: dict[str, Any], paths: list[str]) -> str:
    """The figures grouped by the prefix of their file name (``overlays-…``, ``ranking``)."""
    if not paths:
        name = board.get("name") or board["dataset"]
        return ("<p class=\"empty\">No figures for this leaderboard yet: they are read from "
                f"<code>figures/{escape(name)}/*.png</code> beside this page.</p>")
    groups: dict[str, list[str]] = {}
    for path in paths:
        stem = path.rsplit("/", 1)[-1].removesuffix(".png")
        groups.setdefault(re.split(r"[-_.]", stem, maxsplit=1)[0], []).append(path)
    order = [*(g for g in GALLERY if g in groups), *sorted(g for g in groups if g not in GALLERY)]
    out = []
    for group in order:
        figs = "".join(
            f"<figure><a href=\"{escape(quote(p))}\"><img src=\"{escape(quote(p))}\" "
            f"alt=\"{escape(p.rsplit('/', 1)[-1])}\" loading=\"lazy\"></a><figcaption>"
            f"{escape(p.rsplit('/', 1)[-1])}</figcaption></figure>" for p in groups[group])
        out.append(f"<section class=\"group\" data-group=\"{escape(group)}\"><h3>"
                   f"{escape(GALLERY.get(group, group))}</h3><div class=\"grid\">{figs}</div>"
                   "</section>")
    return "".join(out)


def render_html(board: dict[str, Any], figures: list[str]) -> str:
    """The page: header facts, the sortable and filterable table with expandable rows, the
    metric definitions, deviations, and the gallery of ``figures`` (paths relative to the
    page)."""
    name = board.get("name") or board["dataset"]
    columns = ["#", *leaderboard.COLUMNS]
    numeric = {0, *range(2, 2 + len(METRIC_NAMES) + len(STAT_COLUMNS))}
    ascending = {0, 1, 3 + len(METRIC_NAMES), len(columns) - 1}  # rank columns and texts
    data: dict[str, Any] = {
        "columns": [{"name": c, "numeric": i in numeric,
                     "first": "asc" if i in ascending else "desc"}
                    for i, c in enumerate(columns)],
        "filters": list(FILTERS), "none": NONE, "rows": []}
    body = []
    for rank, row in enumerate(leaderboard.sort_rows(board["rows"]), start=1):
        shown = leaderboard.shown_name(row, board)
        cells = leaderboard._cells(row, board)
        ref = is_reported(row) or row["method"] == "Empty"
        data["rows"].append({"keys": _sort_keys(row, rank, shown), "reference": ref,
                             **_filter_values(row)})
        kind = "reported" if is_reported(row) else "measured"
        badge = " <span class=\"badge\">reported</span>" if is_reported(row) else ""
        tds = "".join(f"<td class=\"num\">{escape(c)}</td>" for c in cells[1:-1])
        body.append(
            f"<tr class=\"row {kind}\" id=\"r{rank}\" data-i=\"{rank - 1}\"><td class=\"num\">"
            f"{rank}</td><td class=\"method\"><button type=\"button\" class=\"toggle\" "
            f"aria-expanded=\"false\" aria-controls=\"d{rank}\" title=\"details\">▸</button> "
            f"<span class=\"name\">{escape(shown)}</span>{badge}</td>{tds}"
            f"<td>{escape(cells[-1])}</td></tr>\n"
            f"<tr class=\"details\" id=\"d{rank}\" hidden><td colspan=\"{len(columns)}\">"
            f"{_details(row)}</td></tr>\n")
    values = {f: sorted({v for r in data["rows"] if not r["reference"] for v in r[f]}
                        - {NONE}) + sorted({NONE} & {v for r in data["rows"] for v in r[f]})
              for f in FILTERS}
    selects = "".join(
        f"<label>{label} <select data-filter=\"{f}\"><option value=\"\">all</option>"
        + "".join(f"<option>{escape(v)}</option>" for v in values[f]) + "</select></label>"
        for f, label in FILTERS.items())
    heads = "".join(f"<th data-col=\"{i}\" aria-sort=\"none\" tabindex=\"0\">{escape(c)}</th>"
                    for i, c in enumerate(columns))
    notes = "".join(f"<li><code>{m}</code>: {escape(t)}</li>" for m, t in METRIC_NOTES.items())
    extra = ""
    if board.get("preset_overrides"):
        extra += ("<h2>This run overrides the preset</h2><ul>"
                  + "".join(f"<li>{_inline(str(x))}</li>" for x in board["preset_overrides"])
                  + "</ul>")
    if board.get("deviations"):
        extra += ("<details class=\"deviations\"><summary>Deviations from the paper (those "
                  "that concern this dataset)</summary><ul>"
                  + "".join(map(_deviation, board["deviations"])) + "</ul></details>")
    payload = (json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False)
               .replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))
    title = f"wsss-bench leaderboard: {name}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<link rel=\"icon\" href=\"data:,\">\n<title>{escape(title)}</title>\n"
            f"<style>{_CSS}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n<ul class=\"facts\">"
            + "".join(f"<li>{x}</li>" for x in _header(board))
            + f"</ul>\n{extra}<h2>Metrics</h2><ul class=\"metrics\">{notes}</ul>\n"
            f"<h2>Leaderboard</h2>\n<form class=\"filters\" onsubmit=\"return false\">{selects}"
            "<label><input type=\"checkbox\" id=\"keep-ref\" checked> keep <code>Empty</code> "
            "and reported rows in view</label> <output id=\"shown\"></output></form>\n"
            f"<div class=\"scroll\"><table id=\"board\"><thead><tr>{heads}</tr></thead>\n"
            f"<tbody>\n{''.join(body)}</tbody></table></div>\n"
            f"<h2>Figures</h2>\n<div id=\"gallery\">{_gallery(board, figures)}</div>\n"
            f"<script type=\"application/json\" id=\"board-data\">{payload}</script>\n"
            f"<script>{_JS}</script>\n</body></html>\n")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;
color:#1d232a;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.5em}h4{margin:.6em 0 .3em}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
code{background:#eef1f4;padding:0 .25em;border-radius:3px}
pre{background:#f6f8fa;padding:.6em;max-height:24em;overflow:auto}
.facts li,.metrics li{margin:.2em 0}
.filters{display:flex;flex-wrap:wrap;gap:.5em 1.2em;align-items:center;margin:.5em 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse}
#board th,#board td{border-bottom:1px solid #d8dee4;padding:.3em .55em;text-align:left;
vertical-align:top}
#board>thead th{position:sticky;top:0;background:#24527a;color:#fff;cursor:pointer;
white-space:nowrap;user-select:none}
#board>thead th[aria-sort=ascending]::after{content:" \\25B2"}
#board>thead th[aria-sort=descending]::after{content:" \\25BC"}
#board td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
#board tr.row>td{white-space:nowrap}
#board tr.row:nth-child(4n+1){background:#f7f9fb}
#board tr.reported{font-style:italic;color:#5b6570;background:#eceae4 !important}
.badge{font-style:normal;font-size:.78em;background:#8a6d3b;color:#fff;border-radius:3px;
padding:0 .35em}
button.toggle{border:1px solid #9aa7b3;background:#fff;border-radius:3px;cursor:pointer;
width:1.7em}
button.toggle[aria-expanded=true]{background:#24527a;color:#fff}
tr.details>td{background:#fbfcfd;padding:.5em 1.2em}
table.folds td,table.folds th{border:1px solid #d8dee4;padding:.15em .45em;text-align:right}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.4em 0}
dt{font-weight:600}dd{margin:0}
.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;max-width:32em}figure img{max-width:100%;border:1px solid #d8dee4}
figcaption{font-size:.85em;color:#5b6570}
.empty{color:#5b6570;font-style:italic}
"""

_JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("board-data").textContent);
  var tbody = document.querySelector("#board tbody");
  var mains = Array.prototype.slice.call(tbody.querySelectorAll("tr.row"));
  var heads = document.querySelectorAll("#board thead th");
  var state = {col: -1, dir: "asc"};

  function compare(a, b, col, dir) {
    var x = data.rows[a.dataset.i].keys[col], y = data.rows[b.dataset.i].keys[col];
    if (x === null || y === null) {
      if (x === y) { return a.dataset.i - b.dataset.i; }
      return x === null ? 1 : -1;  /* missing values last, either way */
    }
    var c = data.columns[col].numeric ? x - y : (x < y ? -1 : x > y ? 1 : 0);
    if (dir === "desc") { c = -c; }
    return c || a.dataset.i - b.dataset.i;
  }

  function sortBy(col) {
    var dir = state.col === col ? (state.dir === "asc" ? "desc" : "asc")
                                : data.columns[col].first;
    state = {col: col, dir: dir};
    mains.sort(function (a, b) { return compare(a, b, col, dir); });
    mains.forEach(function (tr) {
      tbody.appendChild(tr);
      tbody.appendChild(document.getElementById(tr.getAttribute("id").replace("r", "d")));
    });
    Array.prototype.forEach.call(heads, function (th, i) {
      th.setAttribute("aria-sort", i === col ? (dir === "asc" ? "ascending" : "descending")
                                             : "none");
    });
  }

  function details(tr) {
    return document.getElementById(tr.getAttribute("id").replace("r", "d"));
  }

  function applyFilters() {
    var keep = document.getElementById("keep-ref").checked, shown = 0;
    var chosen = {};
    document.querySelectorAll("select[data-filter]").forEach(function (s) {
      chosen[s.dataset.filter] = s.value;
    });
    mains.forEach(function (tr) {
      var row = data.rows[tr.dataset.i];
      var pass = (keep && row.reference) || data.filters.every(function (f) {
        return chosen[f] === "" || row[f].indexOf(chosen[f]) >= 0;
      });
      tr.hidden = !pass;
      var open = tr.querySelector("button.toggle").getAttribute("aria-expanded") === "true";
      details(tr).hidden = !(pass && open);
      if (pass) { shown += 1; }
    });
    document.getElementById("shown").textContent = shown + " of " + mains.length + " rows";
  }

  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () { sortBy(i); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(i); }
    });
  });
  mains.forEach(function (tr) {
    var button = tr.querySelector("button.toggle");
    button.addEventListener("click", function () {
      var open = button.getAttribute("aria-expanded") !== "true";
      button.setAttribute("aria-expanded", open ? "true" : "false");
      button.textContent = open ? "\\u25BE" : "\\u25B8";
      details(tr).hidden = !open;
    });
  });
  document.querySelectorAll("select[data-filter], #keep-ref").forEach(function (el) {
    el.addEventListener("change", applyFilters);
  });
  applyFilters();
})();
"""
