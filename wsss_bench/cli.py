"""The ``wsss-bench`` command line: ``plugins``, ``run``, ``download``, ``leaderboard``.

(Over 300 lines because every ``run`` flag and its help text is declared here, next to the
one-line error handling of the whole command.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import typing
import warnings
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import wsss_bench
from wsss_bench.errors import RunIncomplete, UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text}"
                                         ) from None


def _board_arguments(parser: ArgumentParser, d: Any) -> None:
    """``--dataset`` and ``--leaderboard-dir``: which stored leaderboard a command reads."""
    parser.add_argument("--dataset", required=True,
                        help="dataset name (or the --leaderboard-name the run used)")
    parser.add_argument("--leaderboard-dir", default=d.leaderboard_dir,
                        help=f"where the leaderboards are (default {d.leaderboard_dir})")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> ArgumentParser:
    from wsss_bench.pipeline.settings import RunConfig

    d = RunConfig()
    parser = ArgumentParser(prog="wsss-bench", description=(
        "Benchmark weakly supervised segmentation from image-level labels: train classifiers, "
        "make CAMs, ensemble and filter them, calibrate thresholds on training folds and score "
        "on held-out folds."))
    parser.add_argument("--version", action="version",
                        version=f"wsss-bench {wsss_bench.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    p = sub.add_parser("plugins", help="list every installed plugin object",
                       description="List every dataset, backbone, CAM, ensemble, filter and "
                                   "executor; --options lists what -o NAME.KEY=VALUE can set.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list instead of a table (with each plugin's options)")
    p.add_argument("--options", action="store_true",
                   help="list each plugin's options: name, type, default and help")

    r = sub.add_parser("run", help="run the benchmark and update the leaderboard",
                       argument_default=argparse.SUPPRESS,  # only given flags override
                       description="Evaluate each backbone alone and each ensemble over all "
                                   "listed backbones, for every CAM and filter, by patient-level "
                                   "k-fold cross-validation; print and store the leaderboard. "
                                   "Settings: defaults < --preset < --config < flags.")
    r.add_argument("--preset", help="the authors' settings for the dataset: paper")
    r.add_argument("--config", metavar="TOML",
                   help="a TOML file with any of these settings (flags override it)")
    r.add_argument("--dataset", help=f"dataset plugin (default {d.dataset})")
    r.add_argument("--data-dir",
                   help="folder with the dataset's files (default $WSSS_BENCH_DATA, else "
                        "~/.cache/wsss-bench/data); missing downloadable data is fetched there")
    r.add_argument("--backbones", type=_names,
                   help=f"comma-separated backbones (default {','.join(d.backbones)})")
    r.add_argument("--cams", type=_names,
                   help=f"comma-separated CAM methods (default {','.join(d.cams)})")
    r.add_argument("--ensembles", type=_names,
                   help=f"comma-separated ensembles over all backbones; '' for none "
                        f"(default {','.join(d.ensembles)})")
    r.add_argument("--filters", type=_names,
                   help=f"comma-separated filters (default {','.join(d.filters)})")
    r.add_argument("--methods", type=_names,
                   help="comma-separated end-to-end methods that train their own network "
                        "(seam, wss-cmer), evaluated beside the CAM rows (default none)")
    r.add_argument("--folds", type=int, help=f"k of k-fold (default {d.folds})")
    r.add_argument("--folds-file", metavar="JSON",
                   help="use a published patient split instead of the seeded one: "
                        "{\"folds\": [[case ids], ...]} (e.g. a folds.json of an earlier run)")
    r.add_argument("--workers", type=_positive_int,
                   help="processes that decode a file dataset into the slice cache "
                        "(default: the CPU cores, at most 8)")
    r.add_argument("--epochs", type=_positive_int, help=f"training epochs (default {d.epochs})")
    r.add_argument("--batch-size", type=_positive_int,
                   help=f"training batch size (default {d.batch_size})")
    r.add_argument("--cam-batch-size", type=_positive_int,
                   help=f"batch size for CAM generation (default {d.cam_batch_size})")
    r.add_argument("--image-size", type=_positive_int,
                   help="resize slices to N×N (default: the dataset's own size)")
    r.add_argument("--lr", type=float, help=f"SGD learning rate (default {d.lr})")
    r.add_argument("--cam-target", choices=["predicted", "positive"],
                   help="class the CAM explains: the lesion class, or each slice's predicted "
                        f"class as in the paper's code (default {d.cam_target})")
    r.add_argument("--gate", action=argparse.BooleanOptionalAction,
                   help="zero the CAM of slices the classifier predicts lesion-free, as "
                        "WSS-CMER does (default off)")
    r.add_argument("--output-stride", choices=["auto", "8", "16", "32"],
                   help="backbone output stride: auto = 32 unless the CAM grid would have "
                        "fewer than 4 cells a side (default auto)")
    r.add_argument("--precise-bn", choices=["on", "off"],
                   help="recompute BatchNorm statistics of the trained weights (default "
                        f"{d.precise_bn}; off = the running averages, as the authors)")
    r.add_argument("--calibrate", choices=["per-fold", "across-folds"],
                   help="thresholds chosen per fold on its training slices, or one tuple for "
                        "all folds maximising the mean of their training grids (the paper's "
                        f"Fig. 6; default {d.calibrate})")
    r.add_argument("--threshold-step", type=float,
                   help=f"threshold grid step; 1/step must be an integer "
                        f"(default {d.threshold_step})")
    r.add_argument("--select-by",
                   help=f"metric that chooses the thresholds (default {d.select_by})")
    r.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to train and make CAMs (default auto: CUDA when available)")
    r.add_argument("--workdir",
                   help=f"folder for run artifacts such as folds.json (default {d.workdir})")
    r.add_argument("--leaderboard-dir",
                   help=f"where <dataset>.json and .md go (default {d.leaderboard_dir})")
    r.add_argument("--seeds", type=_ints,
                   help="training seeds, e.g. 0,1,2: rows are mean ± std over seeds × folds "
                        "(default: --seed)")
    r.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                   help="start from timm's hub weights when they can be reached")
    r.add_argument("--weights", metavar="DIR",
                   help="start from local checkpoints in DIR (<model>.safetensors or .pth)")
    r.add_argument("--force", type=_names, metavar="STAGES",
                   help="recompute these stages and all later ones: prepare, train, cams, "
                        "evaluate")
    r.add_argument("--amp", choices=["auto", "on", "off"],
                   help="mixed precision (default auto: on CUDA only)")
    r.add_argument("--channels-last", choices=["auto", "on", "off"],
                   help="NHWC memory format (default auto: on CUDA only)")
    r.add_argument("--executor", metavar="NAME",
                   help="where units run: local (default, this process), processes (worker "
                        "processes), ray (a Ray cluster; the extra wsss-bench[ray]) or a "
                        "plugin's; options with -o NAME.KEY=VALUE (see `wsss-bench plugins`)")
    r.add_argument("--gpus", type=int,
                   help="shorthand for --executor processes with one worker per GPU, on this "
                        "many GPUs")
    r.add_argument("--devices", type=_names,
                   help="the processes executor's devices, one worker each (e.g. cuda:0,cuda:2"
                        " or cpu,cpu)")
    r.add_argument("--leaderboard-name", metavar="NAME",
                   help="write <NAME>.json/.md instead of <dataset>.json/.md")
    r.add_argument("-o", "--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="set a plugin option, e.g. phantom.n_cases=12 (repeatable)")
    r.add_argument("--figures", action=argparse.BooleanOptionalAction,
                   help="draw the run's figures into <leaderboard-dir>/figures/<name>/ "
                        "(default: on)")
    r.add_argument("--bootstrap", type=_count, metavar="N",
                   help=f"resamples of the leaderboard's intervals, tests and rank intervals "
                        f"(default {d.bootstrap}; 0: none)")
    r.add_argument("-q", "--quiet", action="store_true", default=False,
                   help="no progress bars or summaries")

    c = sub.add_parser("clean", help="remove artifacts no run references",
                       description="Remove units and slice caches that no run manifest in the "
                                   "workdir references, and folders left by killed runs.")
    c.add_argument("--workdir", default=d.workdir, help=f"the run folder (default {d.workdir})")
    c.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")

    dl = sub.add_parser("download", help="download and unpack a dataset",
                        description="Download a dataset's archive (resumable, md5-verified) and "
                                    "unpack it safely into the data folder.")
    dl.add_argument("dataset", help="dataset name, e.g. decathlon or msd-brain")
    dl.add_argument("--data-dir", default=None,
                    help="where to put it (default $WSSS_BENCH_DATA, else "
                         "~/.cache/wsss-bench/data)")
    dl.add_argument("-o", "--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                    help="set a dataset option, e.g. decathlon.url=URL of a mirror")
    dl.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    lb = sub.add_parser("leaderboard", help="print a stored leaderboard",
                        description="Print the leaderboard stored for a dataset.")
    _board_arguments(lb, d)
    lb.add_argument("--format", choices=["table", "md", "json", "csv", "html"], default="table",
                    help="table (rich, default), md, json, csv or html (the web page)")
    lb.add_argument("--bootstrap", type=_count, metavar="N",
                    help="recompute the statistics with N resamples for this view (0: none; "
                         "default: as stored)")

    fg = sub.add_parser("figures", help="draw a leaderboard's figures from its run's units",
                        description="Draw the figures of a stored leaderboard (CAM overlays, "
                                    "threshold landscapes, training curves, ranking) from the "
                                    "units its run stored: the board's recorded command is "
                                    "replayed without computing anything.")
    _board_arguments(fg, d)
    fg.add_argument("--workdir", default=None,
                    help="the run folder holding its units (default: the command's, else "
                         f"{d.workdir})")
    fg.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")

    cp = sub.add_parser("compare", help="paired comparison of two leaderboard rows",
                        description="Compare two stored rows of a leaderboard on every metric: "
                                    "the difference A - B with its bootstrap interval and "
                                    "p-value (cases resampled within folds, both rows on the "
                                    "same resamples), and how many cases each row wins.")
    _board_arguments(cp, d)
    cp.add_argument("method_a", metavar="METHOD_A", help="a row's method, as the board shows it")
    cp.add_argument("method_b", metavar="METHOD_B", help="another row's method")
    cp.add_argument("--bootstrap", type=_positive_int, default=d.bootstrap, metavar="N",
                    help=f"resamples (default {d.bootstrap})")
    cp.add_argument("--format", choices=["table", "json"], default="table",
                    help="table (default) or json")
    return parser


def cmd_plugins(args: argparse.Namespace, out: Console) -> None:
    from wsss_bench import options
    from wsss_bench.registry import load_registry

    registry = load_registry()
    entries = [{"kind": e.kind, "name": e.name, "source": e.source, "description": e.description,
                "options": options.describe(e.obj, e.kind)} for e in registry.entries()]
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    if args.options:
        out.print(_options_table(entries))
        return
    table = Table(title="wsss-bench plugins")
    for col in ("kind", "name", "source", "description"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["kind"], e["name"], e["source"], e["description"])
    out.print(table)


def _options_table(entries: list[dict[str, Any]]) -> Table:
    """One row per option (one per plugin without options): set with -o NAME.OPTION=VALUE."""
    table = Table(title="wsss-bench plugin options (set with -o NAME.OPTION=VALUE)")
    for col in ("kind", "name", "option", "type", "default", "help"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if not e["options"]:
            none = ("(a family: each member it resolves has its own options)"
                    if e["name"].endswith(":") else "(no options)")
            table.add_row(e["kind"], e["name"], "-", "", "", none)
        for o in e["options"]:
            default = _option_text(o["default"])
            if o["value"] != o["default"]:
                default += f" (registered: {_option_text(o['value'])})"
            table.add_row(e["kind"], e["name"], o["name"], o["type"], default, o["help"])
    return table


def _option_text(value: Any) -> str:
    """An option value as typed after ``-o NAME.KEY=``: lists comma-separated, "" shown."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return '""' if value == "" else str(value)


