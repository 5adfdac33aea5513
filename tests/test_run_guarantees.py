"""What a run directory promises: one protege at a time, a stage is done only while everything it wrote
is there, a kill or Ctrl-C leaves nothing half-written and nothing that a re-run does not clear up."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from protege.runs import Run, RunInUse, StageInterrupted, read_json, write_json

HOLD = """import sys, time
from protege.runs import Run
Run(sys.argv[1]).lock()
print("held", flush=True)
time.sleep(60)
"""


def build_two_files(calls):
    def build(out):
        calls.append(1)
        (out / "model").mkdir()
        (out / "model" / "weights.bin").write_bytes(b"w" * 100)
        write_json(out / "result.json", {"accuracy": 0.5})
    return build


@pytest.mark.parametrize("damage", [
    lambda folder: (folder / "result.json").unlink(),
    lambda folder: (folder / "model" / "weights.bin").write_bytes(b"w" * 10),
    lambda folder: (folder / "stage.json").write_text("{trunc"),
])
def test_a_stage_missing_or_changing_a_file_it_wrote_is_redone(tmp_path, damage):
    said, calls = [], []
    run = Run(tmp_path, said.append)
    folder, _ = run.stage("train", {"k": 1}, build_two_files(calls))
    assert run.stage("train", {"k": 1}, build_two_files(calls)) == (folder, True) and len(calls) == 1
    damage(folder)
    assert run.stage("train", {"k": 1}, build_two_files(calls)) == (folder, False) and len(calls) == 2
    assert said and "redoing the stage" in said[0]
    assert read_json(folder / "result.json") == {"accuracy": 0.5} and (folder / "model" / "weights.bin").stat().st_size == 100


def hold_lock(run_dir):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_protege_on_a_run_directory_says_who_holds_it(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunInUse, match=f"in use by another protege \\(pid {holder.pid}, since"):
            Run(tmp_path).lock()
    finally:
        holder.kill()
        holder.wait()
    Run(tmp_path).lock()  # the killed holder's lock is taken over


def test_the_cli_refuses_a_run_directory_in_use(tmp_path, examples_dir):
    holder = hold_lock(tmp_path / "run")
    try:
        proc = subprocess.run([sys.executable, "-m", "protege.cli", "run", str(examples_dir / "iso-dates"),
                               "--run-dir", str(tmp_path / "run"), "--set", "student.model=tiny:0"],
                              capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "in use by another protege" in proc.stderr
    assert not (tmp_path / "run" / "stages").exists()


def test_taking_the_lock_clears_what_a_killed_run_left(tmp_path):
    (tmp_path / "stages" / ".train-r0-0123456789abcdef.k3j2_x9q").mkdir(parents=True)
    (tmp_path / "stages" / "eval-base-0123456789abcdef").mkdir()
    (tmp_path / ".summary.json.ab12cd_9").write_text("{half")
    (tmp_path / ".notes").write_text("the user's own")
    Run(tmp_path).lock()
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["eval-base-0123456789abcdef"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".notes", "stages"]


def test_ctrl_c_in_a_stage_names_it_and_leaves_no_partial_folder(tmp_path):
    run = Run(tmp_path)

    def interrupted(out):
        (out / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(StageInterrupted) as stopped:
        run.stage("train-r0", {"k": 1}, interrupted)
    assert stopped.value.stage.startswith("train-r0-") and list(run.stages.iterdir()) == []


def test_ctrl_c_during_a_run_is_one_line_exit_130_and_the_rerun_resumes(tmp_path, examples_dir):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "protege.cli", "run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir),
               "--set", "student.model=tiny:0", "--set", "train.max_steps=3", "--set", "rounds=1",
               "--set", "forgetting.enabled=false", "--set", "merge.strengths=[]"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(run_dir.glob("stages/eval-teacher-*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted") and "run the same command again to resume" in last
    assert not [p for p in run_dir.rglob(".*") if p.name != ".lock"]
    done = sorted(p.name for p in (run_dir / "stages").iterdir())
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    assert set(done) <= {p.name for p in (run_dir / "stages").iterdir()}


FULL_DISK = """mount -t tmpfs -o size=450k tmpfs "$1" && shift && exec "$@" """


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, examples_dir):
    """A real full disk: a 450 KiB tmpfs in a mount namespace of the test's own, the model and teacher
    caches outside it, so the run fails where a stage writes its weights."""
    disk, run_dir = tmp_path / "disk", tmp_path / "disk" / "run"
    disk.mkdir()
    settings = [str(examples_dir / "iso-dates"), "--set", "student.model=tiny:0", "--set", "train.max_steps=1",
                "--set", "rounds=1", "--set", "forgetting.enabled=false", "--set", "merge.strengths=[]"]
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", FULL_DISK, "sh", str(disk)]
    if subprocess.run([*namespace, "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespace here to make a small disk in")
    assert subprocess.run([sys.executable, "-m", "protege.cli", "run", *settings, "--run-dir", str(tmp_path / "warm")],
                          capture_output=True).returncode == 0
    proc = subprocess.run([*namespace, sys.executable, "-m", "protege.cli", "run", *settings, "--run-dir",
                           str(run_dir)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    errors = re.findall(r"error: [^\r\n]*", proc.stderr)  # a progress bar may share its line
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("error: No space left on device (") and "nothing half-written" in errors[0]
    assert not [p for p in run_dir.rglob(".*") if p.name != ".lock"]


def test_run_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        folder, _ = Run(tmp_path).stage("s", {"k": 1}, build_two_files([]))
    finally:
        os.umask(previous)
    assert (folder.stat().st_mode & 0o777, (folder / "result.json").stat().st_mode & 0o777) == (0o755, 0o644)


def test_report_on_a_truncated_summary_names_the_file(tmp_path, capsys):
    from protege.cli import main
    (tmp_path / "summary.json").write_text('{"task": "t", "base": {"accu')
    assert main(["report", str(tmp_path), "--no-screenshot"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'summary.json'}:1: invalid JSON: ") and err.count("\n") == 1, err
