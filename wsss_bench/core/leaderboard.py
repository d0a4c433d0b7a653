"""Leaderboards: ``<dataset>.json`` is the source of truth, ``<dataset>.md`` is rendered from it."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from rich.table import Table

from wsss_bench.core import atomic, deviations, reported, statistics
from wsss_bench.core.metrics import METRIC_NAMES
from wsss_bench.errors import UsageError

SORT_METRIC = "paper_dsc"
METRIC_NOTES = {
    "paper_miou": "mean of background and foreground IoU, confusion pooled over all pixels "
                  "of the fold (the paper's mIoU, as SEAM/PuzzleCAM evaluate it)",
    "paper_dsc": "2m/(1+m) of paper_miou: the paper's \"DSC\" column is this, not a Dice",
    "dice_pooled": "foreground Dice from the pooled confusion counts",
    "dice_slice": "mean per-slice foreground Dice, empty against empty = 1",
    "dice_volume": "mean per-case 3-D foreground Dice",
}


def paths(leaderboard_dir: Path, dataset: str) -> tuple[Path, Path]:
    return Path(leaderboard_dir) / f"{dataset}.json", Path(leaderboard_dir) / f"{dataset}.md"


def load(path: Path) -> dict[str, Any]:
    """Read a leaderboard JSON file; a malformed file is a UsageError naming it."""
    try:
        board = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no leaderboard at {path}; run `wsss-bench run` first or pass "
                         f"--leaderboard-dir") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable leaderboard ({exc}); delete or restore it"
                         ) from None
    if not isinstance(board, dict) or not isinstance(board.get("rows"), list):
        raise UsageError(f"{path}: not a wsss-bench leaderboard (no 'rows' list); delete or "
                         f"restore it")
    return migrate(board)


def tagged(name: str | None, options: dict[str, dict[str, Any]], shown: str | None = None
           ) -> str:
    """``name`` (or ``shown``) with its non-default options: ``eigencam[center=false]``."""
    values = options.get(name or "", {})
    text = shown or name or ""
    if not values:
        return text
    return f"{text}[{','.join(f'{k}={_value_text(v)}' for k, v in values.items())}]"


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "+".join(map(str, value))
    return str(value)


def migrate(board: dict[str, Any]) -> dict[str, Any]:
    """A board written before rows carried their options: each measured row gets
    ``options`` (its plugins' recorded settings that differ from the installed plugins'
    registered values) and a method name that shows them, as a new run would name it. Rows
    already carrying ``options`` are left as they are."""
    old = [r for r in board["rows"] if not is_reported(r) and "options" not in r]
    if not old:
        return board
    from wsss_bench import options as opts
    from wsss_bench.registry import load_registry

    registry = load_registry()
    for row in old:
        recorded = (row.get("run") or {}).get("plugins") or {}
        parts = [board["dataset"], *(row.get("backbones") or []), row.get("cam"),
                 row.get("ensemble"), row.get("filter")]
        found: dict[str, dict[str, Any]] = {}
        for kind in ("datasets", "backbones", "cams", "ensembles", "filters"):
            for name in parts:
                if not name or name not in recorded or name in found:
                    continue
                try:
                    obj = registry.kind(kind).get_entry(name).obj
                except UsageError:  # another kind's plugin, or one not installed here
                    continue
                neutral = getattr(obj, "key_neutral", {})
                changed = {k: v for k, v in recorded[name].items()
                           if k in opts.option_fields(obj, kind)
                           and not (k in neutral and neutral[k] == v)
                           and v != json.loads(json.dumps(getattr(obj, k), default=str))}
                found[name] = changed
        if any(p in recorded and p not in found for p in parts if p):
            continue  # a plugin not installed here: left for a later read to migrate
        row["dataset_options"] = found.pop(board["dataset"], {})
        row["options"] = {k: v for k, v in found.items() if v}
        if row["options"]:
            row["method"] = _renamed(row)
    return board


def row_key(row: dict[str, Any]) -> str:
    """A row's identity in its board: the method, its plugins' and the dataset's non-default
    options (rows of other data are other rows, ``Empty`` included)."""
    options = {k: v for k, v in (("options", row.get("options")),
                                 ("dataset", row.get("dataset_options"))) if v}
    return row["method"] + (f" · {json.dumps(options, sort_keys=True)}" if options else "")


def shown_name(row: dict[str, Any], board: dict[str, Any]) -> str:
    """The method as a table shows it: with the dataset's options when the board holds rows
    of more than one dataset configuration (``Empty · phantom[noise=0.05]``)."""
    configs = {json.dumps(r.get("dataset_options") or {}, sort_keys=True)
               for r in board["rows"] if not is_reported(r)}
    options = row.get("dataset_options") or {}
    if len(configs) < 2 or not options:
        return row["method"]
    return f"{row['method']} · {tagged(board['dataset'], {board['dataset']: options})}"


def _renamed(row: dict[str, Any]) -> str:
    """An old row's method name with its plugins' options shown."""
    options = row["options"]
    if not row.get("backbones"):
        return row["method"]
    core, cam, filt = row["method"].split(" / ")
    nets = [tagged(b, options) for b in row["backbones"]]
    if row.get("ensemble"):
        core = f"{tagged(row['ensemble'], options, core.split('(', 1)[0])}({','.join(nets)})"
    else:
        core = nets[0]
    return f"{core} / {tagged(cam, options)} / {tagged(filt, options)}"


def find_row(board: dict[str, Any], name: str, where: Path | str) -> dict[str, Any]:
    """The row ``name`` names: its method as a table shows it (:func:`shown_name`), its
    method, or its :func:`row_key`; a UsageError naming the board when none or several."""
    for pick in (lambda r: shown_name(r, board), lambda r: r["method"], row_key):
        found = [r for r in board["rows"] if pick(r) == name]
        if len(found) == 1:
            return found[0]
    shown = [shown_name(r, board) for r in sort_rows(board["rows"]) if not is_reported(r)]
    raise UsageError(f"{where}: no single row named {name!r}; its rows: "
                     + "; ".join(repr(s) for s in shown))


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (-r["metrics"][SORT_METRIC]["mean"], row_key(r)))


def merge(old_rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """New rows replace old rows with the same key (:func:`row_key`); other old rows stay."""
    replaced = {row_key(row) for row in new_rows}
    return sort_rows([r for r in old_rows if row_key(r) not in replaced] + list(new_rows))


def update(leaderboard_dir: Path, dataset: str, new_rows: list[dict],
           header: dict[str, Any], name: str | None = None,
           bootstrap: statistics.Bootstrap | None = None) -> dict[str, Any]:
    """Merge ``new_rows`` (and the paper's reported rows for the dataset) into the stored
    leaderboard ``<name or dataset>.json`` under a lock, compute every row's statistics over
    the merged board (``bootstrap``, default :class:`statistics.Bootstrap`), and rewrite JSON,
    markdown and the web page (:mod:`wsss_bench.core.webpage`).

    A header field that is absent or None keeps the stored value (``command``, ``deviations``,
    ...); a new ``split`` replaces seed and file together; ``preset_overrides`` and
    ``deviations`` describe the command's preset, so a header that brings a new ``command``
    replaces them too (dropping them when it has none: a run without a preset)."""
    name = name or dataset
    json_path, md_path = paths(leaderboard_dir, name)
    with atomic.locked(json_path.with_name(f".{name}.lock")):
        old_board = load(json_path) if json_path.exists() else {"rows": []}
        rows = merge(old_board["rows"], [*new_rows, *reported.rows(dataset)])
        kept = {k: v for k, v in old_board.items() if k not in ("rows", "dataset", "name")}
        fresh = {k: v for k, v in header.items() if v is not None}
        if "split" in header:  # a new split replaces seed and file together
            fresh.update({k: header.get(k) for k in ("split", "split_seed", "split_file")})
        if fresh.get("command") is not None:  # overrides and deviations describe the command
            kept.pop("preset_overrides", None)
            kept.pop("deviations", None)
        board = {"dataset": dataset, "name": name, **kept, **fresh, "rows": rows}
        statistics.annotate(board, bootstrap or statistics.Bootstrap())
        board["rows"] = board.pop("rows")  # rows last, after the header
        atomic.write_text(json_path, dumps(board))
        atomic.write_text(md_path, render_markdown(board))
        from wsss_bench.core import webpage  # it renders with this module's helpers

        atomic.write_text(md_path.with_name(f"{name}.html"),
                          webpage.render_html(board, board.get("figures") or []))
    return board


def dumps(board: dict[str, Any]) -> str:
    """The board as indented JSON, each per-case table on one line (they are long)."""
    tables: list[str] = []

    def compact(row: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(row.get("per_case"), list):
            return row
        marks = []
        for table in row["per_case"]:
            marks.append(f"\0per_case{len(tables)}\0")
            tables.append(json.dumps(table))
        return {**row, "per_case": marks}

    text = json.dumps({**board, "rows": [compact(r) for r in board["rows"]]}, indent=2)
    return _MARK.sub(lambda m: tables[int(m.group(1))], text) + "\n"


_MARK = re.compile(r'"\\u0000per_case(\d+)\\u0000"')


def fmt(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return "—"
    if stat.get("std") is None:
        return f"{stat['mean']:.4f}"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def is_reported(row: dict) -> bool:
    return row.get("source") == "reported"


def _cells(row: dict, board: dict[str, Any], markdown: bool = False) -> list[str]:
    method = shown_name(row, board)
    if is_reported(row) and markdown:
        method = f"*{method}*"
    source = row.get("source", "measured")
    if is_reported(row):
        source = f"reported, {row.get('reference', 'paper').rsplit(', ', 1)[-1]}"
    if row.get("note") and markdown:  # e.g. a reported DSC that does not follow from its mIoU
        source = f"{source}; note: {row['note']}"
    return [method, *(fmt(row["metrics"].get(m)) for m in METRIC_NAMES),
            *stat_cells(row, board), source]


def p_text(p: float, board: dict[str, Any]) -> str:
    """A p-value as shown: ``<0.001`` when no resample of ``board``'s bootstrap reached 0."""
    if p == 0:
        resamples = (board.get("statistics") or {}).get("resamples") or 0
        return f"<{1 / resamples:.2g}" if resamples else "0"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.2g}"