def cmd_run(args: argparse.Namespace, out: Console, argv: Sequence[str]) -> int:
    """Run, publish, print the leaderboard; 1 when some unit failed."""
    from wsss_bench.core import leaderboard
    from wsss_bench.core.progress import Reporter
    from wsss_bench.pipeline.publish import run_and_publish
    from wsss_bench.registry import load_registry

    config = run_config(args)
    args.workdir = config.workdir  # for the resume hint after Ctrl-C
    reporter = Reporter(quiet=args.quiet)
    command = "wsss-bench " + shlex.join(argv)
    try:
        board, failed = run_and_publish(config, load_registry(), reporter, command=command), []
    except RunIncomplete as exc:
        board, failed = exc.board, exc.lines
    out.print(leaderboard.rich_table(board))
    json_path, md_path = leaderboard.paths(Path(config.leaderboard_dir),
                                           config.leaderboard_name or config.dataset)
    reporter.summary(f"leaderboard written to {json_path}, {md_path} and "
                     f"{md_path.with_suffix('.html')}"
                     + (f"; figures in {Path(config.leaderboard_dir) / 'figures' / json_path.stem}"
                        if config.figures else ""))
    for line in failed:
        print(f"wsss-bench run: failed: {line}", file=sys.stderr)
    if failed:
        print(f"wsss-bench run: error: {len(failed)} unit(s) failed or were skipped; the other "
              f"units are stored and their methods' rows published, the failed methods keep "
              f"their previous rows: fix the plugin named above and run the same command "
              f"again", file=sys.stderr)
        return 1
    return 0


