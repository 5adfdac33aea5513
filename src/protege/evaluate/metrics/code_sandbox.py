"""The code metric's sandbox launcher: runs one Python program with the isolation a backend gives and
prints one JSON line saying how the program ended and which isolation held.

code_exec runs it as a script (`python -I code_sandbox.py PLAN`): a fresh, single-threaded process,
so forking is safe, that imports nothing but the standard library. The backends:

- "namespaces": new user, mount, pid, network, IPC, UTS and cgroup namespaces from unshare(2). The
  program's root is a read-only tmpfs holding read-only binds of the system's /usr and libraries and
  of this Python, five device nodes, its own /proc, and /sandbox, /tmp and /dev/shm as its only
  writable places (a 32 MiB tmpfs each); the rest of the filesystem is not there. It runs as uid 1000 of that
  namespace (nobody's uid outside when protege runs as root, else protege's), without capabilities,
  as a child of the namespace's init, which is killed at the end and takes every process of the
  namespace with it, setsid() or not. Its network namespace has only a loopback that is down.
- "bwrap": the same through bubblewrap, for machines that let bwrap make user namespaces but not
  other programs (Ubuntu 24.04's AppArmor rule).
- "none": rlimits, nobody's uid when root, Python's socket module blocked, and a subreaper that kills
  every descendant at the end. No filesystem or network isolation: code_exec refuses it unless the
  task accepts that.

Every backend sets the rlimits (processes, address space, file size, open files, CPU, no core) and
the time limit. A plan is JSON: backend, work (a folder holding program.py), python, timeout,
memory_mb, processes.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import select
import shutil
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NAMESPACES = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
              | CLONE_NEWCGROUP)
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH, AT_FDCWD, AT_RECURSIVE = 2, -100, 0x8000
MOUNT_ATTR_READ_ONLY = 1 | 2 | 4  # MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
SYS_MOUNT_SETATTR = 442  # the same number on every architecture
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203,
                  "s390x": 217, "armv7l": 218, "i686": 217}
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38

SANDBOX_ID = 1000  # the program's uid and gid inside a user namespace
NOBODY = 65534
SCRATCH = "/sandbox"
WRITABLE = (SCRATCH, "/tmp", "/dev/shm")  # a tmpfs each
SCRATCH_BYTES = 32 << 20
SCRATCH_INODES = 4096
FILE_BYTES = 16 << 20
OPEN_FILES = 256
DEVICES = ("null", "zero", "full", "random", "urandom")
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
ROOT_UNLIMITED = "the program's uid outside is 0 (root's), which RLIMIT_NPROC never binds"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
NO_SOCKETS = '''\
import socket as _socket_module
class _NoNetworkSocket(_socket_module.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the protege code sandbox")
_socket_module.socket = _socket_module.SocketType = _NoNetworkSocket
del _socket_module
'''
PROCESS_CAP = "import resource\nresource.setrlimit(resource.RLIMIT_NPROC, ({n}, {n}))\ndel resource\n"
RUN = 'import runpy, sys\nsys.argv = ["program.py"]\nrunpy.run_path("program.py", run_name="__main__")\n'

libc = ctypes.CDLL(None, use_errno=True)


def command(plan: dict) -> list[str]:
    """The command that runs a plan (-I: no user site-packages, no PYTHON* variables)."""
    return [sys.executable, "-I", os.path.abspath(__file__), json.dumps(plan)]


# system calls Python does not wrap

def check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def as_bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def syscall(number: int, *args) -> int:
    return libc.syscall(ctypes.c_long(number), *args)


def unshare(flags: int) -> None:
    check(libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None):
    check(libc.mount(as_bytes(source), as_bytes(target), as_bytes(fstype), ctypes.c_ulong(flags),
                     as_bytes(data)), f"mount {target}")


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_read_only(target: str, recursive: bool = True) -> None:
    """Read-only, nosuid and nodev for a mount, and every mount under it when `recursive`
    (mount_setattr, Linux 5.12)."""
    attr = MountAttr(MOUNT_ATTR_READ_ONLY, 0, 0, 0)
    check(syscall(SYS_MOUNT_SETATTR, ctypes.c_long(AT_FDCWD), as_bytes(target),
                  ctypes.c_long(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                  ctypes.c_long(ctypes.sizeof(attr))), f"read-only {target}")


def pivot_to(root: str) -> None:
    """Makes `root` the root and detaches the old one, so that nothing of it stays reachable."""
    os.chdir(root)
    check(syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    check(libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "detach the old root")
    os.chdir("/")


def prctl(option: int, value: int) -> None:
    check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                     ctypes.c_ulong(0)), f"prctl {option}")


# what the program sees

def python_paths() -> set[str]:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return prefixes | {os.path.realpath(path) for path in prefixes} | {os.path.realpath(sys.executable)}


def visible_paths() -> list[str]:
    """The system's and this Python's paths, each once (none under another one of them)."""
    paths = sorted(path for path in set(SYSTEM_PATHS) | python_paths() if os.path.lexists(path))
    return [path for i, path in enumerate(paths) if not any(inside(path, other) for other in paths[:i])]


def inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def make_mountpoint(target: str, folder: bool) -> None:
    os.makedirs(target if folder else os.path.dirname(target), exist_ok=True)
    if not folder:
        open(target, "a").close()


def expose(root: str, path: str) -> None:
    """Shows `path` read-only under `root`: a symlink as the same symlink, anything else bound."""
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(path), target)
        return
    make_mountpoint(target, os.path.isdir(path))
    mount(path, target, flags=MS_BIND | MS_REC)
    make_read_only(target)


def add_devices(root: str) -> None:
    for name in DEVICES:
        make_mountpoint(f"{root}/dev/{name}", folder=False)
        mount(f"/dev/{name}", f"{root}/dev/{name}", flags=MS_BIND)


def add_scratch(root: str, program: str) -> None:
    for folder in WRITABLE:
        mount("tmpfs", root + folder, "tmpfs", MS_NOSUID | MS_NODEV,
              f"size={SCRATCH_BYTES},nr_inodes={SCRATCH_INODES},mode=1777")
    shutil.copyfile(program, f"{root}{SCRATCH}/program.py")


def add_proc(root: str) -> bool:
    """The pid namespace's own /proc; False where the kernel refuses one (a masked /proc outside)."""
    try:
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return True
    except OSError:
        return False