def stat_cells(row: dict[str, Any], board: dict[str, Any]) -> list[str]:
    """The row's statistics as the tables show them (:data:`STAT_COLUMNS`); "—" without."""
    st = row.get("stats")
    if not st:
        return ["—"] * len(STAT_COLUMNS)
    lo, hi = st["ci"][SORT_METRIC]
    rank = st["rank"]
    best = st["vs_best"]
    top = ("best" if best["best"] else
           f"{'yes' if best['top_group'] else 'no'} (p {p_text(best['p_holm'], board)})")
    empty = st.get("vs_empty")
    beats = ("—" if empty is None else
             f"{'yes' if empty['beats'] else 'no'} (p {p_text(empty['p_holm'], board)})")
    return [f"{lo:.4f}–{hi:.4f}",
            f"{rank['median']:g} [{rank['interval'][0]}–{rank['interval'][1]}]", top, beats]


def render_csv(board: dict[str, Any]) -> str:
    """One line per row: rank, method, source, mean and std of each metric, the parts."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "method", "source",
                     *(f"{m}_{s}" for m in METRIC_NAMES
                       for s in ("mean", "std", "ci_low", "ci_high")),
                     *CSV_STATS, "backbones", "cam", "ensemble", "filter", "seeds", "folds"])
    for rank, row in enumerate(sort_rows(board["rows"]), start=1):
        values = []
        for m in METRIC_NAMES:
            st = row["metrics"].get(m) or {}
            values += [st.get("mean"), st.get("std"),
                       *(((row.get("stats") or {}).get("ci") or {}).get(m) or [None, None])]
        writer.writerow([rank, shown_name(row, board), row.get("source", "measured"),
                         *("" if v is None else repr(v) for v in values),
                         *("" if v is None else repr(v) for v in _csv_stats(row)),
                         "+".join(row.get("backbones") or []), row.get("cam") or "",
                         row.get("ensemble") or "", row.get("filter") or "",
                         "+".join(map(str, row.get("seeds") or [])),
                         len((row["metrics"].get("paper_dsc") or {}).get("folds") or [])])
    return out.getvalue()


CSV_STATS = ["rank_median", "rank_low", "rank_high", "vs_best_diff", "vs_best_p_holm",
             "top_group", "vs_empty_diff", "vs_empty_p_holm", "beats_empty"]


def _csv_stats(row: dict[str, Any]) -> list[Any]:
    """The values of :data:`CSV_STATS` (None where the row has no statistics)."""
    st = row.get("stats")
    if not st:
        return [None] * len(CSV_STATS)
    best, empty = st["vs_best"], st.get("vs_empty") or {}
    return [st["rank"]["median"], *st["rank"]["interval"], best["diff"], best["p_holm"],
            best["top_group"], empty.get("diff"), empty.get("p_holm"), empty.get("beats")]


def _preprocessing(board: dict[str, Any]) -> str | None:
    """The dataset's settings and the slice size, from the newest measured row."""
    measured = [r for r in board["rows"] if not is_reported(r) and r.get("run")]
    if not measured:
        return None
    run = max(measured, key=lambda r: r["run"].get("date") or "")["run"]
    settings = (run.get("plugins") or {}).get(board["dataset"], {})
    eff = run.get("effective") or {}
    parts = [f"{k}={v}" for k, v in settings.items() if k != "needs_data_dir"]
    if eff.get("image_size"):
        parts.append(f"slices {eff.get('in_chans', '?')}×{'×'.join(map(str, eff['image_size']))}")
    return ", ".join(parts) if parts else None