def run_config(args: argparse.Namespace):
    """The effective RunConfig: defaults < preset < config file < flags."""
    from wsss_bench.core import presets
    from wsss_bench.options import parse
    from wsss_bench.pipeline.settings import RunConfig

    kinds = {f.name: f for f in fields(RunConfig)}
    flags = {k: v for k, v in vars(args).items() if k in kinds}
    flag_options: dict[str, dict[str, str]] = {}
    for text in args.option:
        plugin, key, value = parse(text)
        flag_options.setdefault(plugin, {})[key] = value
    from_file = (presets.read_config(Path(args.config), set(kinds) - {"options"})
                 if getattr(args, "config", None) else {})
    dataset = flags.get("dataset") or from_file.get("dataset") or RunConfig.dataset
    if not isinstance(dataset, str):
        raise UsageError(f"--config {args.config}: dataset = {dataset!r}: expected a name")
    name = flags.get("preset") or from_file.get("preset")
    if name is not None and not isinstance(name, str):
        raise UsageError(f"--config {args.config}: preset = {name!r}: expected a name")
    from_preset = presets.preset(name, dataset) if name else {}
    values: dict[str, Any] = {}
    for layer, where in ((from_preset, "--preset"), (from_file, f"--config {args.config}"
                                                     if from_file else ""), (flags, "")):
        for key, value in layer.items():
            if key != "options":
                values[key] = _coerce(key, value, RunConfig, where)
    values["preset"] = name
    config = RunConfig(**values)
    preset_options = presets.options_for_used(from_preset.get("options"), config)
    options = presets.merge_options(preset_options, from_file.get("options"), flag_options)
    return replace(config, options=options)


