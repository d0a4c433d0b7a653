"""The leaderboard web page (``<name>.html``): static checks of the file, then a real browser.

The board is made here by ``leaderboard.update`` from synthetic rows with per-case tables (no
model, no run): a ``brats`` board, so the paper's reported rows are in it, with rows of
different CAMs, ensembles, filters and backbones, one of them carrying a plugin option whose
value is markup. The browser tests drive the system's Chromium (Debian's ``chromium``) with
Playwright; without either they skip, or fail when ``WSSS_BENCH_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.test_cli import run_main
from tests.test_statistics import synthetic
from wsss_bench.core import leaderboard, statistics, webpage
from wsss_bench.core.metrics import METRIC_NAMES

NAME = "web"
EVIL = "</script><script>window.pwned=1</script>"
# method -> (quality, false positives, seeds); then each row's parts
METHODS = {"Empty": (0.0, 0, (0,)), "resnet18 / gradcam / none": (0.6, 3, (0,)),
           "resnet34 / scorecam / none": (0.45, 0, (0,)),
           "and(resnet18,resnet34) / gradcam / brain-band": (0.7, 0, (0,)),
           "or(resnet18,resnet34) / gradcam / none": (0.8, 6, (0,)),
           f"resnet34 / gradcam[note={EVIL}] / none": (0.55, 2, (0,))}
PARTS = {"resnet34 / scorecam / none": (["resnet34"], "scorecam", None, "none"),
         "and(resnet18,resnet34) / gradcam / brain-band": (["resnet18", "resnet34"], "gradcam",
                                                           "and", "brain-band"),
         "or(resnet18,resnet34) / gradcam / none": (["resnet18", "resnet34"], "gradcam", "or",
                                                    "none"),
         f"resnet34 / gradcam[note={EVIL}] / none": (["resnet34"], "gradcam", None, "none")}
THRESHOLDS = [[0.3, 0.65], [0.45, 0.7], [0.2, 0.85]]  # the and-row's, per fold
FIGURES = ["overlays-fold0.png", "overlays-fold1.png", "landscape-and-none.png",
           "curves-resnet18.png", "ranking.png"]
GROUPS = {"overlays": FIGURES[:2], "landscape": FIGURES[2:3], "curves": FIGURES[3:4],
          "ranking": FIGURES[4:]}


def rows(extra: tuple[str, ...] = ()) -> list[dict]:
    """The measured rows (``extra``: more single-backbone gradcam rows)."""
    methods = {**METHODS, **{m: (0.3, 1, (0,)) for m in extra}}
    out, _ = synthetic(7, (5, 4, 5), methods)
    for row in out:
        nets, cam, ensemble, filt = PARTS.get(row["method"], (row["backbones"], row["cam"],
                                                              None, row["filter"]))
        row.update(backbones=nets, cam=cam, ensemble=ensemble, filter=filt)
        if ensemble == "and":
            row["thresholds"] = THRESHOLDS
        if EVIL in row["method"]:
            row["options"] = {"gradcam": {"note": EVIL}}
        row["run"] = {**row["run"], "git_commit": "abc123", "command": "wsss-bench run",
                      "config": {"dataset": "brats", "note": EVIL, "threshold_step": 0.05},
                      "plugins": {"gradcam": {"note": EVIL}}}
    return out


def png(path: Path, rgb: tuple[int, int, int]) -> None:
    """A small real PNG: 40x30, one colour with a diagonal line."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (40, 30), rgb)
    ImageDraw.Draw(image).line([(0, 0), (39, 29)], fill=(255, 255, 255), width=2)
    image.save(path)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, dict]:
    """A leaderboard folder with the board ``web`` (statistics made) and five figures."""
    where = tmp_path_factory.mktemp("boards")
    figures = where / "figures" / NAME
    figures.mkdir(parents=True)
    for i, name in enumerate(FIGURES):
        png(figures / name, (40 * i, 120, 200 - 30 * i))
    (figures / "notes.txt").write_text("not a figure")
    measured = rows()
    split = [sorted(set(entry["ids"])) for entry in measured[0]["per_case"]]
    header = {"command": "wsss-bench run --dataset brats", "split": split, "split_seed": 0,
              "figures": [f"figures/{NAME}/{f}" for f in FIGURES]}
    board = leaderboard.update(where, "brats", measured, header, name=NAME,
                               bootstrap=statistics.Bootstrap(resamples=60, seed=0))
    return where, board


