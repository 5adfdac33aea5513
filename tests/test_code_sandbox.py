"""The code metric's sandbox holds what it promises against hostile programs: nothing written or read
outside its scratch folder, no more than its process limit, no process left behind (setsid() or not),
no connection to the host's network, and a refusal to run at all where no network isolation can be
made, unless the task accepts that. Each isolated backend is tried where this machine has it; a test
is skipped only with the reason the machine gives for not having it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from protege.evaluate.metrics import code_exec, score
from protege.evaluate.metrics.code_exec import Backend
from protege.registry import METRIC


def cfg(**options):
    return METRIC.make("code", **options)


@pytest.fixture(params=code_exec.ISOLATED)
def isolated(request, monkeypatch) -> str:
    """Each isolated backend in turn, where this machine has it."""
    reason = code_exec.why_unavailable(request.param)
    if reason:
        pytest.skip(f"no {request.param} sandbox on this machine: {reason}")
    monkeypatch.setattr(code_exec, "sandbox_backend", lambda: Backend(request.param))
    return request.param


@pytest.fixture
def unisolated(monkeypatch) -> Backend:
    backend = Backend("none", {"namespaces": "unavailable (forced by the test)"})
    monkeypatch.setattr(code_exec, "sandbox_backend", lambda: backend)
    return backend


@pytest.fixture
def open_folder() -> Path:
    """A folder anyone may reach and write, outside the sandbox's own: no uid keeps a program out of it,
    only isolation does."""
    folder = Path(tempfile.mkdtemp(prefix="protege-open-"))
    folder.chmod(0o777)
    (folder / "secret.txt").write_text("the user's data")
    (folder / "secret.txt").chmod(0o666)
    yield folder
    shutil.rmtree(folder)


def run(program: str, **options) -> tuple[float, dict]:
    return score(cfg(**options), program, "")


# filesystem

def test_code_cannot_write_outside_its_folder(isolated, open_folder):
    program = f"open({str(open_folder / 'escaped.txt')!r}, 'w').write('out')"
    value, details = run(program)
    assert not (open_folder / "escaped.txt").exists()
    assert value == 0.0 and details["sandbox"]["filesystem_isolated"] and details["sandbox"]["backend"] == isolated


def test_code_cannot_read_or_change_the_users_files(isolated, open_folder):
    program = f"open({str(open_folder / 'secret.txt')!r}, 'a').write(' changed')"
    value, details = run(program)
    assert value == 0.0 and "FileNotFoundError" in details["stderr"]
    assert (open_folder / "secret.txt").read_text() == "the user's data"


def test_code_sees_nothing_of_the_home_folder_but_the_python_it_runs(isolated):
    home = Path.home()
    program = f"import json, os, sys\nprint(json.dumps(os.listdir({str(home)!r}) if os.path.isdir({str(home)!r}) " \
              "else []), file=sys.stderr)"
    value, details = run(program)
    assert value == 1.0, details["stderr"]
    needed = {Path(path).relative_to(home).parts[0] for path in details["sandbox"]["read_only"]
              if Path(path).is_relative_to(home)}
    assert set(json.loads(details["stderr"])) <= needed


def test_code_writes_only_to_its_scratch_folder(isolated):
    program = """\
import os
for folder in ("/usr", "/etc", "/"):
    try:
        open(os.path.join(folder, "x"), "w")
    except OSError:
        continue
    raise SystemExit(f"wrote into {folder}")
open("here.txt", "w").write("scratch")
open("/tmp/t.txt", "w").write("scratch")
"""
    value, details = run(program)
    assert value == 1.0, details["stderr"]


# processes

FORK_BOMB = """\
import os, sys, time
children = []
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print("forked", len(children), file=sys.stderr)
"""


def test_code_fork_bomb_stops_at_the_process_limit(isolated):
    started = time.monotonic()
    value, details = run(FORK_BOMB)
    forked = int(details["stderr"].split()[-1])
    assert 0 < forked < code_exec.PROCESS_LIMIT <= details["sandbox"]["limits"]["processes"]
    assert time.monotonic() - started < 10  # the sleeping children did not keep it waiting


def setsid_grandchild(marker: str, then: str) -> str:
    """A program that leaves a process of a new session behind, named by `marker`, then does `then`."""
    return f"""\