def _coerce(key: str, value: Any, config_type: type, where: str) -> Any:
    """A setting from a preset or TOML file as the RunConfig field's type (its annotation);
    a value of another type is a UsageError naming the setting."""
    hint = typing.get_type_hints(config_type)[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    kind = typing.get_origin(hint) or hint
    if optional:
        if value is None:
            return None
        kind = typing.get_origin(args[0]) or args[0]
    try:
        if kind is tuple:
            if isinstance(value, str):
                value = value.split(",")
            if not isinstance(value, list | tuple):
                raise ValueError("expected a list or a comma-separated string")
            items = [i.strip() if isinstance(i, str) else i for i in value]
            if key == "seeds":
                if any(isinstance(i, bool) for i in items):
                    raise ValueError("expected integers")
                return tuple(int(i) for i in items)
            if not all(isinstance(i, str) for i in items):
                raise ValueError("expected names")
            return tuple(i for i in items if i)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError("expected an integer")
            return int(value)
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError("expected a number")
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {key} = {value!r}: {exc}") from None
    return value


def cmd_clean(args: argparse.Namespace) -> None:
    from wsss_bench.core import store

    removed, freed = store.clean(Path(args.workdir), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(removed)} unreferenced unit(s), {freed / 1e6:.1f} MB; units named by a "
          f"manifest in {Path(args.workdir) / 'manifests'} are kept")


def cmd_download(args: argparse.Namespace) -> None:
    from wsss_bench import download, options
    from wsss_bench.core.progress import Reporter
    from wsss_bench.registry import load_registry, resolve

    dataset = resolve(load_registry(), "datasets", [args.dataset])[0]
    values: dict[str, str] = {}
    for text in args.option:
        plugin, key, value = options.parse(text)
        if plugin != dataset.name:
            raise UsageError(f"--option {text}: `download {dataset.name}` takes options of "
                             f"{dataset.name!r} only")
        values[key] = value
    dataset = options.configure(dataset, values)
    archive = dataset.archive
    if archive is None:
        note = dataset.download_note or "it has no download"
        raise UsageError(f"dataset {dataset.name!r} cannot be downloaded: {note}")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else download.default_data_dir()
    reporter = Reporter(quiet=args.quiet)
    target = download.fetch(archive, data_dir, reporter)
    reporter.summary(f"{dataset.name}: data in {target}")


def cmd_leaderboard(args: argparse.Namespace, out: Console) -> None:
    from wsss_bench.core import leaderboard, statistics

    json_path, _ = leaderboard.paths(Path(args.leaderboard_dir), args.dataset)
    board = leaderboard.load(json_path)
    if args.bootstrap is not None:
        statistics.annotate(board, statistics.Bootstrap(resamples=args.bootstrap))
    if args.format == "json":
        print(leaderboard.dumps(board), end="")
    elif args.format == "csv":
        print(leaderboard.render_csv(board), end="")
    elif args.format == "md":
        print(leaderboard.render_markdown(board), end="")
    elif args.format == "html":
        from wsss_bench.core import webpage

        print(webpage.render_html(board, board.get("figures") or []), end="")
    else:
        out.print(leaderboard.rich_table(board))


