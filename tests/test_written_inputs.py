"""Inputs a teacher writes (synth/written.py): what a weak chat model wraps around them is cleaned off,
what is no new input is dropped and counted by reason, in the stage's written.json and one progress
line; and round 0's budget keeps a share for the expansion when labeling the inputs would spend it all.
The teacher is a function written into the task folder that replies as SmolLM2 behind llama.cpp did."""

import json
import re

import pytest

from protege.cli import main
from protege.config import SynthConfig, load_task
from protege.loop.data import synthesize_failures, synthesize_round0
from protege.loop.state import prepare
from protege.records import record_input, sft_record
from protege.runs import read_json, read_jsonl
from protege.synth.registry import SynthContext, run_methods
from protege.synth.written import WrittenInputs, clean_input
from protege.teachers import CachedTeacher, FunctionTeacher, TeacherCache, TeacherRequest

INSTRUCTION = "Convert the date to ISO 8601 format (YYYY-MM-DD). Reply with the date only."
SEEDS = ["March 3rd, 2021", "the 14th of February 1998", "3 Jan 2005"]
TEST_INPUT = "Wed, March 3, 2021"

# request.sample -> the reply to a write_input request: "PROMPT" the request's own chat, "SHOWN" its example
WEAK = """
REPLIES = [
    "Here is a new input:\\n- May the 27th, 2085",
    "1. June 1, 2001\\n2. July 2, 2002",
    "PROMPT",
    "SHOWN",
    '"the 9th of May 1931"',
    "Wed, March 3, 2021",
    "Sure! Here's a new input: 5 Jan 1999",
    "May the 27th, 2085",
    "Here are some new inputs:\\n- a date",
    '{"input": "2 Feb 1972"}',
]
REWRITES = {"the 4th of May 1990": "#Rewritten Prompt#:\\nthe 4th of May 1990 at noon",
            "the 5th of May 1991": 'Sure! "the 5th of May 1991, a Sunday"'}


def teacher(request):
    if request.purpose == "answer":
        return "1999-01-05"
    if request.purpose == "evolve":  # all but two rewrites give the input back, as 8 of 10 did in the issue
        return REWRITES.get(request.input, request.input)
    reply = REPLIES[request.sample % len(REPLIES)]
    return {"PROMPT": request.chat()[0]["content"], "SHOWN": request.examples[0]}.get(reply, reply)
"""
KEPT = ["May the 27th, 2085", "the 9th of May 1931", "5 Jan 1999", "2 Feb 1972"]
DROPPED = {"several inputs": 1, "copies the prompt": 1, "copies what it was shown": 1, "test input": 1,
           "repeat": 1, "rejected by synth.input_validator": 1}

TASK = """name: dates
instruction: "{instruction}"
seeds: [{seeds}]
test: [{{input: "{test}", output: "2021-03-03"}}]
teacher: {{kind: function, function: "weak:teacher"}}
student: {{model: "tiny:0"}}
synth: {synth}
budget: {{requests: {budget}}}
"""


def write_task(folder, synth, budget=100, validator="re.search(r'\\d{4}', text)", inputs=0):
    seeds = ", ".join(f'{{input: "{s}", output: "x"}}' for s in SEEDS)
    (folder / "task.yaml").write_text(TASK.format(instruction=INSTRUCTION, seeds=seeds, test=TEST_INPUT,
                                                  synth=synth, budget=budget))
    (folder / "weak.py").write_text(WEAK)
    (folder / "checks.py").write_text(f"import re\n\n\ndef is_date(text):\n    return {validator}\n")
    if inputs:
        rows = [json.dumps({"input": f"day {i} of 2001"}) for i in range(inputs)]
        (folder / "inputs.jsonl").write_text("\n".join(rows) + "\n")
        (folder / "task.yaml").write_text((folder / "task.yaml").read_text() + "inputs: inputs.jsonl\n")
    return folder


def prepared(folder, lines):
    return prepare(load_task(folder), folder / "run", say=lines.append)


@pytest.mark.parametrize("reply, cleaned", [
    ("Here is a new input:\n- May the 27th, 2085", "May the 27th, 2085"),
    ("Sure! Here's a new input: What is 2+2?", "What is 2+2?"),
    ("Sure, I can help with that:\n\nMay 5, 2001\n\nLet me know if you need another!", "May 5, 2001"),
    ("New input: 'x y'", "x y"),
    ("The new input is: 7+8", "7+8"),
    ('"quoted"', "quoted"),
    ("“curly”", "curly"),
    ("```\n3+4\n```", "3+4"),
    ('{"input": "5+5"}', "5+5"),
    ("#Rewritten Prompt#:\n3+4+5", "3+4+5"),
    ("1. May 2085", "May 2085"),
    # what is part of an input stays
    ("Summarize:\n- a\n- b", "Summarize:\n- a\n- b"),
    ("27. May 2085", "27. May 2085"),
    ("Great Expectations: who wrote it?", "Great Expectations: who wrote it?"),
    ('"a" or "b"?', '"a" or "b"?'),
    ("Convert 3:45 pm to 24-hour time", "Convert 3:45 pm to 24-hour time"),
    (None, ""),
])
def test_cleaning_takes_off_what_a_chat_model_wraps_around_an_input(reply, cleaned):
    assert clean_input(reply) == cleaned


