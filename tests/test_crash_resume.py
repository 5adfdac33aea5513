"""A tiny `protege run` SIGKILLed at every stage boundary in turn, each time resumed by the next run:
no teacher request is paid twice, nothing is left over, and the summary is the uninterrupted run's.

One sequence hits every boundary once: killed in stage 1, resumed and killed in stage 2, ..., killed
in the export, killed while summary.json is written, then resumed to the end. The kill comes from
inside the run (a hook on the stage builder), not from a poller watching stages/: some stages follow
the one before by under 10 ms, which a poller on two busy cores misses. The hook SIGKILLs the run's
whole process group once the next stage has worked for half the time it took in the uninterrupted
run (a training stage: as soon as it has saved its first checkpoint, so that the resume trains on
from it), or as its build returns, before the rename, when the stage is done sooner.

Runs are forked from one process that has imported torch and the rest once: 24 runs that each paid
3-4 s of imports would not fit the time a test may take."""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from protege.runs import Run

# forks one run per job line (its command, environment, log and where to kill it: None, or [where,
# after, delay]); says the run's pid, then its exit status
SERVER = r"""
import json, os, signal, sys, threading, traceback
from pathlib import Path
import torch, transformers, trl, peft  # noqa: F401  paid once, not by every run
import protege.loop.run, protege.train  # noqa: F401
from protege import runs
from protege.cli import main
from protege.export import hf


def die():
    os.killpg(0, signal.SIGKILL)  # the run's process group, as `kill -9 -PGID` would


def done(stages):
    return sum(not p.name.startswith(".") for p in stages.iterdir()) if stages.is_dir() else 0


def crash(run_dir, where, after, delay):
    # the run is killed in the build of the first stage it has to make once `after` are done, in the
    # export's, or while it writes summary.json (a half-written temporary file beside it)
    build_dir_atomic, temp_file, stages = runs.build_dir_atomic, runs.temp_file, run_dir / "stages"

    def crashing_build(target, build):
        if where == "export" and target.parent == run_dir / "export":
            return build_dir_atomic(target, lambda tmp: (build(tmp), die()))
        if where != "stage" or target.parent != stages or done(stages) != after:
            return build_dir_atomic(target, build)

        def build_then_die(tmp):
            if target.name.startswith("train-"):  # "after a checkpoint save", every callback is told
                transformers.TrainerCallback.on_save = lambda *args, **kwargs: die()
            else:
                threading.Timer(delay, die).start()
            build(tmp)
            die()
        build_dir_atomic(target, build_then_die)

    def crashing_temp_file(directory, prefix, suffix=""):
        made = temp_file(directory, prefix, suffix)
        if where == "summary.json" and prefix == ".summary.json.":
            os.write(made[0], b'{"task": ')
            die()
        return made
    runs.build_dir_atomic, runs.temp_file = crashing_build, crashing_temp_file
    hf.build_dir_atomic = crashing_build  # bound when it was imported


def child(job):
    os.setsid()
    os.environ.update(job["env"])
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if job["crash"] is not None:
        crash(Path(job["run_dir"]), *job["crash"])
    try:
        code = main(job["argv"])
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(job)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""

# the example's teacher, writing down every request it is sent: one line is one request paid
COUNTED_TEACHER = """import os
from teacher import teacher as answer


def teacher(request):
    with open(os.environ["CRASH_TEACHER_LOG"], "a", encoding="utf-8") as log:
        log.write(repr(request) + "\\n")
    return answer(request)