def cmd_figures(args: argparse.Namespace) -> None:
    """Replay the board's command on its stored units and draw its figures."""
    from wsss_bench.core import leaderboard
    from wsss_bench.core.progress import Reporter
    from wsss_bench.pipeline.publish import publish
    from wsss_bench.pipeline.run import execute
    from wsss_bench.registry import load_registry

    json_path, _ = leaderboard.paths(Path(args.leaderboard_dir), args.dataset)
    board = leaderboard.load(json_path)
    command = board.get("command")
    if not command or not command.startswith("wsss-bench run"):
        raise UsageError(f"{json_path}: the board records no `wsss-bench run` command to "
                         f"replay; run it again to draw its figures")
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # one line, ours, not argparse's usage
            run_args = build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit:
        raise UsageError(f"{json_path}: its command {command!r} does not parse with this "
                         f"wsss-bench; run it again") from None
    config = replace(run_config(run_args), leaderboard_dir=args.leaderboard_dir, figures=True,
                     leaderboard_name=board.get("name") or board["dataset"], force=())
    if args.workdir:
        config = replace(config, workdir=args.workdir)
    reporter = Reporter(quiet=args.quiet)
    outcome = execute(config, load_registry(), reporter, stored_only=command)
    publish(config, outcome, [], {}, reporter)
    where = Path(args.leaderboard_dir) / "figures" / config.leaderboard_name
    reporter.summary(f"figures written to {where}")


def cmd_compare(args: argparse.Namespace, out: Console) -> None:
    from wsss_bench.core import leaderboard, statistics

    json_path, _ = leaderboard.paths(Path(args.leaderboard_dir), args.dataset)
    board = leaderboard.load(json_path)
    a, b = (leaderboard.find_row(board, name, json_path) for name in (args.method_a,
                                                                       args.method_b))
    for name, row in ((args.method_a, a), (args.method_b, b)):
        if statistics.design(row) is None:
            raise UsageError(f"{json_path}: row {name!r} has no per-case results (a reported "
                             f"row, or made before rows kept them): run its method again")
    if statistics.group_key(a) != statistics.group_key(b):
        raise UsageError(f"{json_path}: rows {args.method_a!r} and {args.method_b!r} were "
                         f"scored on different cases or data; only rows of one split and "
                         f"dataset configuration can be paired")
    settings = statistics.Bootstrap(resamples=args.bootstrap)
    result = statistics.compare(a, b, settings)
    if args.format == "json":
        print(json.dumps({"a": args.method_a, "b": args.method_b,
                          "bootstrap": settings.header(), "metrics": result}, indent=2))
        return
    table = Table(title=f"{args.method_a} (A) vs {args.method_b} (B): paired case bootstrap, "
                        f"{settings.resamples} resamples, {settings.level * 100:g} % interval")
    for col in ("metric", "A", "B", "A - B", "95% CI", "p", "A wins", "B wins", "ties"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in result:
        table.add_row(r["metric"], f"{r['a']:.4f}", f"{r['b']:.4f}", f"{r['diff']:+.4f}",
                      f"{r['ci'][0]:+.4f} – {r['ci'][1]:+.4f}",
                      leaderboard.p_text(r["p"], {"statistics": settings.header()}),
                      str(r["wins_a"]), str(r["wins_b"]), str(r["ties"]))
    out.print(table)
    out.print("cases won: the row's metric of each validation case alone (mean over seeds); "
              "p: two-sided bootstrap p-value of A - B = 0")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Console() if sys.stdout.isatty() else Console(width=240)
    if args.command is None:
        parser.print_help()
        return 2
    err = Console(stderr=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, *a, **k: err.print(f"warning: {m}", highlight=False)
            if args.command == "plugins":
                cmd_plugins(args, out)
            elif args.command == "run":
                return cmd_run(args, out, argv)
            elif args.command == "download":
                cmd_download(args)
            elif args.command == "clean":
                cmd_clean(args)
            elif args.command == "compare":
                cmd_compare(args, out)
            elif args.command == "figures":
                cmd_figures(args)
            else:
                cmd_leaderboard(args, out)
    except UsageError as exc:
        print(f"wsss-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "run":
            workdir = getattr(args, "workdir", "runs")
            print(f"wsss-bench run: interrupted; finished units are kept in {workdir}/units: run "
                  f"the same command again to resume", file=sys.stderr)
        else:
            print(f"wsss-bench {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
