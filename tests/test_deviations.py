"""The list of deviations from the paper: complete entries, per-dataset selection, and the
README's "Deviations from the paper" block is exactly its rendering."""

from __future__ import annotations

import dataclasses

import pytest

from wsss_bench.core import deviations
from wsss_bench.core.deviations import DEVIATIONS, KINDS, Deviation

from .conftest import ROOT

FIELDS = ("topic", "paper", "here", "why", "kind", "datasets", "methods")


def by_topic(topic: str) -> Deviation:
    [entry] = [d for d in DEVIATIONS if d.topic == topic]
    return entry


def test_every_entry_is_complete_with_a_known_kind():
    assert [f.name for f in dataclasses.fields(Deviation)] == list(FIELDS)
    assert len({d.topic for d in DEVIATIONS}) == len(DEVIATIONS) >= 12
    for entry in DEVIATIONS:
        for name in ("topic", "paper", "here", "why", "kind"):
            value = getattr(entry, name)
            assert isinstance(value, str) and value.strip(), (entry.topic, name)
        assert entry.kind in KINDS, entry.topic
        assert isinstance(entry.datasets, tuple) and all(entry.datasets), entry.topic
    assert {d.kind for d in DEVIATIONS} == set(KINDS)  # every kind is used
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEVIATIONS[0].topic = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="kind must be one of"):
        Deviation("t", "p", "h", "w", "a guess")


def test_for_run_selects_the_entries_of_the_dataset():
    cam_input, prostate = by_topic("CAM input (BraTS)"), by_topic("Prostate data and split")
    for dataset in ("brats", "msd-brain"):
        assert cam_input in deviations.for_run(dataset)
        assert prostate not in deviations.for_run(dataset)
    assert prostate in deviations.for_run("decathlon")
    assert cam_input not in deviations.for_run("decathlon")
    everywhere = [d for d in DEVIATIONS if not d.datasets and not d.methods]
    assert everywhere and deviations.for_run("phantom") == everywhere
    for dataset in ("brats", "decathlon"):  # list order is kept
        chosen = deviations.for_run(dataset)
        assert chosen == [d for d in DEVIATIONS if d in chosen]


def test_method_entries_concern_only_runs_that_use_the_method():
    seam = [d for d in DEVIATIONS if d.methods == ("seam",)]
    cmer = [d for d in DEVIATIONS if d.methods == ("wss-cmer",)]
    assert len(seam) >= 3 and len(cmer) >= 3
    assert not set(seam + cmer) & set(deviations.for_run("brats"))
    with_seam = deviations.for_run("brats", ["seam"])
    assert set(seam) <= set(with_seam) and not set(cmer) & set(with_seam)
    assert set(seam + cmer) <= set(deviations.for_run("phantom", ("seam", "wss-cmer")))
    text = deviations.render_markdown(seam[:1])
    assert text.startswith(f"- **{seam[0].topic}** ({seam[0].kind}; all datasets; "
                           f"`--methods seam`)\n  - Reference implementation: ")


def test_readme_block_is_the_rendered_list():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(deviations.START) == 1 and readme.count(deviations.END) == 1
    block = readme.split(deviations.START, 1)[1].split(deviations.END, 1)[0]
    assert block == "\n" + deviations.render_markdown(DEVIATIONS), (
        "README's deviations block is stale: run `python -m wsss_bench.core.deviations README.md`")
    assert deviations.with_block(readme) == readme
    heading = readme.index("## Deviations from the paper")
    assert heading < readme.index(deviations.START)
    assert "## " not in readme[heading + 3:readme.index(deviations.START)]


def test_render_markdown_lists_every_field_and_takes_stored_dicts():
    text = deviations.render_markdown(DEVIATIONS)
    assert text.count("\n- **") + 1 == len(DEVIATIONS)  # one top-level item each
    stored = [dataclasses.asdict(d) for d in DEVIATIONS]  # as in a leaderboard header
    assert deviations.render_markdown(stored) == text
    one = Deviation("Topic", "the paper's `a b` thing", "ours", "because", "invented by us",
                    ("brats",))
    assert deviations.render_markdown([one]) == (
        "- **Topic** (invented by us; `brats`)\n"
        "  - Paper / authors' code: the paper's `a b` thing\n"
        "  - wsss-bench: ours\n"
        "  - Why: because\n")
    for line in text.splitlines():  # wrapped, and never inside a code span
        assert len(line) <= 100 and line.count("`") % 2 == 0, line


def test_with_block_rewrites_only_the_block():
    text = f"intro\n{deviations.START}\nSTALE LINE\n{deviations.END}\nrest\n"
    new = deviations.with_block(text)
    assert new.startswith(f"intro\n{deviations.START}\n- **") and new.endswith(
        f"{deviations.END}\nrest\n")
    assert "STALE LINE" not in new and deviations.with_block(new) == new
    with pytest.raises(ValueError, match="deviations:start"):
        deviations.with_block("no markers")