def block_nested_namespaces() -> bool:
    """No user namespace inside ours: the program cannot get capabilities even over an empty one."""
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as limit:
            limit.write("0\n")
        return True
    except OSError:
        return False


def build_root(root: str, program: str) -> dict:
    mount(None, "/", flags=MS_REC | MS_PRIVATE)  # nothing done here reaches the parent namespace
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    paths = visible_paths()
    for path in paths:
        expose(root, path)
    add_devices(root)
    for folder in (*WRITABLE, "/proc"):
        os.makedirs(root + folder)
    make_read_only(root, recursive=False)  # what is mounted on it from here on stays writable
    add_scratch(root, program)
    proc = add_proc(root)
    nested = block_nested_namespaces()
    pivot_to(root)
    return {"read_only": paths, "writable": list(WRITABLE), "proc": proc,
            "nested_namespaces_blocked": nested}


# the program

def set_limits(plan: dict, processes: int) -> None:
    cpu = int(plan["timeout"]) + 1
    memory = plan["memory_mb"] << 20
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, FILE_BYTES),
                         (resource.RLIMIT_NOFILE, OPEN_FILES), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, processes)):
        resource.setrlimit(limit, (value, value))


def limits(plan: dict, processes: int) -> dict:
    return {"processes": processes, "memory_mb": plan["memory_mb"], "file_bytes": FILE_BYTES,
            "open_files": OPEN_FILES, "cpu_seconds": int(plan["timeout"]) + 1}


def quiet_stdio() -> None:
    """stdin and stdout to /dev/null; stdout is the launcher's report, never the program's."""
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def drop_groups() -> None:
    try:
        os.setgroups([])
    except PermissionError:  # not root, or a user namespace's root that may not
        pass


def become_nobody() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def program_command(plan: dict, prelude: str = "") -> list[str]:
    return [plan["python"], "-I", "-c", prelude + RUN]


def exec_program(argv: list[str], cwd: str, home: str, tmp: str) -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary gives back what was dropped
    quiet_stdio()
    os.chdir(cwd)
    os.execve(argv[0], argv, {**ENV, "HOME": home, "TMPDIR": tmp})


# processes