@pytest.fixture(scope="module")
def page_text(published) -> str:
    return (published[0] / f"{NAME}.html").read_text(encoding="utf-8")


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside each element by tag."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in {"meta", "link", "img", "input", "br"}:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag):]

    def handle_data(self, data):
        if self.stack:
            self.text.setdefault(self.stack[-1], []).append(data)


# ---- without a browser ------------------------------------------------------------------------

def test_the_page_is_one_file_with_no_external_resources(page_text):
    tags = Tags(page_text).tags
    links = [(t, k, v) for t, a in tags for k, v in a.items() if k in {"src", "href"}]
    assert links, "the page links nothing: no figures?"
    for tag, key, value in links:
        assert not re.match(r"^\s*([a-z][a-z0-9+.-]*:|//)", value or "", re.I) or (
            value == "data:,"), (tag, key, value)
    assert not re.search(r"https?://", page_text), "an absolute URL in the page"
    assert not any(t == "script" and "src" in a for t, a in tags)
    assert not any(t == "link" and a.get("rel") == "stylesheet" for t, a in tags)
    assert "@import" not in page_text and "url(" not in page_text


def test_every_row_appears_and_reported_rows_are_marked(published, page_text):
    _, board = published
    tags = Tags(page_text).tags
    trs = [a for t, a in tags if t == "tr" and "row" in (a.get("class") or "").split()]
    assert len(trs) == len(board["rows"]) == len(METHODS) + 15  # the paper's 15 brats rows
    kinds = ["reported" if leaderboard.is_reported(r) else "measured"
             for r in leaderboard.sort_rows(board["rows"])]
    assert [a["class"].split()[1] for a in trs] == kinds
    names = re.findall(r'<span class="name">(.*?)</span>', page_text)
    assert [unescape(n) for n in names] == [leaderboard.shown_name(r, board)
                                          for r in leaderboard.sort_rows(board["rows"])]
    assert page_text.count('<span class="badge">reported</span>') == 15 + 1  # + the legend
    for row in board["rows"]:  # every metric cell as the markdown shows it
        for m in METRIC_NAMES:
            assert leaderboard.fmt(row["metrics"].get(m)) in page_text
    for cell in leaderboard.stat_cells(board["rows"][-1], board):
        assert cell in page_text
    for note in leaderboard.METRIC_NOTES.values():
        assert escape(note) in page_text
    assert "<code>wsss-bench run --dataset brats</code>" in page_text
    assert "60 resamples" in page_text and "fold 2:" in page_text


def test_text_from_the_board_is_escaped_and_creates_no_tag(page_text):
    parsed = Tags(page_text)
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert len(scripts) == 2 and scripts[0] == {"type": "application/json", "id": "board-data"}
    assert "window.pwned" not in "".join(parsed.text.get("script", [])[1:])
    assert EVIL not in page_text and EVIL.replace("<", "&lt;").replace(">", "&gt;") in page_text
    shown = "".join(parsed.text.get("span", []))
    assert f"gradcam[note={EVIL}]" in shown  # the method name is text, as written
    data = json.loads(parsed.text["script"][0])
    assert {c["name"] for c in data["columns"]} >= set(METRIC_NAMES)
    assert len(data["rows"]) == len(METHODS) + 15


def test_figures_are_linked_relatively_and_grouped_by_their_prefix(page_text):
    parsed = Tags(page_text)
    imgs = [a["src"] for t, a in parsed.tags if t == "img"]
    assert sorted(imgs) == sorted(f"figures/{NAME}/{f}" for f in FIGURES)
    groups = re.findall(r'<section class="group" data-group="([^"]+)">(.*?)</section>',
                        page_text, re.S)
    assert [g for g, _ in groups] == list(GROUPS)  # overlays, landscape, curves, ranking
    for (group, html), (_, files) in zip(groups, GROUPS.items(), strict=True):
        assert re.findall(r'<img src="([^"]+)"', html) == [f"figures/{NAME}/{f}" for f in
                                                            sorted(files)], group
    assert "notes.txt" not in page_text and "No figures" not in page_text


def test_without_figures_the_gallery_says_so(published):
    _, board = published
    text = webpage.render_html(board, [])
    assert "No figures for this leaderboard yet" in text and "<img" not in text


