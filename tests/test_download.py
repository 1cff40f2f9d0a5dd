"""`alexnet-jax download` against a loopback HTTP server (127.0.0.1) serving the release files:
a full download, a dropped connection resumed, wrong bytes, a 404 then the mirror, no server,
a part left whole or wrong by a killed download, a disk that fills."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import small_disk

from alexnet_jax.data.download import download
from alexnet_jax.data.fashion_mnist import load_split
from alexnet_jax.data.release import GZ_SHA256, DataError

NAMES = tuple(GZ_SHA256)


class ReleaseServer(http.server.ThreadingHTTPServer):
    """Serves DATA/NAME at /MODE/NAME: ok, drop (the first answer for each file breaks off
    halfway), wrong (a byte flipped), missing (404), busy (503 twice per file, then the file),
    stall (the first answer per file comes after 2 s). Records every request's Range
    header."""

    def __init__(self, data: Path):
        super().__init__(("127.0.0.1", 0), Handler)
        self.data, self.requests, self.dropped = data, [], set()
        self.busy: dict[str, int] = {}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        _, mode, name = self.path.split("/")
        self.server.requests.append((mode, name, self.headers.get("Range")))
        if mode == "missing" or name not in NAMES:
            self.send_error(404)
            return
        if mode == "busy" and self.server.busy.setdefault(name, 0) < 2:
            self.server.busy[name] += 1
            self.send_error(503)
            return
        if mode == "stall" and name not in self.server.dropped:
            self.server.dropped.add(name)
            time.sleep(2.0)
        body = (self.server.data / name).read_bytes()
        if mode == "wrong":
            body = body[:1000] + bytes([body[1000] ^ 0xFF]) + body[1001:]
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get(
            "Range") else 0
        if start >= len(body):  # as real servers answer a range past the end
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode == "drop" and name not in self.server.dropped:
            self.server.dropped.add(name)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection breaks off
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(fashion_mnist_dir):
    srv = ReleaseServer(fashion_mnist_dir)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def assert_cached(cache: Path, data: Path) -> None:
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)  # no .part left
    for name in NAMES:
        assert (cache / name).read_bytes() == (data / name).read_bytes()


def test_full_download_then_nothing_to_fetch(server, fashion_mnist_dir, tmp_path):
    srv, url = server
    cache = download(tmp_path / "cache", base_urls=[f"{url}/ok/"], out=lambda *a: None)
    assert_cached(cache, fashion_mnist_dir)
    count = len(srv.requests)
    assert count == 4
    download(cache, base_urls=[f"{url}/ok/"])  # all there and whole: no request
    assert len(srv.requests) == count


def test_dropped_connection_is_resumed(server, fashion_mnist_dir, tmp_path):
    srv, url = server
    lines = []
    cache = download(tmp_path / "cache", base_urls=[f"{url}/drop/"], out=lines.append,
                     retry_waits=(0.01,) * 3)
    assert_cached(cache, fashion_mnist_dir)
    ranges = [r for mode, name, r in srv.requests if r]
    assert len(ranges) == 4 and all(int(r.split("=")[1].rstrip("-")) > 0 for r in ranges)
    assert any("connection dropped" in line and "resuming" in line for line in lines)


@pytest.mark.parametrize("mode", ["busy", "stall"])
def test_a_server_error_or_a_time_out_is_tried_again_after_a_growing_wait(mode, server,
                                                                           fashion_mnist_dir,
                                                                           tmp_path):
    """503 twice then the file, or a first answer slower than the time-out: the same URL
    again after each wait (growing), never the next URL; every file arrives whole."""
    srv, url = server
    lines = []
    t0 = time.monotonic()
    cache = download(tmp_path / "cache", base_urls=[f"{url}/{mode}/", f"{url}/missing/"],
                     out=lines.append, timeout=0.5, retry_waits=(0.05, 0.1, 0.2))
    assert_cached(cache, fashion_mnist_dir)
    assert not [r for r in srv.requests if r[0] == "missing"]
    retries = [line for line in lines if "trying again" in line]
    if mode == "busy":
        assert len(retries) == 8 and all("HTTP 503" in line for line in retries), lines
        assert sum(" in 0.05 s" in line for line in retries) == 4
        assert sum(" in 0.1 s" in line for line in retries) == 4
        assert time.monotonic() - t0 >= 4 * 0.15
    else:
        assert len(retries) == 4 and all("timed out" in line for line in retries), lines


def test_wrong_bytes_are_refused_and_not_kept(server, tmp_path):
    _, url = server
    with pytest.raises(DataError, match="served wrong bytes"):
        download(tmp_path / "cache", base_urls=[f"{url}/wrong/"], out=lambda *a: None)
    assert list((tmp_path / "cache").iterdir()) == []


def test_404_on_the_first_url_uses_the_mirror(server, fashion_mnist_dir, tmp_path):
    srv, url = server
    cache = download(tmp_path / "cache", base_urls=[f"{url}/missing/", f"{url}/ok/"],
                     out=lambda *a: None)
    assert_cached(cache, fashion_mnist_dir)
    assert [mode for mode, *_ in srv.requests].count("missing") == 4


def test_no_server_fails_fast_with_the_offline_message(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DataError, match="Offline.*release files") as err:
        download(tmp_path / "cache", base_urls=[f"http://127.0.0.1:{port}/"])
    assert time.monotonic() - t0 < 10 and "no answer" in str(err.value)


def test_first_use_downloads_into_the_cache(server, tmp_path, monkeypatch):
    """No --manual-dir: the split comes from $FASHION_MNIST_DIR (the cache), filled on use."""
    from alexnet_jax.data import download as downloads

    _, url = server
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(downloads, "BASE_URLS", (f"{url}/ok/",))
    split = load_split("test", source="idx")
    assert len(split) == 10000 and (tmp_path / "cache" / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.mark.parametrize("source", ["idx", "tfds"])
def test_manual_dir_without_the_files_fails_at_once(source, tmp_path, capsys):
    from alexnet_jax.cli import main

    t0 = time.monotonic()
    assert main(["train", "--workdir", str(tmp_path / "w"), "--source", source,
                 "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path / "tfds")]) == 1
    assert time.monotonic() - t0 < 10
    first = capsys.readouterr().err.splitlines()[0]
    assert all(name in first for name in NAMES), first


def test_a_part_left_whole_is_kept_and_a_wrong_one_started_over(server, fashion_mnist_dir,
                                                                 tmp_path):
    """A download killed during its SHA-256 check leaves a whole NAME.part: it is verified and
    kept with no request. One as long as the file but wrong (the server answers the range
    past its end with 416) is fetched again from the start, on the same URL."""
    srv, url = server
    cache = tmp_path / "cache"
    cache.mkdir()
    whole, wrong = NAMES[0], NAMES[1]
    (cache / f"{whole}.part").write_bytes((fashion_mnist_dir / whole).read_bytes())
    (cache / f"{wrong}.part").write_bytes(bytes(len((fashion_mnist_dir / wrong).read_bytes())))
    lines = []
    download(cache, base_urls=[f"{url}/ok/"], out=lines.append)
    assert_cached(cache, fashion_mnist_dir)
    assert [name for _, name, _ in srv.requests].count(whole) == 0
    assert [(name, r is not None) for _, name, r in srv.requests if name == wrong] == [
        (wrong, True), (wrong, False)]  # the range refused (416), then the whole file
    assert any("whole and verified; kept" in line for line in lines)


def test_a_disk_that_fills_is_named_not_retried(server, fashion_mnist_dir, tmp_path):
    """A full disk is the disk's fault: one error naming the file and ENOSPC, no retry and
    no mirror tried, the part fetched so far kept; with room again the same call finishes."""
    srv, url = server
    with small_disk(tmp_path / "small", "4m") as mount:
        with pytest.raises(DataError) as err:
            download(mount, base_urls=[f"{url}/ok/", f"{url}/missing/"], out=lambda *a: None)
        message = str(err.value)
        assert "No space left on device" in message and f"cannot write {mount}" in message
        assert "Offline" not in message and len(srv.requests) == 1, srv.requests
        assert [p.name for p in mount.iterdir()] == [f"{srv.requests[0][1]}.part"]
        subprocess.run(["mount", "-o", "remount,size=200m", str(mount)], check=True)
        download(mount, base_urls=[f"{url}/ok/"], out=lambda *a: None)
        assert_cached(mount, fashion_mnist_dir)
        assert srv.requests[1][2] is not None  # resumed from the part kept