"""

# two rounds (so failures are mined and sent back to the teacher), one merge strength, a checkpoint
# after each of the two training steps, an export
SMALL = ["--set", "student.model=tiny:0", "--set", "train.max_steps=2", "--set", "train.save_steps=1",
         "--set", "eval.max_new_tokens=4", "--set", "synth.expand=8", "--set", "synth.max_failures=4",
         "--set", "forgetting.probe_items=8", "--set", "forgetting.max_new_tokens=4",
         "--set", "merge.strengths=[0.5]", "--set", "rounds=2", "--set", "export.formats=[hf]"]
EVERY_KIND = {"eval-base", "probe-base", "eval-teacher", "synth-r0", "curate-r0", "train-r0", "mine-r1", "synth-r1",
              "train-r1", "merge-0.5", "eval-merge-0.5"}
RUN_SECONDS = 120  # a forked run of SMALL takes about 4 s


class Runs:
    """`protege run TASK --run-dir DIR` in processes forked from SERVER."""

    def __init__(self, task: Path, tmp: Path):
        self.task, self.tmp, self.count, self.pid, self.pending = task, tmp, 0, None, b""
        self.env = {"PROTEGE_CACHE_DIR": str(tmp / "cache"), "TOKENIZERS_PARALLELISM": "false"}
        # one thread: torch's second one spins against whatever else the two cores are running, which
        # made a 0.3 s stage take 15 s
        self.server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert self.answer() == "ready"

    def run(self, run_dir: Path, calls: Path, crash: tuple | None = None) -> int:
        self.count += 1
        job = {"argv": ["run", str(self.task), "--run-dir", str(run_dir), *SMALL], "run_dir": str(run_dir),
               "env": {**self.env, "CRASH_TEACHER_LOG": str(calls)}, "log": str(self.log()), "crash": crash}
        self.server.stdin.write((json.dumps(job) + "\n").encode())
        self.server.stdin.flush()
        self.pid = int(self.answer())
        code, self.pid = int(self.answer()), None
        return code

    def answer(self) -> str:
        """The server's next line, read off the pipe itself: a buffered reader may hold a line that
        select() then waits for."""
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.server.stdout], [], [], RUN_SECONDS)
            assert ready, f"run {self.count} took over {RUN_SECONDS} s: {self.tail()}"
            chunk = os.read(self.server.stdout.fileno(), 4096)
            assert chunk, f"the run server ended: {self.tail()}"
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def log(self) -> Path:
        return self.tmp / f"run-{self.count}.log"

    def tail(self) -> str:
        log = self.log()
        return log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else "(no log)"

    def close(self) -> None:
        if self.pid is not None:  # a run that hung: its process group goes with the server
            os.killpg(self.pid, signal.SIGKILL)
        self.server.kill()
        self.server.wait()


def counted_task(examples_dir: Path, tmp: Path) -> Path:
    task = tmp / "task"
    shutil.copytree(examples_dir / "iso-dates", task)
    (task / "counted.py").write_text(COUNTED_TEACHER)
    spec = (task / "task.yaml").read_text()
    (task / "task.yaml").write_text(spec.replace('function: "teacher:teacher"', 'function: "counted:teacher"'))
    return task


def stages_in_order(run_dir: Path) -> list[tuple[str, float]]:
    """(name, seconds it took after the one before it was done) of every stage, in the order made."""
    done = sorted(((p / "stage.json").stat().st_mtime_ns, p.name) for p in (run_dir / "stages").iterdir())
    starts = [(run_dir / ".lock").stat().st_mtime_ns, *(t for t, _ in done)]
    return [(name, (t - start) / 1e9) for (t, name), start in zip(done, starts)]


def done_stages(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "stages").iterdir() if not p.name.startswith("."))


def leftovers(run_dir: Path) -> list[str]:
    """The temporary folders and files a kill leaves beside what it was writing."""
    return sorted(str(p.relative_to(run_dir)) for p in [*run_dir.glob(".*"), *run_dir.glob("*/.*")]
                  if p.name != ".lock")


def checkpoints(run_dir: Path) -> list[Path]:
    return list(run_dir.glob("checkpoints/*/checkpoint-*/trainer_state.json"))


def everything(run_dir: Path) -> list[str]:
    """Every path in the run directory; TensorBoard's event files are named by the clock and the pid."""
    return sorted(re.sub(r"(events\.out\.tfevents)\..*", r"\1", str(p.relative_to(run_dir)))
                  for p in run_dir.rglob("*"))


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def paid_this_run(run_dir: Path) -> int:
    return json.loads((run_dir / "summary.json").read_text())["teacher_requests"]["paid_this_run"]