def report(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def in_child(status: int, function, *args) -> None:
    """Runs a forked child's part; it never returns into the parent's code, errors go to the report."""
    try:
        function(*args)
    except BaseException as error:
        report(status, {"error": f"{type(error).__name__}: {error}"})
    os._exit(125)


def wait_with_deadline(pid: int, timeout: float) -> tuple[int, bool]:
    """The child's exit code (negative: the signal that ended it) and whether it was killed at `timeout`."""
    with_fd = os.pidfd_open(pid)
    ready = select.select([with_fd], [], [], timeout)[0]
    os.close(with_fd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), not ready


def reap_until(pid: int) -> int:
    """As init: reaps whatever is reparented here until `pid` ends; its exit code."""
    while True:
        ended, status = os.wait()
        if ended == pid:
            return os.waitstatus_to_exitcode(status)


def children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[1] == me:  # the field after the state: ppid
                    found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def kill_descendants() -> None:
    """As subreaper: kills each child until none is left; orphans of the killed come here in turn."""
    while True:
        for pid in children():
            os.kill(pid, signal.SIGKILL)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.01)
        except ChildProcessError:
            return


def processes_of(uid: int) -> int:
    """Processes this uid has: outside a user namespace RLIMIT_NPROC counts them all."""
    count = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            count += os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            continue
    return count


def read_reports(fd: int) -> dict:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    merged: dict = {}
    for line in data.decode().splitlines():
        merged = {**json.loads(line), **merged}  # the first error stays
    return merged


# backend "namespaces"

def id_maps() -> list[tuple[str, str, int]]:
    """(uid map, gid map, the program's uid outside): uid and gid 1000 inside are nobody's outside where
    we may map them (root keeping 0 to set up with), else our own."""
    own = (f"{SANDBOX_ID} {os.geteuid()} 1\n", f"{SANDBOX_ID} {os.getegid()} 1\n", os.geteuid())
    nobody = f"0 0 1\n{SANDBOX_ID} {NOBODY} 1\n"
    return [(nobody, nobody, NOBODY), own] if os.geteuid() == 0 else [own]