def test_same_board_same_bytes(published, page_text):
    where, board = published
    again = leaderboard.load(where / f"{NAME}.json")
    assert webpage.render_html(again, again["figures"]) == page_text
    assert webpage.render_html(board, board["figures"]) == page_text


def test_update_rewrites_the_page(tmp_path):
    leaderboard.update(tmp_path, "phantom", rows()[:2], {"command": "wsss-bench run"},
                       bootstrap=statistics.Bootstrap(resamples=0))
    first = (tmp_path / "phantom.html").read_text(encoding="utf-8")
    assert "resnet18 / gradcam / none" in first and "resnet50" not in first
    assert "No figures" in first
    (tmp_path / "figures" / "phantom").mkdir(parents=True)
    png(tmp_path / "figures" / "phantom" / "ranking.png", (0, 0, 0))
    leaderboard.update(tmp_path, "phantom", rows(("resnet50 / gradcam / none",))[-1:],
                       {"figures": ["figures/phantom/ranking.png"]},
                       bootstrap=statistics.Bootstrap(resamples=0))
    second = (tmp_path / "phantom.html").read_text(encoding="utf-8")
    assert "resnet50 / gradcam / none" in second and "resnet18 / gradcam / none" in second
    assert 'src="figures/phantom/ranking.png"' in second
    assert {p.name for p in tmp_path.iterdir()} <= {"phantom.json", "phantom.md", "phantom.html",
                                                    ".phantom.lock", "figures"}


def test_leaderboard_command_prints_the_page(published, page_text, capsys):
    where, _ = published
    code = run_main(["leaderboard", "--dataset", NAME, "--leaderboard-dir", str(where),
                     "--format", "html"])
    assert code == 0
    assert capsys.readouterr().out == page_text


# ---- in a real browser ------------------------------------------------------------------------

REQUIRE_ENV = "WSSS_BENCH_REQUIRE_BROWSER"
CHROMIUM_ENV = "WSSS_BENCH_CHROMIUM"


