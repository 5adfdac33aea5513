from protege.curate.decontaminate import decontaminate
from protege.curate.dedup import dedup
import pytest

from protege.runs import Run, digest, read_jsonl, write_jsonl
from protege.records import sft_record


def test_stage_builds_once_and_never_leaves_a_half_stage(tmp_path):
    run, calls = Run(tmp_path), []

    def build(out):
        calls.append(1)
        write_jsonl(out / "x.jsonl", [{"a": 1}])

    folder, reused = run.stage("s", {"k": 1}, build)
    assert not reused and read_jsonl(folder / "x.jsonl") == [{"a": 1}]
    assert run.stage("s", {"k": 1}, build) == (folder, True) and len(calls) == 1
    second, _ = run.stage("s", {"k": 2}, build)
    assert second != folder

    def crash(out):
        (out / "partial").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.stage("s", {"k": 3}, crash)
    # the crashed stage left neither a finished-looking folder nor its temporary one
    assert sorted(p.name for p in run.stages.iterdir()) == sorted([folder.name, second.name])
    assert not run.stage_dir("s", digest({"k": 3})).exists()


def rec(text, source="teacher"):
    return sft_record("I.", text, "out", source, 0)


def test_dedup_keeps_first_and_says_why():
    kept, removed = dedup([rec("March 3"), rec(" march  3 "), rec("May 1")])
    assert [r["messages"][1]["content"] for r in kept] == ["March 3", "May 1"]
    assert removed == [{"id": rec(" march  3 ")["id"], "reason": "duplicate", "of": rec("March 3")["id"]}]


def test_decontaminate_drops_test_inputs():
    kept, removed = decontaminate([rec("a"), rec("B."), rec("c")], ["b", "z"])
    assert [r["messages"][1]["content"] for r in kept] == ["a", "c"] and removed[0]["reason"] == "in the held-out test or dev set"