STAT_COLUMNS = [f"{SORT_METRIC} 95% CI", "rank [95% CI]", "top group", "beats Empty"]
COLUMNS = ["method", *METRIC_NAMES, *STAT_COLUMNS, "source"]


def statistics_notes(board: dict[str, Any]) -> list[str]:
    """The header lines that say how the statistics columns were made."""
    st = board.get("statistics")
    if not st:
        return ["- No statistics: made with `--bootstrap 0` or before rows kept per-case "
                "results (\"—\")."]
    level = f"{st['level'] * 100:g} %"
    return [f"- Uncertainty ({st['method']}, {st['resamples']} resamples, seed {st['seed']}): "
            f"the validation cases of each fold are resampled with replacement (cases, not "
            f"slices: a case's slices are not independent), every metric recomputed exactly "
            f"from per-case counts, folds and seeds averaged; every row sees the same "
            f"resamples. `{STAT_COLUMNS[0]}`: percentile interval. `rank`: median "
            f"rank [{level} interval] over the resamples. `top group`: not significantly "
            f"worse than the best row (`yes`; two-sided bootstrap p-value, Holm-adjusted "
            f"across rows, ≥ {1 - st['level']:.2g}). `beats Empty`: `yes` when significantly "
            f"better than `Empty` (Holm-adjusted p < {1 - st['level']:.2g}). Rows "
            f"are compared only with rows scored on the same cases and data; p-values shown "
            f"are Holm-adjusted (`<{1 / st['resamples']:.2g}`: no resample reached 0); the "
            f"JSON has every difference with its interval; \"—\": no per-case results "
            f"(reported rows, older runs)."]