def unavailable(reason: str) -> None:
    """Skip (or, under ``WSSS_BENCH_REQUIRE_BROWSER=1``, fail) the browser tests."""
    required = os.environ.get(REQUIRE_ENV, "").strip().lower() not in {"", "0", "false", "no"}
    if required:
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """The system's Chromium, headless, launched once for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    path = (os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
            or shutil.which("chromium-browser"))
    if not path:
        unavailable(f"no chromium found (apt-get install chromium, or set {CHROMIUM_ENV})")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def tab(browser):
    """One tab for the module; ``tab.errors`` collects console errors and warnings and page
    errors."""
    tab = browser.new_page(viewport={"width": 1500, "height": 1000})
    tab.errors = []
    tab.on("console", lambda m: tab.errors.append(f"console {m.type}: {m.text}")
           if m.type in {"error", "warning"} else None)
    tab.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
    yield tab
    tab.close()


@pytest.fixture
def page(tab, published):
    """The page freshly opened from its file (no state left by another test), no errors yet."""
    where, _ = published
    tab.errors.clear()
    tab.goto((where / f"{NAME}.html").as_uri(), wait_until="load")
    return tab


def cells(page, col: int) -> list[tuple[str, str, bool]]:
    """(row id, text of cell ``col``, visible) of every table row, in table order."""
    return [tuple(x) for x in page.eval_on_selector_all(
        "#board tbody tr.row", f"trs => trs.map(tr => [tr.id, tr.cells[{col}].textContent, "
        "!tr.hidden && tr.offsetParent !== null])")]


def value(text: str) -> float | None:
    return None if text.strip() == "—" else float(text.split("±")[0])


def test_page_loads_without_errors_and_shows_its_figures(page):
    assert page.title() == f"wsss-bench leaderboard: {NAME}"
    sizes = page.eval_on_selector_all("#gallery img", "imgs => imgs.map(i => [i.complete, "
                                      "i.naturalWidth, i.naturalHeight])")
    assert sizes == [[True, 40, 30]] * len(FIGURES)
    assert page.text_content("#shown") == f"{len(METHODS) + 15} of {len(METHODS) + 15} rows"
    assert page.evaluate("window.pwned") is None
    assert page.errors == []


def test_clicking_a_metric_header_sorts_and_clicking_again_reverses(page, published):
    _, board = published
    before = cells(page, 1)
    col = 2 + METRIC_NAMES.index("dice_slice")  # the reported rows have none
    measured = [r for r in leaderboard.sort_rows(board["rows"]) if r["source"] == "measured"]
    by_slice = sorted(measured, key=lambda r: -r["metrics"]["dice_slice"]["mean"])
    assert by_slice != measured, "the board should order dice_slice unlike paper_dsc"
    header = page.locator("#board thead th").nth(col)
    for direction in ("descending", "ascending"):
        header.click()
        assert header.get_attribute("aria-sort") == direction
        got = [value(c[1]) for c in cells(page, col)]
        numbers = [v for v in got if v is not None]
        assert got == numbers + [None] * (len(got) - len(numbers)), "missing values go last"
        assert numbers == sorted(numbers, reverse=direction == "descending")
        assert len(numbers) == len(METHODS)  # reported rows have only the paper's metrics
        assert cells(page, 1) != before
    rank = page.locator("#board thead th").nth(0)
    rank.click()
    assert cells(page, 1) == before  # back to the rank order
    details = page.eval_on_selector_all("#board > tbody > tr", "trs => trs.map(tr => tr.id)")
    assert details == [x for c in before for x in (c[0], "d" + c[0][1:])]  # pairs kept
    assert page.errors == []


def test_a_filter_hides_the_rows_that_do_not_match(page, published):
    _, board = published
    ordered = leaderboard.sort_rows(board["rows"])

    def visible() -> list[int]:
        return [i for i, c in enumerate(cells(page, 0)) if c[2]]

    page.uncheck("#keep-ref")
    page.select_option("select[data-filter=cam]", "gradcam")
    want = [i for i, r in enumerate(ordered) if r.get("cam") == "gradcam"]
    assert visible() == want and 0 < len(want) < len(ordered)
    page.select_option("select[data-filter=backbone]", "resnet34")
    want = [i for i in want if "resnet34" in ordered[i]["backbones"]]
    assert visible() == want and len(want) == 3
    page.check("#keep-ref")  # Empty and the paper's rows come back, the others stay hidden
    refs = [i for i, r in enumerate(ordered) if leaderboard.is_reported(r)
            or r["method"] == "Empty"]
    assert visible() == sorted(want + refs)
    page.select_option("select[data-filter=ensemble]", "(none)")
    want = [i for i in want if not ordered[i]["ensemble"]]
    assert visible() == sorted(want + refs)
    assert page.text_content("#shown") == f"{len(want + refs)} of {len(ordered)} rows"
    for name in ("cam", "backbone", "ensemble"):
        page.select_option(f"select[data-filter={name}]", "")
    assert len(visible()) == len(ordered)
    assert page.errors == []


def test_a_row_expands_to_its_thresholds_config_and_provenance(page, published):
    _, board = published
    ordered = leaderboard.sort_rows(board["rows"])
    rank = next(i for i, r in enumerate(ordered, start=1) if r["ensemble"] == "and")
    details = page.locator(f"#d{rank}")
    assert not details.is_visible()
    page.click(f"#r{rank} button.toggle")
    assert details.is_visible()
    table = details.locator("table.folds")
    assert table.locator("thead th").all_text_contents()[1:3] == ["threshold resnet18",
                                                                  "threshold resnet34"]
    body = [r.locator("th, td").all_text_contents() for r in table.locator("tbody tr").all()]
    assert [r[:3] for r in body] == [[f"seed 0, fold {f}", str(a), str(b)]
                                     for f, (a, b) in enumerate(THRESHOLDS)]
    folds = ordered[rank - 1]["metrics"]["dice_slice"]["folds"]
    assert [r[3 + METRIC_NAMES.index("dice_slice")] for r in body] == [f"{v:.4f}" for v in folds]
    text = details.text_content()
    assert "abc123" in text and "wsss-bench run" in text and "threshold_step" in text
    assert "Config (run.config)" in text
    page.click(f"#r{rank} button.toggle")
    assert not details.is_visible()
    assert page.errors == []


def test_a_screenshot_is_not_blank(page):
    from PIL import Image

    page.click("#board tbody tr.measured button.toggle")
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    assert shot.width >= 1000 and shot.height >= 1500
    colours = shot.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    assert max(n for n, _ in colours) < 0.95 * shot.width * shot.height  # not one flat colour
    assert page.errors == []