import os, sys
ready_r, ready_w = os.pipe()
os.set_inheritable(ready_w, True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # says it is up once it runs under its new name
        wait = f"import os, time; os.write({{ready_w}}, b'1'); time.sleep(30)"
        os.execv(sys.executable, [sys.executable, "-c", wait, {marker!r}])
    os._exit(0)
os.read(ready_r, 1)
{then}
"""


def survivors(marker: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.fixture
def marker():
    marker = f"protege-test-{uuid.uuid4().hex}"
    yield marker
    for pid in survivors(marker):  # a failed test leaves nothing behind either
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("then", ["pass", "while True: pass"], ids=["exits", "runs past the timeout"])
def test_code_setsid_grandchild_does_not_outlive_the_program(isolated, marker, then):
    value, details = run(setsid_grandchild(marker, then), timeout=2.0)
    assert details["timed_out"] == (then != "pass"), details
    assert survivors(marker) == []


def test_code_setsid_grandchild_is_killed_without_isolation_too(unisolated, marker):
    value, details = run(setsid_grandchild(marker, "pass"), accept_no_network_isolation=True)
    assert value == 1.0 and details["sandbox"]["backend"] == "none", details
    assert survivors(marker) == []


# network

@pytest.fixture
def listening_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


CONNECT = "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')"
CONNECTIONS = {
    "socket": CONNECT,
    "_socket": "import _socket\n_socket.socket().connect(('127.0.0.1', {port}))",
    "subprocess": "import subprocess, sys\nsubprocess.run([sys.executable, '-c', {connect!r}], check=True)",
}


def assert_nothing_connected(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


@pytest.mark.parametrize("way", sorted(CONNECTIONS))
def test_code_cannot_reach_a_local_server(isolated, listening_server, way):
    port = listening_server.getsockname()[1]
    program = CONNECTIONS[way].format(port=port, connect=CONNECT.format(port=port))
    value, details = run(program)
    assert value == 0.0 and details["sandbox"]["network_isolated"]
    assert "Network is unreachable" in details["stderr"]
    assert_nothing_connected(listening_server)


def test_code_without_network_isolation_is_refused_with_the_reason(unisolated, listening_server, open_folder):
    port = listening_server.getsockname()[1]
    program = f"open({str(open_folder / 'ran.txt')!r}, 'w')\n" + CONNECTIONS["_socket"].format(port=port)
    value, details = run(program)
    assert value == 0.0 and "refused" in details["error"] and "accept_no_network_isolation" in details["error"]
    assert "forced by the test" in details["error"] and details["sandbox"]["backend"] == "none"
    assert not (open_folder / "ran.txt").exists()  # it never ran
    assert_nothing_connected(listening_server)


def test_code_without_network_isolation_runs_when_the_task_accepts_it(unisolated, listening_server):
    program = CONNECT.format(port=listening_server.getsockname()[1])
    value, details = run(program, accept_no_network_isolation=True)
    assert value == 0.0 and "network access is disabled" in details["stderr"]
    assert not details["sandbox"]["network_isolated"] and "_socket" in details["sandbox"]["network"]
    assert details["sandbox"]["unavailable"] == unisolated.unavailable


def test_code_the_record_says_which_isolation_applied():
    value, details = run("pass", accept_no_network_isolation=True)
    backend = code_exec.sandbox_backend()
    assert details["sandbox"]["backend"] == backend.name and details["sandbox"]["unavailable"] == backend.unavailable
    assert set(details["sandbox"]["limits"]) == {"processes", "memory_mb", "file_bytes", "open_files", "cpu_seconds"}


NO_NAMESPACES = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"'
REPORT = """\
import json
from protege.evaluate.metrics import code_exec, score
print(json.dumps([code_exec.sandbox_backend().unavailable, score("code", "pass", "")]))
"""


def test_code_where_the_kernel_gives_no_namespace_it_is_refused_with_the_kernels_reason():
    # a user namespace whose limit of nested ones is 0: the probe meets the real refusal
    reason = code_exec.why_unavailable("namespaces") or (shutil.which("unshare") is None and "no unshare")
    if reason:
        pytest.skip(f"cannot make a user namespace to forbid them in: {reason}")
    command = ["unshare", "--user", "--map-root-user", "sh", "-c", NO_NAMESPACES, sys.executable, REPORT]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    unavailable, (value, details) = json.loads(done.stdout.splitlines()[-1])
    assert "unshare" in unavailable["namespaces"] and "bwrap" in unavailable
    assert value == 0.0 and details["error"].startswith("refused") and unavailable["namespaces"] in details["error"]


def test_code_asyncio_works_where_the_network_is_isolated(isolated):
    # a socketpair is how asyncio wakes itself: blocking every socket would break it
    value, details = run("import asyncio\nasyncio.run(asyncio.sleep(0))")
    assert value == 1.0, details["stderr"]


def test_this_python_runs_inside(isolated):
    program = f"import sys\nassert sys.version == {sys.version!r}"
    assert run(program)[0] == 1.0
