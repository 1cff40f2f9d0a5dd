"""`alexnet-jax download`: the four Fashion-MNIST release files into a local cache, verified.

From the release's own host, with GitHub's copy of the repository as the fallback. Each file is
fetched into NAME.part (resumed with an HTTP Range request after a dropped connection),
checked against the SHA-256 of its decompressed bytes, and only then renamed into place: the
cache never holds a wrong or partial file under a real name. What may pass (a server's 5xx or
429, a time-out, a dropped connection) is tried again on the same URL after a growing wait;
what will not (a 404, no such host, a refused connection, wrong bytes) goes to the next URL.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..observe.progress import Progress
from .release import DataError, missing_files, read_idx, where_to_put_files

BASE_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# The waits before each new try on the same URL after an error that may pass: 4 tries, 7 s.
RETRY_WAITS_SECONDS = (1.0, 2.0, 4.0)
RETRIED_HTTP = {408, 425, 429, 500, 502, 503, 504}  # time-outs, rate limits, server errors


class Unavailable(Exception):
    """This URL cannot give the file (no such host, refused, HTTP 4xx, wrong bytes): try the
    next URL."""


class Passing(Unavailable):
    """An error that may pass (HTTP 5xx or 429, a time-out): the same URL again, after a
    wait."""


class Dropped(Passing):
    """The connection broke off mid-file: resumed from where it stopped, on the same URL."""


class PartTooLong(Unavailable):
    """The server has nothing past the bytes already in NAME.part (HTTP 416) and they are not
    the file: start that file over, on the same URL."""


def default_dir() -> Path:
    """$FASHION_MNIST_DIR if set, else the user's cache (~/.cache/alexnet-jax/fashion-mnist)."""
    if os.environ.get("FASHION_MNIST_DIR"):
        return Path(os.environ["FASHION_MNIST_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "alexnet-jax" / "fashion-mnist"


def cannot_write(path: Path, err: OSError) -> DataError:
    """A local write that failed (a full disk, a read-only folder, permissions): said as
    such, never retried as if the network were at fault."""
    return DataError(f"cannot write {path}: {err.strerror or err}. Free space or fix the "
                     "folder's permissions, or download into another folder (`alexnet-jax "
                     "download --dir DIR`, FASHION_MNIST_DIR); what was fetched so far is kept and "
                     "resumed")


def download(folder: str | os.PathLike | None = None, base_urls=None, timeout: float = 10.0,
             out=print, retry_waits: tuple[float, ...] = RETRY_WAITS_SECONDS) -> Path:
    """Fetch whichever release files `folder` (default_dir()) lacks; returns the folder."""
    folder = Path(folder or default_dir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cannot_write(folder, err) from None
    for gz in missing_files(folder):
        if _keep_complete_part(folder / gz, out):
            continue
        tried = []
        for url in (base + gz for base in base_urls or BASE_URLS):
            try:
                _fetch_resuming(url, folder / gz, out, timeout, retry_waits)
                break
            except Unavailable as err:
                tried.append(f"{url}: {err}")
        else:
            raise DataError(f"cannot download {gz} ({'; '.join(tried)}). Offline? "
                            + where_to_put_files(folder))
    return folder


def _keep_complete_part(target: Path, out) -> bool:
    """A NAME.part already whole and verified (a process killed during its check) is put in
    place without asking the server for bytes past its end."""
    part = target.with_name(target.name + ".part")
    if not part.is_file():
        return False
    try:
        read_idx(part, target.name.removesuffix(".gz"))
    except DataError:
        return False  # partial (resumed next) or wrong (refused by the server's 416)
    os.replace(part, target)
    out(f"{target.name}: the part fetched earlier is whole and verified; kept")
    return True


def _fetch_resuming(url: str, target: Path, out, timeout: float,
                    retry_waits: tuple[float, ...]) -> None:
    part = target.with_name(target.name + ".part")
    for wait in (*retry_waits, None):
        try:
            _fetch(url, part, out, timeout)
            break
        except (Passing, PartTooLong) as err:
            if wait is None:
                raise
            if isinstance(err, PartTooLong):
                part.unlink(missing_ok=True)
            then = "resuming" if isinstance(err, Dropped) else "trying again"
            out(f"{target.name}: {err}; {then} in {wait:g} s")
            time.sleep(wait)
    try:
        read_idx(part, target.name.removesuffix(".gz"))  # SHA-256 of the decompressed bytes
    except DataError as err:
        part.unlink()
        raise Unavailable(f"served wrong bytes, not kept ({err})") from None
    os.replace(part, target)


def _fetch(url: str, part: Path, out, timeout: float) -> None:
    """Append the rest of `url` to `part` (all of it when the server ignores the range)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # Range Not Satisfiable: nothing past `have` bytes
            raise PartTooLong(f"{part.name} holds {have} bytes that are not the file") from None
        kind = Passing if err.code in RETRIED_HTTP else Unavailable
        raise kind(f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        kind = Passing if isinstance(reason, TimeoutError) else Unavailable  # socket.timeout too
        raise kind(f"no answer: {reason}") from None
    with response:
        if response.status != 206:
            have = 0  # the whole file follows
        total = have + int(response.headers.get("Content-Length") or 0)
        progress = Progress(part.name.removesuffix(".part"), total, have, out, unit="MB",
                            scale=1e6)
        try:
            _copy(response, part, have, progress)
        finally:
            progress.close()  # a bar cut short by a dropped connection ends its line
    if total and part.stat().st_size < total:
        raise Dropped(f"connection dropped at {part.stat().st_size} of {total} bytes")


def _copy(response, part: Path, have: int, progress: Progress) -> None:
    """The response's body onto `part`: a read that fails is the network's (Dropped), a write
    that fails is the disk's (DataError)."""
    try:
        f = part.open("ab" if have else "wb")
    except OSError as err:
        raise cannot_write(part, err) from err
    with f:
        while True:
            try:
                chunk = response.read(1 << 16)
            except (http.client.HTTPException, OSError) as err:
                raise Dropped(f"connection dropped at {progress.done} of {progress.total} "
                              f"bytes ({type(err).__name__})") from None
            if not chunk:
                return
            try:
                f.write(chunk)
                f.flush()
            except OSError as err:
                raise cannot_write(part, err) from None
            progress.update(len(chunk))


def download_command(args) -> None:
    print(f"the four Fashion-MNIST release files are in {download(args.dir)}, verified")
