"""Critique data (teacher purpose "critique", synth/critique.py) and critique fine-tuning (train/cft.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from openai_stub import StubServer
from protege.config import TrainConfig
from protege.models import model_dir
from protege.runs import read_jsonl
from protege.synth.critique import critique_candidates, critique_records, critique_requests, parse_verdict
from protege.records import record_answer, record_input, sft_record
from protege.teachers import CachedTeacher, TeacherCache, TeacherRequest, build_teacher
from protege.teachers.base import cache_key
from protege.teachers.function import load_callable
from protege.teachers.function import FunctionTeacherConfig
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig
from protege.train.cft import cft_mix, train_cft

INSTRUCTION = "Solve the word problem. Show your work, one step per line, then end with 'Answer: <number>'."


def arithmetic_items(examples_dir, n):
    rows = read_jsonl(examples_dir / "arithmetic" / "test.jsonl")[:n]
    return [(r["input"], r["output"]) for r in rows]


def wrong(answer):
    """The same worked answer with its final number off by one."""
    head, number = answer.rsplit("Answer: ", 1)
    return f"{head}Answer: {int(number) + 1}"


# ---- the request ----------------------------------------------------------------------------

def test_existing_purposes_keep_their_cache_payloads_and_keys():
    answer = TeacherRequest("answer", "Add.", input="2+3", sample=1, temperature=0.5)
    write = TeacherRequest("write_input", "Add.", examples=("2+3", "4+5"), sample=2, temperature=1.0)
    assert answer.cache_payload() == {
        "messages": [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+3"}],
        "temperature": 0.5, "sample": 1}
    assert write.cache_payload() == {
        "messages": [{"role": "user", "content": "You write new inputs for this task: Add.\n\nHere are examples of "
                      "inputs:\n- 2+3\n- 4+5\n\nWrite one new input of the same kind, different from all of "
                      "them. Reply with the input only, nothing else."}],
        "temperature": 1.0, "sample": 2}
    # the keys computed before the critique purpose existed: caches of earlier runs stay valid
    assert cache_key("function:x@1", answer, {"max_tokens": 8}) == \
        "85a41ea83ce365ff7e2de7105bbea494b795d7aab7382d8558d500bb2440198a"
    assert cache_key("function:x@1", write, {"max_tokens": 8}) == \
        "3f85cd4bcc7ffcefcc0909ef3090f6a70645e766c6ca6b9b005287c393577e53"


def test_critique_chat_shows_problem_candidate_and_reference_only_when_given():
    with_ref = TeacherRequest("critique", "Add.", input="2+3", candidate="2 + 3 = 6", reference="5")
    system, user = with_ref.chat()
    assert system["role"] == "system" and "Add." in system["content"]
    assert '"Verdict: correct"' in system["content"] and '"Verdict: incorrect"' in system["content"]
    assert user["role"] == "user"
    assert user["content"].index("2+3") < user["content"].index("5") < user["content"].index("2 + 3 = 6")
    no_ref = TeacherRequest("critique", "Add.", input="2+3", candidate="2 + 3 = 6")
    assert "Reference" not in no_ref.chat()[1]["content"] and "Reference" in user["content"]
    assert with_ref.cache_payload() == TeacherRequest("critique", "Add.", input="2+3", candidate="2 + 3 = 6",
                                                      reference="5").cache_payload()
    keys = {cache_key("t", r, {}) for r in (with_ref, no_ref, TeacherRequest(
        "critique", "Add.", input="2+3", candidate="2 + 3 = 5", reference="5"))}
    assert len(keys) == 3


@pytest.mark.parametrize("text, verdict", [
    ("Step 1 is right.\nVerdict: correct", True),
    ("Step 1 is wrong.\nVerdict: incorrect", False),
    ("Verdict: correct", True),
    ("ok\n\nverdict: INCORRECT  \n\n", False),
    ("ok\n**Verdict: correct**", True),
    ("ok\n**Verdict:** incorrect.", False),
    ("Verdict: correct\nHope this helps!", None),  # not the last line
    ("ok\nVerdict: partially correct", None),
    ("ok\nVerdict: correct or incorrect", None),
    ("ok\nFinal verdict: correct", None),
    ("The solution is correct.", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


# ---- the function teacher of examples/arithmetic --------------------------------------------

def test_arithmetic_teacher_critiques_and_keeps_its_other_replies(examples_dir):
    fn = load_callable("teacher:teacher", examples_dir / "arithmetic")
    for row in read_jsonl(examples_dir / "arithmetic" / "seeds.jsonl"):  # written by the same teacher
        assert fn(TeacherRequest("answer", INSTRUCTION, input=row["input"])) == row["output"]
    text, reference = arithmetic_items(examples_dir, 1)[0]
    good = fn(TeacherRequest("critique", INSTRUCTION, input=text, candidate=reference))
    bad = fn(TeacherRequest("critique", INSTRUCTION, input=text, candidate=wrong(reference)))
    none = fn(TeacherRequest("critique", INSTRUCTION, input=text, candidate="No idea."))
    assert good.splitlines()[-1] == "Verdict: correct" and parse_verdict(good) is True
    assert bad.splitlines()[-1] == "Verdict: incorrect" and parse_verdict(none) is False
    assert reference.splitlines()[0] in good  # its own worked steps
    assert fn(TeacherRequest("critique", INSTRUCTION, input="not a problem", candidate="1")) == ""


def test_function_teacher_critiques_become_records(tmp_path, examples_dir):
    teacher = CachedTeacher(build_teacher(FunctionTeacherConfig(function="teacher:teacher"),
                                          examples_dir / "arithmetic"), TeacherCache(tmp_path / "c.sqlite"))
    items = arithmetic_items(examples_dir, 3)
    candidates = [[ref, wrong(ref), "", ref] for _, ref in items]  # empty and repeated ones are skipped
    requests = critique_requests(INSTRUCTION, items, candidates)
    assert len(requests) == 6 and all(r.purpose == "critique" for r in requests)
    assert [(r.input, r.reference, r.candidate) for r in requests[:2]] == \
        [(items[0][0], items[0][1], items[0][1]), (items[0][0], items[0][1], wrong(items[0][1]))]

    result = critique_candidates(teacher, INSTRUCTION, items, candidates, round_=2)
    assert result.malformed == 0 and result.unanswered == 0 and len(result.records) == 6
    assert [r["verdict"] for r in result.records] == [True, False] * 3
    assert result.verdicts() == {"correct": 3, "incorrect": 3}
    record = result.records[1]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["meta"]["source"] == "critique" and record["meta"]["round"] == 2 and record["meta"]["item"] == 0
    assert "ritique" in record["messages"][0]["content"] and INSTRUCTION in record["messages"][0]["content"]
    assert items[0][0] in record_input(record) and wrong(items[0][1]) in record_input(record)
    assert record_answer(record).endswith("Verdict: incorrect")
    assert teacher.stats.paid == 6
    again = critique_candidates(teacher, INSTRUCTION, items, candidates, round_=2)
    assert teacher.stats.paid == 6 and again.records == result.records  # cached, deterministic ids


def test_replies_must_line_up_with_requests():
    with pytest.raises(ValueError, match="2 replies for 1"):
        critique_records("I.", [("q", "")], [["a"]], ["Verdict: correct", "Verdict: correct"])
    with pytest.raises(ValueError, match="candidates"):
        critique_requests("I.", [("q", "")], [])


# ---- an LLM teacher over HTTP ---------------------------------------------------------------

def test_openai_critiques_drop_and_count_malformed_replies(tmp_path):
    seen = []

    def critic(messages):
        user = messages[-1]["content"]
        seen.append(user)
        candidate = user.split("Candidate solution:\n", 1)[1]
        if "ramble" in candidate:
            return "This looks plausible, I think."  # no verdict at all
        if "trail" in candidate:
            return "Verdict: correct\nLet me know if you need more."  # the verdict is not the last line
        if "maybe" in candidate:
            return "Hard to say.\nVerdict: maybe"
        verdict = "correct" if candidate.strip().endswith("Answer: 5") else "incorrect"
        return f"2 + 3 is 5; the candidate says {candidate.split()[-1]}.\n**Verdict: {verdict}**"

    items = [("What is 2 + 3?", "Answer: 5"), ("What is 2 + 3, no reference?", "")]
    candidates = [["2 + 3 = 5\nAnswer: 5", "2 + 3 = 6\nAnswer: 6", "ramble"],
                  ["2 + 3 = 5\nAnswer: 5", "trail", "maybe"]]
    with StubServer(critic) as server:
        backend = OpenAITeacher(OpenAITeacherConfig(base_url=server.base_url, model="m", concurrency=3))
        teacher = CachedTeacher(backend, TeacherCache(tmp_path / "c.sqlite"))
        result = critique_candidates(teacher, "Add.", items, candidates)
        assert server.requests == 6
    assert result.malformed == 3 and result.unanswered == 0 and result.dropped == 3
    assert [(record_input(r).split("Solution:\n")[1], r["verdict"]) for r in result.records] == [
        ("2 + 3 = 5\nAnswer: 5", True), ("2 + 3 = 6\nAnswer: 6", False), ("2 + 3 = 5\nAnswer: 5", True)]
    texts = json.dumps(result.records)
    assert "plausible" not in texts and "Let me know" not in texts and "maybe" not in texts
    # the last line is written the one way the student should learn it
    assert [record_answer(r).splitlines()[-1] for r in result.records] == \
        ["Verdict: correct", "Verdict: incorrect", "Verdict: correct"]
    # the critic sees the reference where the item has one; the student's prompt never shows it
    with_ref = [u for u in seen if u.startswith("Problem:\nWhat is 2 + 3?\n")]
    without = [u for u in seen if "no reference" in u]
    assert len(with_ref) == 3 and all("Reference answer" in u and "Answer: 5\n\nCandidate" in u for u in with_ref)
    assert len(without) == 3 and not any("Reference" in u for u in without)
    assert not any("Reference" in record_input(r) for r in result.records)


def test_unanswered_requests_are_counted_not_kept():
    result = critique_records("I.", [("q", "r")], [["a", "b", "c"]], [None, "", "fine\nVerdict: correct"])
    assert result.unanswered == 2 and result.malformed == 0 and len(result.records) == 1
    records, malformed, unanswered = result  # also a plain tuple: records first
    assert records == result[0] == result.records and (malformed, unanswered) == (0, 2)


# ---- the mix --------------------------------------------------------------------------------

def crit(n):
    return [dict(sft_record("Critique.", f"problem {i}", f"ok\nVerdict: {'correct' if i % 2 else 'incorrect'}",
                            "critique", 0), verdict=bool(i % 2)) for i in range(n)]


def plain(n):
    return [sft_record("Add.", f"{i} + 1", f"Answer: {i + 1}", "seed", 0) for i in range(n)]


@pytest.mark.parametrize("n_crit, n_sft, ratio, expected_sft", [
    (10, 50, 1.0, 0), (10, 50, 0.5, 10), (7, 50, 0.5, 7), (10, 50, 0.25, 30), (9, 50, 0.75, 3),
    (10, 50, 0.8, 3),  # 2.5 rounds up
    (10, 5, 0.1, 5),  # too few plain examples: all of them
    (0, 50, 0.5, 0),
])
def test_cft_mix_counts(n_crit, n_sft, ratio, expected_sft):
    critiques, sft = crit(n_crit), plain(n_sft)
    mix = cft_mix(critiques, sft, ratio, seed=3)
    assert mix[:n_crit] == critiques and len(mix) == n_crit + expected_sft
    drawn = mix[n_crit:]
    assert all(r in sft for r in drawn) and len({r["id"] for r in drawn}) == expected_sft


def test_cft_mix_is_seeded_and_one_gives_critiques_only():
    critiques, sft = crit(10), plain(50)
    assert cft_mix(critiques, sft, 1.0, seed=0) == critiques
    assert cft_mix(critiques, sft, 0.5, seed=1) == cft_mix(critiques, sft, 0.5, seed=1)
    assert cft_mix(critiques, sft, 0.5, seed=1) != cft_mix(critiques, sft, 0.5, seed=2)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            cft_mix(critiques, sft, bad, seed=0)


# ---- training -------------------------------------------------------------------------------

def test_train_cft_trains_the_adapter_and_logs_the_mix(tmp_path, examples_dir):
    fn = load_callable("teacher:teacher", examples_dir / "arithmetic")
    items = arithmetic_items(examples_dir, 4)
    candidates = [[ref, wrong(ref)] for _, ref in items]
    requests = critique_requests(INSTRUCTION, items, candidates)
    critiques = critique_records(INSTRUCTION, items, candidates, [fn(r) for r in requests]).records
    assert len(critiques) == 8
    sft = [sft_record(INSTRUCTION, r["input"], r["output"], "seed", 0)
           for r in read_jsonl(examples_dir / "arithmetic" / "seeds.jsonl")]
    cfg = TrainConfig(method={"name": "cft", "ratio": 0.5}, max_steps=2, batch_size=4, max_length=1024)
    log = train_cft(model_dir("tiny:0"), critiques, sft, cfg, tmp_path)
    adapter = load_file(tmp_path / "model" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    assert torch.isfinite(torch.tensor(log["metrics"]["train_loss"]))
    expected = {"ratio": 0.5, "critiques": 8, "sft": 8, "verdicts": {"correct": 4, "incorrect": 4}}
    assert log["method"] == "cft" and log["cft"] == expected and log["examples"] == 16
    saved = json.loads((tmp_path / "train_log.json").read_text())
    assert saved["method"] == "cft" and saved["cft"] == expected and saved["examples"] == 16
    with pytest.raises(ValueError, match="no critique"):
        train_cft(model_dir("tiny:0"), [], sft, cfg, tmp_path / "none")
