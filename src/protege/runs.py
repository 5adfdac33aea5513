"""Run directories: atomic files, content-addressed stages that are skipped when done."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable


def digest(obj: Any) -> str:
    """Stable short hash of any JSON-able value: the key of a stage."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def umask() -> int:
    """The process's umask. os.umask reads it only by setting it, so it is read from /proc where there
    is one: no moment in which another thread's new files would get a mask of 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def temp_file(directory: Path, prefix: str, suffix: str = "") -> tuple[int, str]:
    """tempfile.mkstemp, with the mode a plain open() gives (0666 less the umask), not mkstemp's 0600:
    the file is renamed into place and is then the user's output."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, name


def temp_dir(directory: Path, prefix: str) -> Path:
    """tempfile.mkdtemp, with the mode a plain mkdir gives (0777 less the umask), not mkdtemp's 0700."""
    path = Path(tempfile.mkdtemp(dir=directory, prefix=prefix))
    path.chmod(0o777 & ~umask())
    return path


def listing(path: Path) -> dict[str, list[int] | None]:
    """What is at `path`, as protege records what it wrote to know it again: each file and folder at
    or under it by its path relative to `path` ("." is `path` itself), a file with [size, mtime_ns] and
    a folder with None. Any file changed, added or removed since changes the listing."""
    entries = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    return {entry.relative_to(path).as_posix(): stamp(entry) for entry in entries}


def stamp(path: Path) -> list[int] | None:
    if not path.is_file():
        return None
    stats = path.stat()
    return [stats.st_size, stats.st_mtime_ns]


def write_atomic(path: Path, text: str) -> None:
    """The file whole or not at all: written beside it and renamed, the partial copy removed when the
    write fails (a full disk, an interrupt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    """A JSON file's value; a file that is not JSON (truncated by a kill, edited by hand) is an error
    naming it."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise JSONLError(Path(path), exc.lineno, exc.msg) from None


def read_text(path: Path) -> str:
    """A text file as UTF-8; bytes that are not UTF-8 are an error naming the file and their line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise JSONLError(Path(path), line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})",
                         what="unreadable text") from None


def cache_root() -> Path:
    """Where converted models and the teacher cache live; PROTEGE_CACHE_DIR moves it."""
    return Path(os.environ.get("PROTEGE_CACHE_DIR") or Path.home() / ".cache" / "protege")


def build_dir_atomic(target: Path, build: Callable[[Path], None]) -> None:
    """Build a folder in a temporary sibling and rename it into place when the build finishes, so
    a crash leaves nothing that looks done and no temporary folder behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, f".{target.name}.")
    try:
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except Exception as exc:
        if disk_full(tmp):  # libraries report a failed write in their own words (torch: "unexpected pos")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def disk_full(path: Path) -> bool:
    """Less than a mebibyte left where `path` is: what a failed write there most likely ran into."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize < 1 << 20


class JSONLError(ValueError):
    """A line of a JSON or JSONL file that cannot be read; says which file and line."""

    def __init__(self, path: Path, line: int, msg: str, what: str = "invalid JSON"):
        self.path, self.line, self.msg, self.what = path, line, msg, what
        super().__init__(f"{path}:{line}: {what}: {msg}")


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in numbered_jsonl(path)]


def numbered_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, row) for every non-blank line of a JSONL file."""
    return [(n, jsonl_row(Path(path), n, line)) for n, line in enumerate(read_text(path).splitlines(), 1)
            if line.strip()]


def jsonl_row(path: Path, n: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise JSONLError(path, n, exc.msg) from None


class RunInUse(RuntimeError):
    """Another live process holds the run directory."""


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C while a stage was being built: says which, so the user knows a re-run resumes there."""

    def __init__(self, stage: str):
        self.stage = stage
        super().__init__(stage)


# what a killed write leaves beside what it was writing: temp_file's and temp_dir's ".NAME.XXXXXXXX",
# with the suffix asked for, if any (a GGUF's ".gguf")
PARTIAL_FILE = re.compile(r"\.(.+)\.[a-z0-9_]{8}(\.\w+)?")


class Run:
    """A run directory. Each stage lives in stages/NAME-KEY; a stage whose folder exists, with every
    file its stage.json lists at the size it was written, is done."""

    def __init__(self, root: Path, say: Callable[[str], None] = lambda line: None):
        self.root = Path(root)
        self.stages = self.root / "stages"
        self.say = say
        self.lock_fd: int | None = None

    def lock(self) -> None:
        """Hold the run directory for this process, so that two runs never train into the same stages
        or pay the teacher twice. flock is let go by the kernel when its holder dies: the lock of a
        killed run is taken over, and its leftover partial folders and files are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            if holder.startswith(f"pid {os.getpid()},"):  # this process, from an earlier command it ran
                return self.remove_partial_writes()
            raise RunInUse(f"run directory {self.root} is in use by another protege ({holder}); wait for it "
                           f"to finish or give this one another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.lock_fd = fd
        self.remove_partial_writes()

    def remove_partial_writes(self) -> None:
        """Every hidden folder in stages/ (only a stage being built is one), and what a killed write left
        in the run directory and in the folders directly in it (the export's half-built model)."""
        for leftover in self.stages.glob(".*") if self.stages.is_dir() else []:
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in [*self.root.glob(".*"), *self.root.glob("*/.*")]:
            if PARTIAL_FILE.fullmatch(leftover.name):
                remove_tree(leftover)

    def stage_dir(self, name: str, key: str) -> Path:
        return self.stages / f"{name}-{key}"

    def stage(self, name: str, key_material: Any, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return the stage's folder, building it first (atomically) unless it is done.
        Returns (folder, reused)."""
        final = self.stage_dir(name, digest(key_material))
        if final.is_dir() and self.intact(final):
            return final, True

        def build_and_record(out: Path) -> None:
            build(out)
            write_json(out / "stage.json", {"name": name, "key": key_material, "files": written_files(out)})

        if not is_main_process():
            return follow_main_process(final, build), False
        try:
            build_dir_atomic(final, build_and_record)
        except KeyboardInterrupt as exc:
            raise exc if isinstance(exc, StageInterrupted) else StageInterrupted(final.name) from None
        return final, False

    def intact(self, folder: Path) -> bool:
        """Every file the stage wrote is there at the size it was written (a stage from before the list
        was kept has none to check)."""
        try:
            files = read_json(folder / "stage.json").get("files", {})
        except (OSError, ValueError, AttributeError):
            files = {"stage.json": -1}
        changed = [name for name, size in files.items() if file_size(folder / name) != size]
        if changed:
            self.say(f"{folder.name}: {changed[0]} is missing or changed since it was written; redoing the stage")
        return not changed


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def written_files(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): file_size(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def file_size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def is_main_process() -> bool:
    """Under `accelerate launch` or torchrun every process runs protege; rank 0 writes the run."""
    return int(os.environ.get("RANK", "0")) == 0


def follow_main_process(final: Path, build: Callable[[Path], None], timeout: float = 3600) -> Path:
    """Another rank does the same work (a training step needs every rank) into a scratch folder
    it then drops, and waits for rank 0's folder to appear."""
    import time
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.rank") as scratch:
        build(Path(scratch))
    deadline = time.time() + timeout
    while not final.is_dir():
        if time.time() > deadline:
            raise TimeoutError(f"rank 0 did not finish {final}")
        time.sleep(0.2)
    return final
