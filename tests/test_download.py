"""Downloading against a real HTTP server on 127.0.0.1: resume, md5, safe extraction, offline."""

from __future__ import annotations

import hashlib
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.mri_files import member, tar_of, tiny_decathlon
from tests.test_cli import run_captured as cli
from wsss_bench import download
from wsss_bench.core.progress import Reporter
from wsss_bench.download import Archive, DownloadError

pytestmark = pytest.mark.usefixtures("one_thread")


class Server:
    """Serves ``files`` (path → bytes) with HTTP Range support. ``cut_after`` bytes: the first
    ``cuts`` responses close the connection after sending that many bytes of the body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None
        self.cuts = 0
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.ranges.append(self.headers.get("Range"))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cuts > 0 and server.cut_after is not None:
                    server.cuts -= 1
                    self.wfile.write(payload[: server.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(scope="module")
def task_tar(tmp_path_factory) -> bytes:
    task = tiny_decathlon(tmp_path_factory.mktemp("src"), n_cases=4)
    return tar_of(task, "Task05_Prostate")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Anything in ``folder`` besides finished data: temporary or partial files."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or
                  p.name.endswith(".part"))


def test_download_command_fetches_verifies_and_unpacks(tmp_path, server, task_tar, capsys):
    server.files["/Task05_Prostate.tar"] = task_tar
    url = server.url("/Task05_Prostate.tar")
    code, err = cli(["download", "decathlon", "--data-dir", str(tmp_path), "-o",
                     f"decathlon.url={url}", "-o", f"decathlon.md5={md5(task_tar)}"], capsys)
    assert code == 0, err
    images = sorted(p.name for p in (tmp_path / "Task05_Prostate" / "imagesTr").iterdir())
    assert images == [f"prostate_{i:02d}.nii.gz" for i in range(4)]
    assert leftovers(tmp_path) == []
    # a second call finds the data and downloads nothing
    server.ranges.clear()
    assert cli(["download", "decathlon", "--data-dir", str(tmp_path), "-o",
                f"decathlon.url={url}"], capsys)[0] == 0
    assert server.ranges == []


def test_md5_mismatch_is_refused_and_nothing_is_kept(tmp_path, server, task_tar, capsys):
    server.files["/Task05_Prostate.tar"] = task_tar
    url = server.url("/Task05_Prostate.tar")
    code, err = cli(["download", "decathlon", "--data-dir", str(tmp_path), "-o",
                     f"decathlon.url={url}"], capsys)  # the real Task05 md5: does not match
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "does not match the expected 35138f08b1efaef89d7424d2bcc928db" in err
    assert list(tmp_path.iterdir()) == []


def test_cut_connection_is_resumed_with_a_range_request(tmp_path, server, task_tar):
    server.files["/t.tar"] = task_tar
    server.cut_after, server.cuts = 10_000, 2
    archive = Archive(server.url("/t.tar"), md5(task_tar), "Task05_Prostate")
    download.fetch(archive, tmp_path)
    assert server.ranges == [None, "bytes=10000-", "bytes=20000-"]
    assert (tmp_path / "t.tar").read_bytes() == task_tar
    assert (tmp_path / "Task05_Prostate" / "labelsTr").is_dir()
    assert leftovers(tmp_path) == []


def test_partial_download_survives_between_runs_and_resumes(tmp_path, server, task_tar):
    server.files["/t.tar"] = task_tar
    server.cut_after, server.cuts = 25_000, 1
    dest = tmp_path / "t.tar"
    with pytest.raises(DownloadError, match="run again to resume"):
        download.download(server.url("/t.tar"), dest, Reporter(quiet=True), attempts=1)
    part = tmp_path / "t.tar.part"
    assert part.stat().st_size == 25_000 and not dest.exists()
    archive = Archive(server.url("/t.tar"), md5(task_tar), "Task05_Prostate")
    download.fetch(archive, tmp_path)
    assert server.ranges[-1] == "bytes=25000-"
    assert dest.read_bytes() == task_tar and not part.exists()


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, task_tar):
    (tmp_path / "t.tar.part").write_bytes(b"garbage from another file")
    server.files["/t.tar"] = task_tar

    # an HTTP 200 answer to a Range request means "whole file": the part file is overwritten
    original = server.httpd.RequestHandlerClass.do_GET

    def whole_file(handler) -> None:
        del handler.headers["Range"]
        original(handler)

    server.httpd.RequestHandlerClass.do_GET = whole_file
    download.download(server.url("/t.tar"), tmp_path / "t.tar", Reporter(quiet=True))
    assert (tmp_path / "t.tar").read_bytes() == task_tar


def test_offline_names_the_url_and_where_to_put_the_tar(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Task05_Prostate.tar"
    code, err = cli(["download", "decathlon", "--data-dir", str(tmp_path), "-o",
                     f"decathlon.url={url}"], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert url in line and str(tmp_path / "Task05_Prostate.tar") in line
    assert list(tmp_path.iterdir()) == []


def test_tar_put_there_by_hand_is_used(tmp_path, task_tar):
    (tmp_path / "Task05_Prostate.tar").write_bytes(task_tar)
    archive = Archive("http://127.0.0.1:9/Task05_Prostate.tar", md5(task_tar), "Task05_Prostate")
    assert download.fetch(archive, tmp_path) == tmp_path / "Task05_Prostate"


@pytest.mark.parametrize(("extra", "needle"), [
    (member("Task05_Prostate/../../evil.txt"), "escape the target"),
    (member("/tmp/evil.txt"), "escape the target"),
    (member("elsewhere/file.txt"), "outside Task05_Prostate/"),
    (member("Task05_Prostate/link", kind=tarfile.SYMTYPE, linkname="../../etc/passwd"),
     "is a link to '../../etc/passwd' outside"),
    (member("Task05_Prostate/abs", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
     "is a link to '/etc/passwd' outside"),
    (member("Task05_Prostate/hard", kind=tarfile.LNKTYPE, linkname="etc/passwd"),
     "is a link to 'etc/passwd' outside"),
    (member("Task05_Prostate/dev", kind=tarfile.CHRTYPE), "is a device or FIFO"),
    (member("Task05_Prostate/fifo", kind=tarfile.FIFOTYPE), "is a device or FIFO"),
], ids=["dotdot", "absolute", "outside-folder", "symlink-out", "symlink-absolute",
        "hardlink-out", "device", "fifo"])
def test_unsafe_member_is_rejected_and_nothing_extracted(tmp_path, tmp_path_factory, extra,
                                                         needle):
    src = tiny_decathlon(tmp_path_factory.mktemp("src"), n_cases=1)
    data = tar_of(src, "Task05_Prostate", [extra])
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "Task05_Prostate.tar").write_bytes(data)
    archive = Archive("http://127.0.0.1:9/Task05_Prostate.tar", md5(data), "Task05_Prostate")
    with pytest.raises(DownloadError, match=needle):
        download.fetch(archive, data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == ["Task05_Prostate.tar"]
    assert not (tmp_path / "evil.txt").exists()


def test_links_inside_the_folder_are_allowed(tmp_path, tmp_path_factory):
    src = tiny_decathlon(tmp_path_factory.mktemp("src"), n_cases=1)
    link = member("Task05_Prostate/latest", kind=tarfile.SYMTYPE, linkname="imagesTr")
    data = tar_of(src, "Task05_Prostate", [link])
    (tmp_path / "Task05_Prostate.tar").write_bytes(data)
    archive = Archive("http://127.0.0.1:9/Task05_Prostate.tar", md5(data), "Task05_Prostate")
    target = download.fetch(archive, tmp_path)
    assert (target / "latest").is_symlink()


def test_failed_extraction_leaves_no_half_tree(tmp_path, tmp_path_factory, monkeypatch):
    src = tiny_decathlon(tmp_path_factory.mktemp("src"), n_cases=2)
    data = tar_of(src, "Task05_Prostate")
    (tmp_path / "Task05_Prostate.tar").write_bytes(data)
    archive = Archive("http://127.0.0.1:9/Task05_Prostate.tar", md5(data), "Task05_Prostate")
    calls = {"n": 0}
    original = tarfile.TarFile._extract_member

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "_extract_member", failing)
    with pytest.raises(DownloadError, match="disk full"):
        download.fetch(archive, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task05_Prostate.tar"]
    monkeypatch.undo()
    assert (download.fetch(archive, tmp_path) / "imagesTr").is_dir()


def test_run_downloads_missing_data_then_runs(tmp_path, server, task_tar, capsys):
    server.files["/Task05_Prostate.tar"] = task_tar
    url = server.url("/Task05_Prostate.tar")
    data_dir = tmp_path / "data"
    code, err = cli(["run", "--dataset", "decathlon", "--data-dir", str(data_dir),
                     "-o", f"decathlon.url={url}", "-o", f"decathlon.md5={md5(task_tar)}",
                     "-o", "decathlon.size=32", "--backbones", "resnet18", "--ensembles", "",
                     "--folds", "2", "--epochs", "1", "--batch-size", "4", "--workers", "1",
                     "--workdir", str(tmp_path / "work"), "--leaderboard-dir",
                     str(tmp_path / "boards")], capsys)
    assert code == 0, err
    assert "fetching " + url in err
    assert (data_dir / "Task05_Prostate" / "imagesTr").is_dir()
    board = (tmp_path / "boards" / "decathlon.md").read_text()
    assert "resnet18 / gradcam / none" in board and "Empty" in board


@pytest.mark.parametrize(("dataset", "needle"), [
    ("brats", "dataset 'brats' cannot be downloaded: BraTS 2020 needs registration"),
    ("phantom", "dataset 'phantom' cannot be downloaded"),
    ("nope", "unknown dataset 'nope'"),
])
def test_download_of_a_dataset_without_archive(tmp_path, capsys, dataset, needle):
    code, err = cli(["download", dataset, "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