def comparable(run_dir: Path) -> dict:
    """summary.json less what differs between two runs that did the same work: the run directory in its
    paths, the wall clock, and paid_this_run, the teacher requests paid by the process that wrote the
    summary (here the last resume's, which reused the replies earlier ones paid for: the calls log
    counts those)."""
    summary = json.loads((run_dir / "summary.json").read_text().replace(str(run_dir), "RUN"))
    del summary["wall_seconds"], summary["teacher_requests"]["paid_this_run"]
    return summary


def kill_at_every_boundary(runs: Runs, crashed: Path, calls: Path, stages: list[tuple[str, float]]) -> list[int]:
    """Kill a run in each stage in turn, then in the export and in writing summary.json; returns how
    many requests the teacher had been sent at each kill."""
    kills = [(("stage", k, seconds / 2), [f"stages/.{name}."]) for k, (name, seconds) in enumerate(stages)]
    kills += [(("export", 0, 0), ["export/.export-scratch.", "export/.hf."]),
              (("summary.json", 0, 0), [".summary.json."])]
    sent = []
    for k, (crash, left) in enumerate(kills):
        assert runs.run(crashed, calls, crash) == -signal.SIGKILL, runs.tail()
        sent.append(len(lines(calls)))
        assert done_stages(crashed) == sorted(stage for stage, _ in stages[:k])
        # what this kill left is there (so the next run has something to clear), and no earlier kill's
        now = leftovers(crashed)
        assert len(now) == len(left) and all(map(str.startswith, now, left)), (crash, now)
        assert bool(checkpoints(crashed)) == (k < len(stages) and stages[k][0].startswith("train-"))
    return sent


def assert_paid_once(asked: list[str], paid: list[str], sent_at_kill: list[int]) -> None:
    """Each reply is committed to the teacher cache as it arrives (TeacherCache): a kill loses at most
    the request in flight, sent (here: the function called) but its reply not yet in the cache. So a
    request is paid twice only if it was the last one sent before a kill, and then only once more."""
    assert set(asked) == set(paid)
    in_flight = {asked[n - 1] for n in sent_at_kill if n}
    repaid = {request for request in asked if asked.count(request) > 1}
    assert repaid <= in_flight and all(asked.count(request) == 2 for request in repaid)
    assert len(asked) == len(paid) + len(repaid)


def test_a_run_killed_at_every_stage_boundary_resumes_to_the_same_summary_paying_nothing_twice(
        tmp_path, examples_dir):
    runs = Runs(counted_task(examples_dir, tmp_path), tmp_path)
    try:
        reference, crashed = tmp_path / "reference", tmp_path / "crashed"
        assert runs.run(reference, tmp_path / "reference-calls.log") == 0, runs.tail()
        paid, stages = lines(tmp_path / "reference-calls.log"), stages_in_order(reference)
        assert len(set(paid)) == len(paid) == paid_this_run(reference)
        assert {name.rsplit("-", 1)[0] for name, _ in stages} >= EVERY_KIND
        # the crashed sequence asks a cache of its own, so that it pays the teacher again; the tiny model stays
        for database in (tmp_path / "cache").glob("teacher_cache.sqlite*"):
            database.unlink()
        calls = tmp_path / "crashed-calls.log"
        sent_at_kill = kill_at_every_boundary(runs, crashed, calls, stages)
        assert runs.run(crashed, calls) == 0, runs.tail()
    finally:
        runs.close()
    assert_paid_once(lines(calls), paid, sent_at_kill)
    assert everything(crashed) == everything(reference)  # no leftover, hidden or not, anywhere
    assert comparable(crashed) == comparable(reference)


def test_taking_the_lock_clears_a_killed_export_and_keeps_the_rest(tmp_path):
    """A run killed in its export left RUN/export/.hf.XXXXXXXX, a whole model, that no re-run removed."""
    export = tmp_path / "export"
    for leftover in (".hf.k3j2_x9q", ".export-scratch.0a1b2c3d", ".adapter.zz99yy88"):
        (export / leftover / "model").mkdir(parents=True)
    (export / ".export.json.ab12cd_9").write_text("{half")
    (export / ".model-f16.q1w2e3r4.gguf").write_bytes(b"GGUF")
    (export / "hf").mkdir()
    (export / ".notes").write_text("the user's own")
    Run(tmp_path).lock()
    assert sorted(p.name for p in export.iterdir()) == [".notes", "hf"]
