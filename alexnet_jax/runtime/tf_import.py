"""TensorFlow and tfds, imported without the C++ log lines they write at import.

Why: TensorFlow 2.17+ logs through absl's C++ logging, which ignores TF_CPP_MIN_LOG_LEVEL
before `absl::InitializeLog()`; on CPUs with AVX-512 class features it announces its oneDNN
path ("oneDNN custom operations are on", INFO) and absl's "All log messages before
absl::InitializeLog()" banner straight to file descriptor 2. Python-side settings cannot
reach those lines, so the import runs with fd 2 captured and only C++ INFO/WARNING lines
are dropped; anything else (errors, Python warnings) is written back. What TensorFlow
computes is untouched. Quiet only where the CLI asked for it: TF_CPP_MIN_LOG_LEVEL >= 1.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from types import ModuleType

# absl's C++ line prefix for INFO and WARNING ("I0000 00:00:1796... 1933 port.cc:153] ...").
_CPP_INFO_OR_WARNING = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"


def is_import_noise(line: str) -> bool:
    """An INFO/WARNING line of TensorFlow's C++ logging, or absl's banner before it."""
    return line.startswith(_ABSL_BANNER) or bool(_CPP_INFO_OR_WARNING.match(line))


def quiet_requested() -> bool:
    """The CLI sets TF_CPP_MIN_LOG_LEVEL=3 unless --verbose; a library user may set it too.

    TensorFlow's own switch for these lines, read rather than a second one of ours: it must be
    in the environment before TensorFlow loads anyway, and one setting then quiets both.
    """
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("", "0")


@contextlib.contextmanager
def c_stderr_filtered():
    """Capture fd 2 for the block, then write back every line that is not import noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not is_import_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_quietly(name: str) -> ModuleType:
    """`importlib.import_module(name)`, with TensorFlow's import-time C++ lines dropped when
    quiet is requested (the first import of TensorFlow is the one that logs)."""
    if name in sys.modules or not quiet_requested():
        return importlib.import_module(name)
    with c_stderr_filtered():
        return importlib.import_module(name)
