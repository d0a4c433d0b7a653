"""Leaderboards: ``<dataset>.json`` is the source of truth, ``<dataset>.md`` is rendered from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from wsss_bench import atomic
from wsss_bench.errors import UsageError
from wsss_bench.metrics import METRIC_NAMES

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
    return board


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (-r["metrics"][SORT_METRIC]["mean"], r["method"]))


def merge(old_rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """New rows replace old rows with the same ``method`` key; other old rows stay."""
    replaced = {row["method"] for row in new_rows}
    return sort_rows([r for r in old_rows if r["method"] not in replaced] + list(new_rows))


def update(leaderboard_dir: Path, dataset: str, new_rows: list[dict],
           header: dict[str, Any]) -> dict[str, Any]:
    """Merge ``new_rows`` into the stored leaderboard (locked) and rewrite JSON and markdown."""
    json_path, md_path = paths(leaderboard_dir, dataset)
    with atomic.locked(json_path.with_name(f".{dataset}.lock")):
        old = load(json_path)["rows"] if json_path.exists() else []
        board = {"dataset": dataset, **header, "rows": merge(old, new_rows)}
        atomic.write_text(json_path, json.dumps(board, indent=2) + "\n")
        atomic.write_text(md_path, render_markdown(board))
    return board


def fmt(stat: dict[str, Any]) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def _cells(row: dict) -> list[str]:
    return [row["method"], *(fmt(row["metrics"][m]) for m in METRIC_NAMES),
            row.get("source", "measured")]


COLUMNS = ["method", *METRIC_NAMES, "source"]


def render_markdown(board: dict[str, Any]) -> str:
    """The markdown leaderboard: header (data, split, metric definitions, provenance) + table."""
    lines = [f"# wsss-bench leaderboard: `{board['dataset']}`", ""]
    split = board.get("split")
    if split:
        made = (f"from `{board['split_file']}`" if board.get("split_file")
                else f"seed {board.get('split_seed')}")
        lines.append(f"- Split: patient-level {len(split)}-fold cross-validation "
                     f"({made}); validation cases per fold: "
                     + "; ".join(f"fold {i}: {', '.join(f)}" for i, f in enumerate(split)))
    if board.get("command"):
        lines.append(f"- Last command: `{board['command']}`")
    lines.append("- Method: `ensemble(backbones) / CAM / filter`, or one backbone; `Empty` "
                 "predicts no lesion anywhere.")
    lines.append(f"- Rows sorted by `{SORT_METRIC}`; mean ± std (population) over folds; "
                 "every row's JSON entry records its thresholds, config and provenance.")
    lines += ["", "Metrics:", ""]
    lines += [f"- `{name}`: {note}" for name, note in METRIC_NOTES.items()]
    lines += ["", "| # | " + " | ".join(COLUMNS) + " |",
              "|---|" + "|".join("---" for _ in COLUMNS) + "|"]
    for rank, row in enumerate(sort_rows(board["rows"]), start=1):
        lines.append(f"| {rank} | " + " | ".join(_cells(row)) + " |")
    lines += ["", "Provenance (rows made by the same run share a line):", ""]
    runs: dict[str, list[int]] = {}
    for rank, row in enumerate(sort_rows(board["rows"]), start=1):
        run = row.get("run") or {}
        key = (f"{run.get('date')}, commit {run.get('git_commit')}, {run.get('device')}, "
               f"torch {run.get('torch')}, wsss-bench {run.get('wsss_bench')}, "
               f"seed {run.get('seed')}")
        runs.setdefault(key, []).append(rank)
    for key, ranks in runs.items():
        lines.append(f"- rows {', '.join(map(str, ranks))}: {key}")
    return "\n".join(lines) + "\n"


def rich_table(board: dict[str, Any]) -> Table:
    table = Table(title=f"wsss-bench leaderboard: {board['dataset']} (mean ± std over folds)")
    table.add_column("#", justify="right")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in METRIC_NAMES else "left",
                         no_wrap=col == "method")
    for rank, row in enumerate(sort_rows(board["rows"]), start=1):
        table.add_row(str(rank), *_cells(row))
    return table
