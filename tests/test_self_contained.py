"""The repository stands alone: no file it holds points outside it (to notes, papers or files
that are not in it), and every file path the README and CONTRIBUTING.md name exists."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import ROOT

# Nothing in the repository may name these: the place of material that is not in it, or a
# design document that is not part of it.
FORBIDDEN = ("../shared", "shared/reference", "DESIGN.md")
# The one outside place that may be named: the default location of the optional real-data
# sample the tests use when it is there, and only by these files, each for its reason.
SAMPLE = "../shared/data"
MAY_NAME_SAMPLE = {
    "tests/conftest.py": "the fixtures' default location of the sample",
    ".ci/run": "CI may point the tests at the sample",
    "README.md": "the testing section says where the optional sample goes",
    "tests/data/make_fixture.py": "takes its source as an argument and may name the default",
    "leaderboards/brats-sample.json": "the command that made the committed sample leaderboard",
    "leaderboards/brats-sample.md": "rendered from that JSON: the same command",
    "leaderboards/brats-sample.html": "the web page rendered from that JSON: the same command",
}
# This file names all of FORBIDDEN, to look for them.
SELF = "tests/test_self_contained.py"

# Names in backticks that look like files but are not the repository's, each for its reason.
NOT_OURS = {
    "dataset.json": "the MSD task's own index file, inside the downloaded data",
    # files of the reference implementations the SEAM and WSS-CMER ports cite (deviations)
    "tool/torchutils.py": "YudeWang/SEAM", "network/resnet38_SEAM.py": "YudeWang/SEAM",
    "train_SEAM.py": "YudeWang/SEAM", "infer_SEAM.py": "YudeWang/SEAM",
    "agents/wscmer.py": "gaurav104/WSS-CMER", "graphs/losses/CMER_loss.py": "gaurav104/WSS-CMER",
}
DOCS = ("README.md", "CONTRIBUTING.md")
SUFFIXES = (".py", ".md", ".json", ".toml")


def git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], input=stdin, capture_output=True,
                          text=True, check=False)


@pytest.fixture(scope="module")
def checkout() -> None:
    if shutil.which("git") is None or git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")


def repository_files() -> list[str]:
    """Tracked files and new files git would add (not ignored), that exist."""
    out = git("ls-files", "--cached", "--others", "--exclude-standard", "-z").stdout
    return sorted({p for p in out.split("\0") if p and (ROOT / p).is_file()})


def outside_references(path: str, content: bytes) -> list[str]:
    """What ``content`` (the file at repository path ``path``) names that it must not."""
    if path == SELF:
        return []
    if path in MAY_NAME_SAMPLE:
        content = content.replace(SAMPLE.encode(), b"")
    return [word for word in FORBIDDEN if word.encode() in content]


def test_no_file_points_outside_the_repository(checkout):
    files = repository_files()
    assert "README.md" in files and "wsss_bench/core/leaderboard.py" in files
    found = {path: hits for path in files
             if (hits := outside_references(path, (ROOT / path).read_bytes()))}
    assert not found, ("files naming what is not in the repository (cite the paper by title, "
                       f"README sections or files that exist): {found}")


def test_the_check_catches_a_violation():
    assert outside_references("wsss_bench/x.py", b"see DESIGN.md") == ["DESIGN.md"]
    assert outside_references("wsss_bench/x.py", b"(../shared/reference/p.txt)") == [
        "../shared", "shared/reference"]
    assert outside_references("wsss_bench/x.py", b"--data-dir ../shared/data") == ["../shared"]
    assert outside_references("tests/conftest.py", b"../shared/data beside the repo") == []
    assert outside_references("tests/conftest.py", b"../shared/reference") == [
        "../shared", "shared/reference"]
    assert outside_references("README.md", b"in `../shared/data/brats-sample`") == []
    assert outside_references("README.md", b"`shared/reference/paper.txt`") == [
        "shared/reference"]
    assert outside_references(SELF, b"DESIGN.md") == []


def doc_paths(text: str) -> list[str]:
    """Repository-relative file paths written in backticks outside code blocks: a single token
    of path characters that contains '/' or ends in .py/.md/.json/.toml; placeholders
    (`<workdir>/…`, `*.npy`, `{…}`), paths outside the repository (`../…`, `/…`, `~/…`) and
    options are not paths of the repository."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    out = []
    for token in re.findall(r"`([^`\s]+)`", text):
        if any(c in token for c in "<*{") or token.startswith(("../", "/", "~", "$", "-")):
            continue
        if not re.fullmatch(r"[\w.\-/]+(::\w+)?", token):
            continue  # a formula or an expression, e.g. `2m/(1+m)`
        if "/" in token or token.split("::")[0].endswith(SUFFIXES):
            out.append(token)
    return out


def ignored(paths: list[str]) -> set[str]:
    """The paths git ignores: outputs of a run (e.g. `runs/units`), not files of ours."""
    done = git("check-ignore", "--no-index", "--stdin", stdin="\n".join(paths) + "\n")
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def missing_paths(doc: str, text: str) -> list[str]:
    """The paths ``text`` (the document ``doc``) names that are not in the repository."""
    paths = [p for p in doc_paths(text) if p not in NOT_OURS]
    outputs = ignored([p.split("::")[0] for p in paths]) if paths else set()
    missing = []
    for token in paths:
        path, _, test = token.partition("::")
        if path in outputs or path.rstrip("/") in outputs:
            continue
        target = ROOT / path
        if not target.exists():
            missing.append(f"{doc}: `{token}`")
        elif test and not re.search(rf"^def {re.escape(test)}\b",
                                    target.read_text(encoding="utf-8"), re.M):
            missing.append(f"{doc}: `{token}` (no such test)")
    return missing


def test_paths_the_docs_name_exist(checkout):
    missing = [m for doc in DOCS
               for m in missing_paths(doc, (ROOT / doc).read_text(encoding="utf-8"))]
    assert not missing, f"paths named in the docs that are not in the repository: {missing}"


def test_doc_paths_picks_repository_paths_only():
    text = ("`wsss_bench/core/metrics.py` `pyproject.toml` `wsss_bench_plugins/` "
            "`<workdir>/folds.json` "
            "`leaderboards/<dataset>.json` `*.png.npy` `../shared/data/x` `~/.cache/x` "
            "`2m/(1+m)` `--config run.toml` `-o/--option` `paper_dsc` `tests/t.py::test_x` "
            "`run.effective.weights`\n```\n`inside/a/block.py`\n```\n`docs/missing.md`")
    assert doc_paths(text) == ["wsss_bench/core/metrics.py", "pyproject.toml",
                               "wsss_bench_plugins/", "tests/t.py::test_x", "docs/missing.md"]


def test_the_path_check_catches_a_missing_file(checkout):
    text = ("`wsss_bench/core/metrics.py`, `wsss_bench_plugins/`, `runs/units` (a run's output), "
            "`dataset.json`, `docs/missing.md`, `tests/test_docs.py::test_no_such_test`, "
            "`tests/test_docs.py::test_readme_starts_with_install_and_run_then_test_command`")
    assert missing_paths("X.md", text) == [
        "X.md: `docs/missing.md`", "X.md: `tests/test_docs.py::test_no_such_test` (no such test)"]