def write_file(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def write_maps(pid: int) -> int:
    """Maps the ids of the child's user namespace; the program's uid outside."""
    write_file(f"/proc/{pid}/setgroups", "deny")
    for uid_map, gid_map, uid in id_maps():
        try:
            write_file(f"/proc/{pid}/uid_map", uid_map)
        except PermissionError:  # root of a user namespace that holds no nobody
            continue
        write_file(f"/proc/{pid}/gid_map", gid_map)
        return uid
    raise PermissionError("no uid map was accepted")


def namespace_program(plan: dict) -> None:
    os.setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
    os.setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
    set_limits(plan, plan["processes"])
    exec_program(program_command(plan), SCRATCH, SCRATCH, "/tmp")


def namespace_init(plan: dict, status: int) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # killing the launcher kills the namespace
    root = os.path.join(plan["work"], "root")
    os.mkdir(root, 0o700)
    report(status, {"sandbox": build_root(root, os.path.join(plan["work"], "program.py"))})
    pid = os.fork()
    if pid == 0:
        in_child(status, namespace_program, plan)
    report(status, {"returncode": reap_until(pid)})
    os._exit(0)


def namespace_child(plan: dict, ready: int, go: int, status: int) -> None:
    drop_groups()
    unshare(NAMESPACES)
    os.write(ready, b"u")
    if os.read(go, 1) != b"g":
        os._exit(125)
    pid = os.fork()  # the first process of the new pid namespace: its init
    if pid == 0:
        in_child(status, namespace_init, plan, status)
    report(status, {"timed_out": wait_with_deadline(pid, plan["timeout"])[1]})
    os._exit(0)


def run_namespaces(plan: dict) -> dict:
    (status_r, status_w), (ready_r, ready_w), (go_r, go_w) = os.pipe(), os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        in_child(status_w, namespace_child, plan, ready_w, go_r, status_w)
    for fd in (status_w, ready_w, go_r):
        os.close(fd)
    started = start_namespaces(pid, ready_r, go_w)
    uid = started.pop("uid", None)
    os.waitpid(pid, 0)
    result = {**read_reports(status_r), **started}
    result.setdefault("returncode", -signal.SIGKILL)
    sandbox = {"backend": "namespaces", "network_isolated": True, "filesystem_isolated": True,
               **result.pop("sandbox", {})}
    return {**result, "sandbox": with_uid(sandbox, uid, limits(plan, plan["processes"]))}


def with_uid(sandbox: dict, uid: int | None, limits: dict) -> dict:
    if uid == 0:
        sandbox = {**sandbox, "processes": f"not limited: {ROOT_UNLIMITED}"}
    return {**sandbox, "uid": uid, "limits": limits}


def start_namespaces(pid: int, ready: int, go: int) -> dict:
    """Maps the child's ids once it has unshared, then lets it go on: the uid outside, or the error."""
    try:
        if os.read(ready, 1) != b"u":
            return {}
        uid = write_maps(pid)
        os.write(go, b"g")
        return {"uid": uid}
    except OSError as error:
        return {"error": f"mapping the sandbox's user ids: {error}"}
    finally:
        os.close(go)


# backends "bwrap" and "none": a direct child of this subreaper

def bwrap_argv(plan: dict) -> list[str]:
    paths = []
    for path in visible_paths():
        paths += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
    scratch = [arg for folder in WRITABLE for arg in ("--size", str(SCRATCH_BYTES), "--tmpfs", folder)]
    prelude = PROCESS_CAP.format(n=plan["processes"])  # inside bwrap's user namespace only ours count
    return [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--die-with-parent",
            "--new-session", "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID), *paths, "--dev", "/dev",
            "--proc", "/proc", *scratch, "--ro-bind", os.path.join(plan["work"], "program.py"),
            f"{SCRATCH}/program.py", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SCRATCH, "--",
            *program_command(plan, prelude)]


def bwrap_program(plan: dict, processes: int) -> None:
    set_limits(plan, processes)
    exec_program(bwrap_argv(plan), plan["work"], SCRATCH, "/tmp")


def plain_program(plan: dict, processes: int) -> None:
    if plain_uid(plan) != os.geteuid():
        become_nobody()
    set_limits(plan, processes)
    exec_program(program_command(plan, NO_SOCKETS), plan["work"], plan["work"], plan["work"])


def plain_uid(plan: dict) -> int:
    """nobody's uid for root where nobody can run this Python (one under /root it cannot), else ours."""
    reachable = all(others_may_enter(path) for path in (plan["python"], os.path.realpath(plan["python"])))
    return NOBODY if os.geteuid() == 0 and reachable else os.geteuid()


def others_may_enter(path: str) -> bool:
    folders = [os.path.dirname(path)]
    while folders[-1] != "/":
        folders.append(os.path.dirname(folders[-1]))
    return all(os.stat(folder).st_mode & 0o001 for folder in folders) and bool(os.stat(path).st_mode & 0o001)


def run_supervised(plan: dict, program, sandbox: dict) -> dict:
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the program, setsid() or not, come back to us
    uid = plain_uid(plan) if program is plain_program else os.geteuid()
    if uid != os.geteuid():
        os.chown(plan["work"], NOBODY, NOBODY)
    processes = processes_of(uid) + plan["processes"]
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        in_child(status_w, program, plan, processes)
    os.close(status_w)
    returncode, timed_out = wait_with_deadline(pid, plan["timeout"])
    kill_descendants()
    return {**read_reports(status_r), "returncode": returncode, "timed_out": timed_out,
            "sandbox": with_uid(sandbox, uid, limits(plan, plan["processes"]))}


BWRAP = {"backend": "bwrap", "network_isolated": True, "filesystem_isolated": True}
NONE = {"backend": "none", "network_isolated": False, "filesystem_isolated": False,
        "network": "only Python's socket module is blocked: _socket, ctypes and subprocesses reach the network",
        "filesystem": "not isolated: the program reads and writes whatever its uid may",
        "processes": "at most `processes` more than its uid already has; descendants are killed at the end, "
                     "unless the program kills this launcher first"}


def run(plan: dict) -> dict:
    if plan["backend"] == "namespaces":
        return run_namespaces(plan)
    if plan["backend"] == "bwrap":
        shown = {"read_only": visible_paths(), "writable": list(WRITABLE)}
        return run_supervised(plan, bwrap_program, {**BWRAP, **shown})
    return run_supervised(plan, plain_program, NONE)


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
