"""Code execution: the prediction's code, then the item's tests, run by Python in a sandbox; the item
passes when the program exits 0.

The sandbox (code_sandbox.py) is the best this machine gives, probed once per process: namespaces of
its own where unshare(2) is allowed (a read-only view of the system and this Python, a private
scratch folder, no network, an unprivileged uid, a pid namespace whose end kills every process the
program started), else bubblewrap where it is installed and protege is not root, else nothing but
rlimits, a uid of its own when root and a subreaper. Every backend limits processes (unless the
program's uid is root's), address space per process, file size, open files and CPU time, and kills
the program and all it started at the timeout. Without a network namespace
the program could reach the network (`import _socket`, a subprocess), so the item is refused: it
scores 0 with the reason, unless the task accepts that (`accept_no_network_isolation`). Each item's
details say which isolation applied (`sandbox`) and why a better one did not.

The program runs from `-c` through runpy rather than being pasted under a prelude, so that
`from __future__` imports stay legal and traceback line numbers are the program's own.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from ...config import MetricConfig
from ...registry import METRIC
from . import code_sandbox

# the last fenced block; a block cut off by max_new_tokens runs to the end of the text
FENCED = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
STDERR_TAIL = 2000
PROCESS_LIMIT = 32
SETUP_SECONDS = 10.0  # the launcher's own start and teardown, on top of the program's timeout
ISOLATED = ("namespaces", "bwrap")  # best first


class CodeMetric(MetricConfig):
    name: Literal["code"] = Field("code", description="The answer's code passes the item's tests (or runs the "
                                  "reference as the test), in a sandboxed Python process.")
    timeout: float = Field(5.0, gt=0, description="Seconds one program may run.")
    memory_mb: int = Field(512, gt=0, description="Address-space limit of one program, in MiB.")
    accept_no_network_isolation: bool = Field(
        False, description="Run the code even where this machine gives no network namespace (then only "
        "Python's socket module is blocked, not `_socket` or a subprocess, and the filesystem is not "
        "isolated); false: such items fail, with the reason in their record.")


@dataclass(frozen=True)
class Backend:
    name: str
    unavailable: dict[str, str] = field(default_factory=dict)  # the better backends refused here, and why


def extract_code(prediction: str) -> str:
    blocks = FENCED.findall(prediction)
    return blocks[-1] if blocks else prediction


@functools.cache
def sandbox_backend() -> Backend:
    """The best backend that runs a program here (probed once)."""
    unavailable = {}
    for name in ISOLATED:
        reason = why_unavailable(name)
        if reason is None:
            return Backend(name, unavailable)
        unavailable[name] = reason
    return Backend("none", unavailable)


def why_unavailable(backend: str) -> str | None:
    if backend == "bwrap" and shutil.which("bwrap") is None:
        return "bwrap is not installed"
    if backend == "bwrap" and os.geteuid() == 0:
        return "protege runs as root, and no process limit binds root inside bwrap"
    result = launch(backend, "pass\n", CodeMetric())
    if result["returncode"] == 0 and "error" not in result:
        return None
    return result.get("error") or f"a test program exited {result['returncode']}: {result['stderr'][-300:]}"


def tail(path: Path, limit: int = STDERR_TAIL) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4 * limit))
        return f.read().decode("utf-8", errors="replace")[-limit:]


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is already gone
        pass


def wait_for_report(proc: subprocess.Popen, limit: float) -> dict:
    """The launcher's report; it enforces the timeout itself, `limit` is a backstop for a stuck one."""
    try:
        out = proc.communicate(timeout=limit)[0]
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        return {"returncode": -signal.SIGKILL, "timed_out": True, "error": f"the sandbox ran past {limit:g} s"}
    finally:
        kill_group(proc.pid)  # whatever the launcher left in its process group
    try:
        return json.loads(out.decode().splitlines()[-1])
    except (ValueError, IndexError):
        return {"returncode": proc.returncode, "timed_out": False, "error": "the sandbox launcher gave no report"}


def launch(backend: str, source: str, cfg: CodeMetric) -> dict:
    with tempfile.TemporaryDirectory(prefix="protege-code-", ignore_cleanup_errors=True) as work:
        Path(work, "program.py").write_text(source, encoding="utf-8", errors="replace")
        stderr_path = Path(work, "stderr.txt")
        plan = {"backend": backend, "work": work, "python": sys.executable, "timeout": cfg.timeout,
                "memory_mb": cfg.memory_mb, "processes": PROCESS_LIMIT}
        started = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(code_sandbox.command(plan), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=stderr, start_new_session=True)
            result = wait_for_report(proc, cfg.timeout + SETUP_SECONDS)
        return {**result, "stderr": tail(stderr_path), "seconds": round(time.monotonic() - started, 3)}


def refusal(backend: Backend) -> dict:
    reasons = "; ".join(f"{name}: {why}" for name, why in backend.unavailable.items())
    return {"error": f"refused to run the code: this machine gives it no network isolation ({reasons}); a task "
                     "that accepts that sets the metric option accept_no_network_isolation: true",
            "sandbox": {"backend": "none", "unavailable": backend.unavailable}}


def run_program(source: str, cfg: CodeMetric) -> dict:
    backend = sandbox_backend()
    if backend.name not in ISOLATED and not cfg.accept_no_network_isolation:
        return refusal(backend)
    details = launch(backend.name, source, cfg)
    return {**details, "sandbox": {**details.get("sandbox", {}), "unavailable": backend.unavailable}}


@METRIC.register(CodeMetric)
def code_pass(prediction: str, reference: str, cfg: CodeMetric, tests: str = "") -> tuple[float, dict]:
    code = extract_code(prediction)
    if not code.strip():
        return 0.0, {"error": "the prediction holds no code"}
    details = run_program(f"{code}\n\n{tests or reference}\n", cfg)
    passed = details.get("returncode") == 0 and not details.get("timed_out") and "error" not in details
    return float(passed), details
