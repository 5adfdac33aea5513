"""Code execution: the prediction's code, then the item's tests, run by Python in a sandbox; the item
passes when the program exits 0.

The sandbox is a subprocess in its own process group with a wall-clock timeout (the whole group is
killed), an address-space limit (RLIMIT_AS) and a file-size limit (so endless output cannot fill the
disk), a fresh temporary working directory, a minimal environment, and no network: a network namespace
of its own (`unshare --net`) where the machine allows one, and in every case a prelude, run before the
program, that makes creating a socket raise. The prelude runs from `-c` and the program through runpy
rather than being pasted above the code, so that `from __future__` imports stay legal and traceback
line numbers are the program's own. It keeps mistakes and runaway programs in; it is not a jail for
hostile code.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from ...config import MetricConfig
from ...registry import METRIC

# the last fenced block; a block cut off by max_new_tokens runs to the end of the text
FENCED = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
RUNNER = '''\
import socket as _socket_module
class _NoNetworkSocket(_socket_module.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the protege code sandbox")
_socket_module.socket = _socket_module.SocketType = _NoNetworkSocket
del _socket_module
import runpy, sys
sys.argv = ["program.py"]
runpy.run_path("program.py", run_name="__main__")
'''
OUTPUT_LIMIT_BYTES = 16 << 20
STDERR_TAIL = 2000
UNSHARE = ["unshare", "--net", "--map-root-user"]


class CodeMetric(MetricConfig):
    name: Literal["code"] = Field("code", description="The answer's code passes the item's tests (or runs the "
                                  "reference as the test), in a sandboxed Python process.")
    timeout: float = Field(5.0, gt=0, description="Seconds one program may run.")
    memory_mb: int = Field(512, gt=0, description="Address-space limit of one program, in MiB.")


def extract_code(prediction: str) -> str:
    blocks = FENCED.findall(prediction)
    return blocks[-1] if blocks else prediction


@functools.cache
def network_namespace_available() -> bool:
    """Whether this machine lets an unprivileged process have a network namespace (probed once)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(UNSHARE + ["true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def limiter(memory_mb: int):
    def apply_limits() -> None:  # runs in the child between fork and exec
        memory = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))
    return apply_limits


def sandbox_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def command() -> list[str]:
    # -I: no user site-packages, no PYTHON* variables, no working directory on sys.path
    python = [sys.executable, "-I", "-c", RUNNER]
    return UNSHARE + python if network_namespace_available() else python


def tail(path: Path, limit: int = STDERR_TAIL) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4 * limit))
        return f.read().decode("utf-8", errors="replace")[-limit:]


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> bool:
    """Waits for the program, then kills its process group: the program itself when it ran past the
    timeout, else whatever it left running in the background. True when it timed out."""
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    kill_group(proc.pid)
    proc.wait()
    return timed_out


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is already gone
        pass


def run_program(source: str, cfg: CodeMetric) -> dict:
    with tempfile.TemporaryDirectory(prefix="protege-code-", ignore_cleanup_errors=True) as work:
        program, stderr_path = Path(work, "program.py"), Path(work, "stderr.txt")
        program.write_text(source, encoding="utf-8", errors="replace")
        started = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(command(), cwd=work, env=sandbox_env(work), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                    preexec_fn=limiter(cfg.memory_mb))
            timed_out = wait_or_kill(proc, cfg.timeout)
        return {"returncode": proc.returncode, "timed_out": timed_out, "stderr": tail(stderr_path),
                "seconds": round(time.monotonic() - started, 3), "network_namespace": network_namespace_available()}


@METRIC.register(CodeMetric)
def code_pass(prediction: str, reference: str, cfg: CodeMetric, tests: str = "") -> tuple[float, dict]:
    code = extract_code(prediction)
    if not code.strip():
        return 0.0, {"error": "the prediction holds no code"}
    details = run_program(f"{code}\n\n{tests or reference}\n", cfg)
    return float(details["returncode"] == 0 and not details["timed_out"]), details