def test_a_list_is_dropped_unless_the_tasks_inputs_are_lists():
    listing = "1. apples\n2. pears"
    plain = TeacherRequest("write_input", INSTRUCTION, examples=("3 Jan 2005",))
    lists = TeacherRequest("write_input", INSTRUCTION, examples=("1. figs\n2. plums",))
    check = WrittenInputs()
    assert check.keep(listing, plain) is None and check.dropped == {"several inputs": 1}
    assert check.keep("Input 1: May 5\nInput 2: June 6", plain) is None and check.dropped["several inputs"] == 2
    assert check.keep(listing, lists) == listing
    assert clean_input("- plums", ["- figs"]) == "- plums"  # a bullet the task's inputs have too stays


def test_weak_teacher_written_inputs_are_cleaned_checked_and_counted(tmp_path, capsys):
    synth = "{label_inputs: false, expand: 10, seeds_per_prompt: 1, input_validator: 'checks:is_date'}"
    lines = []
    folder = synthesize_round0(prepared(write_task(tmp_path, synth), lines)).data.parent
    expanded = [record_input(r) for r in read_jsonl(folder / "data.jsonl") if r["meta"]["source"] == "expand"]
    assert expanded == KEPT
    written = read_json(folder / "written.json")
    assert written["kept"] == 4 and written["dropped"] == DROPPED
    assert {r["reason"] for r in written["removed"]} == set(DROPPED)
    assert [r["reply"] for r in written["removed"] if r["reason"] == "several inputs"] == \
        ["1. June 1, 2001\n2. July 2, 2002"]
    assert [line for line in lines if line.startswith("expand:")] == \
        [f"expand: kept 4 of 10 teacher-written inputs, dropped {DROPPED}"]
    # what was dropped was never answered: 10 written, 4 answered
    assert read_json(folder / "teacher.json")["requests"] == 14


def test_the_failure_loops_new_inputs_are_checked_too(tmp_path):
    synth = "{label_inputs: false, per_failure: 10, input_validator: 'checks:is_date'}"
    lines = []
    state = prepared(write_task(tmp_path, synth), lines)
    data = synthesize_failures(state, 1, ["the 1st of June 1950"])
    assert [record_input(r) for r in read_jsonl(data)] == KEPT
    written = read_json(data.parent / "written.json")
    assert written["dropped"] == DROPPED
    assert f"failure round 1: kept 4 of 10 teacher-written inputs, dropped {DROPPED}" in lines


def test_evol_instruct_rewrites_that_copy_the_prompt_are_dropped(tmp_path):
    write_task(tmp_path, "{}")
    parents = [f"the {day}th of May {year}" for day, year in zip(range(4, 14), range(1990, 2000))]
    teacher = CachedTeacher(FunctionTeacher("weak:teacher", tmp_path), TeacherCache(tmp_path / "t.sqlite"))
    ctx = SynthContext(teacher, INSTRUCTION, 100, task_dir=tmp_path)
    step = SynthConfig(methods=[{"name": "evol-instruct", "n": 10}]).methods[0]
    records = run_methods([sft_record(INSTRUCTION, p, "x", "seed", 0) for p in parents], [step], ctx)
    assert sorted(record_input(r) for r in records[10:]) == ["the 4th of May 1990 at noon",
                                                            "the 5th of May 1991, a Sunday"]
    assert ctx.notes[0]["dropped"] == {"copies what it was shown": 8}


def test_a_validator_that_raises_is_the_tasks_error_with_its_line(tmp_path, capsys):
    synth = "{label_inputs: false, expand: 3, input_validator: 'checks:is_date'}"
    write_task(tmp_path, synth, validator="int(text)")
    assert main(["synth", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = re.split(r"[\r\n]", err.strip())[-1]  # after the progress bar's carriage returns
    assert re.fullmatch(r"error: synth.input_validator checks:is_date raised ValueError: .+ at "
                        r"\S*checks.py:5 on the input 'May the 27th, 2085'", last), err
    assert not list((tmp_path / "run" / "stages").glob("*synth-r0-*"))  # nothing half-written
    write_task(tmp_path, synth.replace("checks:is_date", "nope:is_date"))
    assert main(["synth", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 2
    assert "synth.input_validator nope:is_date: no module 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("share, budget, labeled, expanded", [(None, 10, 8, 1), (0.0, 10, 10, 0), (None, 20, 10, 2)])
def test_labeling_leaves_the_expansion_its_share_of_the_budget(tmp_path, share, budget, labeled, expanded):
    """10 inputs to label and 5 to write and answer on a budget of 10: by default a fifth is kept for the
    expansion (1 written and answered); with no share, labeling takes all and the line says so. Where
    both fit, each gets what it asks and nothing is said (5 written, of which the weak teacher's first 2
    are kept)."""
    synth = "{expand: 5}" if share is None else f"{{expand: 5, expand_share: {share}}}"
    lines = []
    folder = synthesize_round0(prepared(write_task(tmp_path, synth, budget=budget, inputs=10), lines)).data.parent
    sources = [r["meta"]["source"] for r in read_jsonl(folder / "data.jsonl")]
    assert (sources.count("teacher"), sources.count("expand")) == (labeled, expanded)
    said = [line for line in lines if line.startswith("synth budget:")]
    kept = "2 kept for the expansion of 5 inputs (synth.expand_share 0.2)" if share is None else \
        "expansion of 5 inputs gets nothing (synth.expand_share 0: raise it to keep some)"
    assert said == ([f"synth budget: 10 teacher requests: labeling {labeled} of 10 inputs, {kept}"]
                    if budget == 10 else [])