FIGURE_KINDS = {"overlays": "CAM overlays", "landscape": "threshold landscapes",
                "curves": "training curves", "ranking": "ranking"}


def figure_links(board: dict[str, Any]) -> list[str]:
    """The board's figures (relative links, as ``figures`` in the JSON lists them): the
    ranking shown, the others linked."""
    figures = board.get("figures") or []
    if not figures:
        return []
    lines = ["", "Figures (drawn from the run's stored units; `wsss-bench figures` redraws "
             "them):", ""]
    for link in figures:
        stem = link.rsplit("/", 1)[-1].removesuffix(".png")
        kind = FIGURE_KINDS.get(stem.split("-", 1)[0], "figure")
        lines.append(f"- {kind}: [{stem}]({link})")
    ranking = [f for f in figures if f.endswith("/ranking.png")]
    if ranking:
        lines += ["", f"![ranking]({ranking[0]})"]
    return lines


def render_markdown(board: dict[str, Any]) -> str:
    """The markdown leaderboard: header (data, split, metric definitions, provenance) + table."""
    name = board.get("name") or board["dataset"]
    lines = [f"# wsss-bench leaderboard: `{name}`", ""]
    if board.get("command"):
        lines.append(f"- Reproduce: `{board['command']}`")
    lines.append(f"- Dataset: `{board['dataset']}`")
    if prep := _preprocessing(board):
        lines.append(f"- Preprocessing: {prep}")
    split = board.get("split")
    if split:
        made = (f"from `{board['split_file']}`" if board.get("split_file")
                else f"seed {board.get('split_seed')}")
        lines.append(f"- Split: patient-level {len(split)}-fold cross-validation "
                     f"({made}); validation cases per fold: "
                     + "; ".join(f"fold {i}: {', '.join(f)}" for i, f in enumerate(split)))
    lines.append("- Method: `ensemble(backbones) / CAM / filter`, or one backbone; `Empty` "
                 "predicts no lesion anywhere.")
    lines.append(f"- Rows sorted by `{SORT_METRIC}`; mean ± std (population) over folds (and "
                 "seeds); every row's JSON entry records its thresholds, config and provenance.")
    if any(is_reported(r) for r in board["rows"]):
        lines.append("- *Italic* rows (`paper: …`, source `reported`) are the numbers the paper "
                     "reports on the full dataset, copied, not measured here: only `paper_dsc` "
                     "and `paper_miou` (its DSC and mIoU columns), no std.")
    lines += statistics_notes(board)
    if board.get("deviations"):
        lines.append("- Where this run differs from the paper and the authors' code: "
                     "\"Deviations from the paper\", below the table.")
    if board.get("preset_overrides"):
        lines += ["", "This run overrides the preset:", ""]
        lines += [f"- {item}" for item in board["preset_overrides"]]
    lines += ["", "Metrics:", ""]
    lines += [f"- `{name}`: {note}" for name, note in METRIC_NOTES.items()]
    lines += ["", "| # | " + " | ".join(COLUMNS) + " |",
              "|---|" + "|".join("---" for _ in COLUMNS) + "|"]
    for rank, row in enumerate(sort_rows(board["rows"]), start=1):
        lines.append(f"| {rank} | " + " | ".join(_cells(row, board, markdown=True)) + " |")
    lines += figure_links(board)
    lines += ["", "Provenance (rows made by the same run share a line):", ""]
    runs: dict[str, list[int]] = {}
    for rank, row in enumerate(sort_rows(board["rows"]), start=1):
        if is_reported(row):
            continue
        run = row.get("run") or {}
        key = (f"{run.get('date')}, commit {run.get('git_commit')}, {run.get('device')}, "
               f"torch {run.get('torch')}, wsss-bench {run.get('wsss_bench')}, "
               f"seed {run.get('seed')}, weights "
               f"{', '.join(sorted(set((run.get('effective') or {}).get('weights', {}).values())))}"
               + (f"; `{run['command']}`" if run.get("command") else ""))
        runs.setdefault(key, []).append(rank)
    for key, ranks in runs.items():
        lines.append(f"- rows {', '.join(map(str, ranks))}: {key}")
    if board.get("deviations"):
        lines += ["", "Deviations from the paper (those that concern this dataset; the README "
                  "lists all):", "", deviations.render_markdown(board["deviations"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def rich_table(board: dict[str, Any]) -> Table:
    name = board.get("name") or board["dataset"]
    st = board.get("statistics")
    how = (f"; {st['level'] * 100:g} % intervals, ranks and tests: paired case bootstrap, "
           f"{st['resamples']} resamples" if st else "")
    table = Table(title=f"wsss-bench leaderboard: {name} (mean ± std over folds{how})")
    table.add_column("#", justify="right")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in METRIC_NAMES else "left",
                         no_wrap=col == "method")
    for rank, row in enumerate(sort_rows(board["rows"]), start=1):
        table.add_row(str(rank), *_cells(row, board),
                      style="italic dim" if is_reported(row) else None)
    return table
