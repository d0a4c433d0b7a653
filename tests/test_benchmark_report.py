"""The performance report (``python -m tests.benchmarks``): every module listed exists, the
report carries the machine header and each module's table or its failure."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks import __main__ as report


def test_every_listed_module_exists_and_every_benchmark_module_is_listed():
    here = Path(report.__file__).parent
    listed = {file for file, _ in report.MODULES.values()}
    assert listed == {p.name for p in here.glob("test_*.py")}


def test_report_has_the_header_and_each_modules_table_or_its_failure():
    ran = []

    def fake(path: Path) -> tuple[int, str]:
        ran.append(path.name)
        return (0, "| a | b |\n") if path.name == "test_scaling.py" else (1, "")

    text = report.build_report(["scaling", "train"], ["- date: D", "- device: X"], run=fake)
    assert ran == ["test_scaling.py", "test_train_speed.py"]
    assert text.startswith("# wsss-bench performance report\n\n- date: D\n- device: X\n")
    assert "## scaling (`tests/benchmarks/test_scaling.py`): all targets met\n\n| a | b |" in text
    assert "## train (`tests/benchmarks/test_train_speed.py`): exit status 1" in text
    assert "(no table: the module wrote none)" in text


def test_machine_header_names_date_machine_device_and_versions():
    lines = report.machine_header()
    assert [line.split(":")[0] for line in lines] == ["- date", "- machine", "- device",
                                                      "- versions"]
    assert "torch " in lines[3] and "commit " in lines[3]
