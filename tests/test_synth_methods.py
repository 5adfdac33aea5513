"""The synthesis methods of synth.methods (synth/registry.py and one file per method), each against a
stub OpenAI server on 127.0.0.1 or, where the method samples a model, a tiny random one."""

import re
import threading
from collections import Counter

import pytest

from openai_stub import StubServer
from protege.config import ConfigError, SynthConfig, load_task, parse_spec
from protege.evaluate.metrics import as_metric
from protege.records import task_chat
from protege.models import load_model, model_dir
from protege.runs import Run, read_json, read_jsonl
from protege.synth.ensemble import agreement, consensus
from protege.synth.evol_instruct import COPIED, failed_answer
from protege.synth.llm2llm import inputs_like_failures
from protege.synth.magpie import pre_query, write_user_turns
from protege.records import record_answer, record_input, sft_record
from protege.synth.refusal import R_TUNING_QUESTION
from protege.registry import SYNTH
from protege.synth.registry import SynthContext, run_methods
from protege.synth.rejection import verified
from protege.synth.written import WrittenInputs
from protege.teachers import CachedTeacher, TeacherCache, TeacherRequest
from protege.teachers.base import EVOLUTIONS
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig

INSTRUCTION = "Add the numbers. Reply with the sum only."
SEEDS = ["1+2", "2+3", "3+4", "4+5"]
TEST_INPUTS = ["50+50", "60+60"]
NUMERIC = as_metric("numeric")


def total(text):
    return str(sum(int(n) for n in re.findall(r"\d+", text)))


def seed_records(inputs=SEEDS):
    return [sft_record(INSTRUCTION, text, total(text), "seed", 0) for text in inputs]


def is_answer(messages):
    return messages[0]["role"] == "system" and messages[0]["content"] == INSTRUCTION


def teacher_for(server, tmp_path, concurrency=8):
    cfg = OpenAITeacherConfig(base_url=server.base_url, model="m", max_retries=0,
                        concurrency=concurrency)
    return CachedTeacher(OpenAITeacher(cfg), TeacherCache(tmp_path / "teacher.sqlite"))


def context(teacher, tmp_path, budget=200, student=False, **options):
    """student: False (none), True (the tiny model) or a (model, tokenizer) pair."""
    loaded = load_model(model_dir("tiny:0")) if student is True else student or None
    return SynthContext(teacher, INSTRUCTION, budget, metric=NUMERIC, task_dir=tmp_path, exclude=TEST_INPUTS,
                        student=(lambda: loaded) if student else None, max_new_tokens=8, **options)


def step(name, **options):
    return SynthConfig(methods=[{"name": name, **options}]).methods[0]


def sources(records):
    return Counter(r["meta"]["source"] for r in records)


def verifier_file(tmp_path, body):
    (tmp_path / "checks.py").write_text(f"def right(input, answer):\n    return {body}\n")
    return "checks:right"


class Counted:
    """A reply function whose n-th call for the same messages gives replies[n] (the last one after)."""

    def __init__(self, replies):
        self.replies, self.calls, self.lock = replies, Counter(), threading.Lock()

    def __call__(self, key):
        with self.lock:
            n = self.calls[key]
            self.calls[key] += 1
        return self.replies[min(n, len(self.replies) - 1)]


# ---- the config ----------------------------------------------------------------------------

def test_methods_are_steps_by_name_with_defaults_and_descriptions():
    spec, _ = parse_spec("test: [{input: a, output: b}]\nsynth:\n  methods:\n    - magpie\n"
                         "    - {name: rejection, cap: 3}\n", "task.yaml")
    magpie, rejection = spec.synth.methods
    assert (magpie.name, magpie.n, rejection.name, rejection.cap, rejection.samples) == \
        ("magpie", 50, "rejection", 3, 4)
    assert SynthConfig().methods == []
    assert {m.name for m in SynthConfig(methods=SYNTH.names()).methods} == set(SYNTH.names())
    for chosen in SynthConfig(methods=SYNTH.names()).methods:
        for name, info in type(chosen).model_fields.items():
            assert info.description and not info.is_required(), (chosen.name, name)
    with pytest.raises(ConfigError, match=r"task.yaml:5: field 'synth.methods.1'"):
        parse_spec("test: [{input: a, output: b}]\nsynth:\n  methods:\n    - magpie\n    - {name: nope}\n",
                   "task.yaml")
    # the field as the YAML spells it: the method's name (pydantic's union tag) is no key of the file
    with pytest.raises(ConfigError, match=r"task.yaml:4: field 'synth.methods.0.cap'"):
        parse_spec("test: [{input: a, output: b}]\nsynth:\n  methods:\n    - {name: rejection, cap: 0}\n",
                   "task.yaml")


# ---- self-instruct and the ensemble -------------------------------------------------------

def test_consensus_keeps_the_answer_most_others_agree_with():
    same = str.__eq__
    assert consensus(["7", "7", "8"], same, 2) == (0, 2)
    assert consensus(["8", "7", "7"], same, 2) == (1, 2)  # the first of the agreeing pair
    assert consensus(["7", "8", "9"], same, 2) is None
    assert consensus(["7", "8", "9"], same, 1) == (0, 1)
    assert consensus(["7", None, "7"], same, 2) == (0, 2)
    assert consensus([None, None, "7"], same, 2) is None
    assert consensus([None, None, None], same, 1) is None
    assert consensus(["7", "7", "7"], same, 3) == (0, 3)
    numeric = agreement("metric", 0.7, NUMERIC)
    assert numeric("The sum is 7", "7") and not numeric("7", "8")
    # ROUGE-L F1 of "the cat sat" and "the cat sat down": P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7
    rouge = agreement("rouge-l", 0.85, NUMERIC)
    assert rouge("the cat sat", "the cat sat down") and not agreement("rouge-l", 0.86, NUMERIC)("the cat sat",
                                                                                               "the cat sat down")


def test_self_instruct_shows_k_seeds_and_drops_empty_copied_and_test_inputs(tmp_path):
    shown, written = [], Counted(["5+5", "", TEST_INPUTS[0], "1+2", "5+5", "6+6"])

    def reply(messages):
        if is_answer(messages):
            return total(messages[1]["content"])
        shown.append(re.findall(r"^- (.+)$", messages[0]["content"], re.M))
        return written("write")

    with StubServer(reply) as server:
        ctx = context(teacher_for(server, tmp_path, concurrency=1), tmp_path)
        records = run_methods(seed_records(), [step("self-instruct", n=6, seeds_per_prompt=2)], ctx)
    new = records[4:]
    assert [record_input(r) for r in new] == ["5+5", "6+6"] and [record_answer(r) for r in new] == ["10", "12"]
    assert sources(new) == {"self-instruct": 2}
    assert len(shown) == 6 and all(len(k) == 2 and set(k) <= set(SEEDS) for k in shown)
    assert ctx.notes[0]["dropped"] == {"unanswered": 1, "test input": 1, "copies what it was shown": 1, "repeat": 1}
    assert ctx.notes[0]["requests"] == ctx.used() == 6 + 2


def test_ensemble_keeps_inputs_two_of_three_teachers_agree_on(tmp_path):
    # the task's teacher writes the inputs; each teacher's answers by input
    answers = {"a": {"10+1": "11", "20+2": "22", "30+3": "34", "40+4": "44"},
               "b": {"10+1": "11", "20+2": "23", "30+3": "33", "40+4": ""},
               "c": {"10+1": "99", "20+2": "24", "30+3": "The sum is 33", "40+4": "44"}}
    written = Counted(["10+1", "20+2", "30+3", "40+4"])

    def replier(name):
        def reply(messages):
            return answers[name][messages[1]["content"]] if is_answer(messages) else written("w")
        return reply

    with StubServer(replier("a")) as a, StubServer(replier("b")) as b, StubServer(replier("c")) as c:
        others = [OpenAITeacherConfig(base_url=s.base_url, model=f"{name}-{tmp_path.name}", max_retries=0)
                  for name, s in (("b", b), ("c", c))]
        ctx = context(teacher_for(a, tmp_path, concurrency=1), tmp_path)
        records = run_methods(seed_records(), [step("self-instruct", n=4, ensemble=others)], ctx)
    kept = {record_input(r): (record_answer(r), r["meta"]["agree"], r["meta"]["by"]) for r in records[4:]}
    assert kept == {"10+1": ("11", 2, 0), "30+3": ("33", 2, 1), "40+4": ("44", 2, 0)}  # 20+2: all disagree
    assert sources(records[4:]) == {"self-instruct": 3}
    assert ctx.notes[0]["dropped"] == {"teachers disagree": 1}
    assert ctx.extra_requests == 8 and ctx.used() == 4 + 4 + 8  # written, answered by a, by b and c


# ---- evol-instruct -------------------------------------------------------------------------

def test_every_evolution_has_its_prompt():
    chats = {kind: TeacherRequest("evolve", INSTRUCTION, input="3+4", evolution=kind).chat() for kind in EVOLUTIONS}
    assert len({c[0]["content"] for c in chats.values()}) == 5
    for kind, chat in chats.items():
        assert len(chat) == 1 and chat[0]["role"] == "user"
        text = chat[0]["content"]
        assert INSTRUCTION in text and "#Given Prompt#:\n3+4\n\n" in text
        if kind == "breadth":
            assert "Prompt Creator" in text and "more rare" in text and text.endswith("#Created Prompt#:")
        else:
            assert "Prompt Rewriter" in text and EVOLUTIONS[kind] in text and text.endswith("#Rewritten Prompt#:")


def failed_rewrite(original, rewrite):
    check = WrittenInputs(prompt_words=COPIED)
    kept = check.keep(rewrite, TeacherRequest("evolve", INSTRUCTION, input=original, evolution="constraints"))
    return kept if kept is not None else next(iter(check.dropped))


def test_failed_evolutions_are_eliminated():
    assert failed_rewrite("3+4", "") == "empty" and failed_rewrite("3+4", None) == "unanswered"
    assert failed_rewrite("3+4", " 3+4. ") == "copies what it was shown"
    assert failed_rewrite("3+4", "#Rewritten Prompt#: 3+4") == "copies what it was shown"  # the label cleaned off
    assert failed_rewrite("3+4", "#Rewritten Prompt#: 3+4+5") == "3+4+5"
    assert failed_rewrite("3+4", "Here is the given prompt made harder: 3+4+5") == "3+4+5"
    assert failed_rewrite("3+4", "3+4+5, the given prompt made harder") == "copies the prompt"
    assert failed_rewrite("3+4", "3+4+5") == "3+4+5"
    assert failed_answer("Sorry, I cannot do that.") == "teacher struggled"
    assert failed_answer("sorry " + "word " * 80) is None  # long: an answer that happens to apologize
    assert failed_answer("?!") == "answer is punctuation" and failed_answer(None) == "unanswered"
    assert failed_answer("12") is None


def test_evol_instruct_rewrites_survivors_again_and_eliminates_failures(tmp_path):
    rewrite = {"constraints": lambda p: p + "+1", "deepen": lambda p: "", "concretize": lambda p: p + "+2 (the "
               "rewritten prompt)", "reasoning": lambda p: "#Rewritten Prompt#: " + p, "breadth": lambda p: "7+" + p}
    seen = Counter()

    def reply(messages):
        text = messages[-1]["content"]
        if is_answer(messages):
            seen["sorry"] += text.startswith("7+7+")
            return "Sorry, too hard." if text.startswith("7+7+") else total(text)
        kind = next(k for k, method in EVOLUTIONS.items() if method and method in text) \
            if "Prompt Rewriter" in text else "breadth"
        seen[kind] += 1
        return rewrite[kind](text.split("#Given Prompt#:\n")[1].split("\n\n")[0])

    inputs = [f"{i}+{i + 1}" for i in range(10)]
    with StubServer(reply) as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path)
        records = run_methods(seed_records(inputs), [step("evol-instruct", n=10, generations=2)], ctx)
    made = records[10:]
    assert made and sources(made) == {"evol-instruct": len(made)}
    by_input = {record_input(r): r for r in records}
    for r in made:
        meta, text = r["meta"], record_input(r)
        assert meta["evolution"] in ("constraints", "breadth") and text == rewrite[meta["evolution"]](meta["parent"])
        assert record_answer(r) == total(text)
        assert meta["parent"] in (inputs if meta["generation"] == 1 else
                                  [t for t, p in by_input.items() if p["meta"].get("generation") == 1])
    assert {r["meta"]["generation"] for r in made} <= {1, 2}
    dropped = ctx.notes[0]["dropped"]
    assert (dropped.get("unanswered", 0), dropped.get("copies the prompt", 0),
            dropped.get("copies what it was shown", 0)) == (seen["deepen"], seen["concretize"], seen["reasoning"])
    assert dropped.get("teacher struggled", 0) == seen["sorry"]
    assert not any(record_input(r).startswith("7+7+") for r in made)


def test_evol_instruct_generations_evolve_the_last_ones_survivors(tmp_path):
    def reply(messages):
        text = messages[-1]["content"]
        return total(text) if is_answer(messages) else text.split("#Given Prompt#:\n")[1].split("\n\n")[0] + "+1"

    with StubServer(reply) as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path)
        records = run_methods(seed_records(), [step("evol-instruct", n=3, generations=3, kinds=["constraints"])],
                              ctx)
    made = records[4:]
    first = [r for r in made if r["meta"]["generation"] == 1]
    assert len(first) == 3 and {r["meta"]["parent"] for r in first} < set(SEEDS)
    for generation in (2, 3):
        parents = {record_input(r) for r in made if r["meta"]["generation"] == generation - 1}
        assert sorted(r["meta"]["parent"] + "+1" for r in made if r["meta"]["generation"] == generation) == \
            sorted(record_input(r) for r in made if r["meta"]["generation"] == generation)
        assert {r["meta"]["parent"] for r in made if r["meta"]["generation"] == generation} == parents
    assert len(made) == 9 and ctx.used() == 18
    short = context(teacher_for(server, tmp_path), tmp_path, budget=7)
    run_methods(seed_records(), [step("evol-instruct", n=3, generations=3, kinds=["constraints"])], short)
    assert short.used() == 6  # 3 rewrites and their answers; a second generation would pass the budget


# ---- magpie --------------------------------------------------------------------------------

def eos_leaning(model, tokenizer, boost=3.0):
    """The tiny model with its end-of-turn logit raised, so that its random turns end within a few tokens."""
    def add(module, inputs, logits):
        logits[..., tokenizer.eos_token_id] += boost
        return logits
    model.lm_head.register_forward_hook(add)
    return model, tokenizer


def test_magpie_the_model_writes_the_user_turn_from_the_bare_template(tmp_path):
    model, tokenizer = eos_leaning(*load_model(model_dir("tiny:0")))
    assert pre_query(tokenizer, INSTRUCTION) == f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n<|im_start|>user\n"
    assert pre_query(tokenizer) == "<|im_start|>user\n"
    asked = []

    def reply(messages):
        asked.append(messages[1]["content"])
        return "42"

    options = dict(n=16, max_new_tokens=12)
    with StubServer(reply) as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path, student=(model, tokenizer), seed=3)
        records = run_methods(seed_records(), [step("magpie", **options)], ctx)
    turns = write_user_turns(model, tokenizer, pre_query(tokenizer, INSTRUCTION), 16, 1.0, 12, ctx.step_seed)
    made = records[4:]
    finished = [t for t in turns if t]
    assert len(made) > 1 and [record_input(r) for r in made] == list(dict.fromkeys(finished))
    assert sorted(asked) == sorted(record_input(r) for r in made) and {record_answer(r) for r in made} == {"42"}
    assert all(r["meta"] == {"source": "magpie", "round": 0, "writer": "student", "answered_by": "teacher"}
               for r in made)
    dropped = ctx.notes[0]["dropped"]
    assert dropped["unfinished"] == sum(t is None for t in turns) > 0
    assert len(made) + sum(dropped.values()) == 16 and ctx.used() == len(made)
    # the tiny model without the tilt, named as the writer
    other = context(teacher_for(server, tmp_path), tmp_path, seed=3)
    plain = run_methods(seed_records(), [step("magpie", model="tiny:0", answer_by="writer", **options)], other)
    assert other.used() == 0 and all(r["meta"]["writer"] == "tiny:0" for r in plain[4:])
    assert other.notes[0]["dropped"]["unfinished"] > 0


# ---- llm2llm -------------------------------------------------------------------------------

def test_failures_never_copy_a_test_item_or_the_failure(tmp_path):
    written = Counted([TEST_INPUTS[1], "1+2", "", " 60+60 ", "5+6", "5+6", "7+8"])
    with StubServer(lambda messages: written("w")) as server:
        teacher = teacher_for(server, tmp_path, concurrency=1)
        check = WrittenInputs(never=TEST_INPUTS, known=["1+2"])
        pairs = inputs_like_failures(teacher, INSTRUCTION, ["1+2"], 7, 1, check)
    assert pairs == [("5+6", "1+2"), ("7+8", "1+2")]
    assert check.dropped == {"test input": 2, "copies what it was shown": 1, "unanswered": 1, "repeat": 1}


def test_llm2llm_step_imitates_the_base_students_failures(tmp_path):
    def reply(messages):
        if is_answer(messages):
            return total(messages[1]["content"])
        failed = re.findall(r"^- (.+)$", messages[0]["content"], re.M)[0]
        return TEST_INPUTS[0] if failed == "1+2" else failed + "+10"

    with StubServer(reply) as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path, student=True)
        records = run_methods(seed_records(), [step("llm2llm", per_failure=1,
                                                    verifier=verifier_file(tmp_path, "False"))], ctx)
    made = records[4:]
    # the student gets every seed wrong (says the verifier); the copy of a test input is dropped
    assert sorted(record_input(r) for r in made) == sorted(s + "+10" for s in SEEDS[1:])
    assert all(record_answer(r) == total(record_input(r)) for r in made) and sources(made) == {"llm2llm": 3}
    assert not {record_input(r) for r in made} & set(TEST_INPUTS)
    assert ctx.notes[0]["dropped"] == {"test input": 1}


# ---- critique ------------------------------------------------------------------------------

def test_critique_step_critiques_student_and_teacher_answers_with_the_reference(tmp_path):
    critiqued = []

    def reply(messages):
        if is_answer(messages):
            text = messages[1]["content"]
            return "7 probably" if text == "3+4" else total(text)
        user = messages[1]["content"]
        problem, candidate = user.split("\n\n")[0][len("Problem:\n"):], user.split("Candidate solution:\n")[1]
        critiqued.append((problem, candidate, "Reference answer" in user))
        if candidate == "7 probably":
            return "It hedges."  # no verdict: dropped
        right = candidate.strip() == total(problem)
        return f"Checked.\nVerdict: {'correct' if right else 'incorrect'}"

    with StubServer(reply) as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path, student=True)
        records = run_methods(seed_records(), [step("critique", samples=1, teacher_samples=1)], ctx)
        with_reference, critiqued[:] = list(critiqued), []
        alone = context(teacher_for(server, tmp_path), tmp_path, student=True)
        run_methods(seed_records()[:1], [step("critique", samples=1, teacher_samples=1, reference=False)], alone)
    made = records[4:]
    assert all(shown for _, _, shown in with_reference) and critiqued and not any(s for _, _, s in critiqued)
    teachers = [(p, c) for p, c, _ in with_reference if c in (total(p), "7 probably")]
    assert sorted(p for p, _ in teachers) == SEEDS  # each seed's teacher answer is critiqued
    students = len(with_reference) - len(teachers)
    assert students >= 1 and ctx.used() == 4 + len(with_reference)  # teacher answers, then critiques
    assert len(made) == len(with_reference) - 1 and ctx.notes[0]["dropped"] == {"no verdict": 1}
    assert sources(made) == {"critique": len(made)} and all(r["meta"]["task_answer"] is False for r in made)
    assert sum(r["verdict"] for r in made) == 3  # the teacher's three right answers
    assert all(record_answer(r).endswith(("\nVerdict: correct", "\nVerdict: incorrect")) for r in made)


# ---- rejection sampling --------------------------------------------------------------------

def test_verified_keeps_distinct_right_answers_up_to_the_cap():
    right = lambda text, answer, ref: answer.split()[-1] == ref  # noqa: E731
    samples = ["5", "", "4", "the sum is 5", "5 ", None, "so 5"]
    assert verified("2+3", samples, "5", right, 1) == ["5"]
    assert verified("2+3", samples, "5", right, 2) == ["5", "the sum is 5"]
    assert verified("2+3", samples, "5", right, 9) == ["5", "the sum is 5", "so 5"]
    assert verified("2+3", ["4", ""], "5", right, 2) == []


def test_rejection_sampling_caps_verified_answers_per_prompt(tmp_path):
    sampled = Counted(["5", "The sum is 5.", "6", "so it is 5"])

    def reply(messages):
        text = messages[1]["content"]
        return sampled(text) if text == "2+3" else "wrong 0"

    with StubServer(reply) as server:
        for cap, expected in ((1, ["5"]), (2, ["5", "The sum is 5."]), (5, ["5", "The sum is 5.", "so it is 5"])):
            ctx = context(teacher_for(server, tmp_path, concurrency=1), tmp_path)
            records = run_methods(seed_records(), [step("rejection", sampler="teacher", cap=cap)], ctx)
            assert [record_answer(r) for r in records[4:]] == expected
            assert all(record_input(r) == "2+3" and r["meta"]["alternative"] for r in records[4:])
            assert sources(records[4:]) == {"rejection": len(expected)}
            assert ctx.notes[0]["dropped"] == {"no verified answer": 3}
        assert server.requests == 16  # k=4 per seed, asked once: later caps read the cache
        budgeted = context(teacher_for(server, tmp_path, concurrency=1), tmp_path, budget=9)
        run_methods(seed_records(), [step("rejection", sampler="teacher")], budgeted)
        assert budgeted.used() == 8  # two seeds' worth of k=4 fit in 9 requests


def test_rejection_sampling_from_the_student_with_a_verifier(tmp_path):
    spec = verifier_file(tmp_path, "len(answer) % 2 == 0")
    with StubServer(lambda m: "unused") as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path, student=True)
        records = run_methods(seed_records(), [step("rejection", verifier=spec, cap=2)], ctx)
    made = records[4:]
    assert made and ctx.used() == 0 and all(len(record_answer(r)) % 2 == 0 for r in made)
    assert max(Counter(record_input(r) for r in made).values()) <= 2


# ---- preference pairs ----------------------------------------------------------------------

def test_preference_pairs_reject_the_students_own_wrong_answer(tmp_path):
    spec = verifier_file(tmp_path, "answer.strip() == str(sum(int(n) for n in input.split('+'))) "
                                   "or len(answer) % 2 == 1")
    with StubServer(lambda m: "unused") as server:
        for chosen in ("reference", "verified"):
            ctx = context(teacher_for(server, tmp_path), tmp_path, student=True)
            records = run_methods(seed_records(), [step("preference-pairs", chosen=chosen, verifier=spec)], ctx)
            assert records == seed_records() and ctx.used() == 0 and ctx.pairs
            for pair in ctx.pairs:
                text = pair["prompt"][-1]["content"]
                assert pair["prompt"] == task_chat(INSTRUCTION, text)
                assert pair["meta"] == {"source": "preference-pairs", "round": 0, "chosen": chosen} and pair["id"]
                rejected, best = pair["rejected"][0]["content"], pair["chosen"][0]["content"]
                assert len(rejected) % 2 == 0 and rejected != total(text)
                assert best == total(text) if chosen == "reference" else len(best) % 2 == 1 or best == total(text)
            if chosen == "verified":
                assert any(p["chosen"][0]["content"] != total(p["prompt"][-1]["content"]) for p in ctx.pairs)


# ---- reflection ----------------------------------------------------------------------------

def test_reflection_joins_wrong_solution_reflection_and_right_solution(tmp_path):
    reflections = {"1+2": "**Wait,** I did not add 1 and 2.", "2+3": "", "3+4": "The answer is 7.",
                   "4+5": "Wait, 4+5 is 9, not what I wrote."}
    shown = {}

    def reply(messages):
        user = messages[1]["content"]
        problem = user.split("\n\n")[0][len("Problem:\n"):]
        shown[problem] = user
        return reflections[problem]

    with StubServer(reply) as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path, student=True)
        records = run_methods(seed_records(), [step("reflection")], ctx)
    made = {record_input(r): r for r in records[4:]}
    assert set(made) == {"1+2", "4+5"} and ctx.notes[0]["dropped"] == {"unanswered": 1, "not a reflection": 1}
    for text, r in made.items():
        wrong = shown[text].split("Wrong solution:\n")[1].split("\n\nCorrect solution:\n")[0]
        reflection = {"1+2": "Wait, I did not add 1 and 2.", "4+5": reflections["4+5"]}[text]
        assert record_answer(r) == f"{wrong}\n\n{reflection}\n\n{total(text)}" and wrong != total(text)
        assert shown[text].endswith("Correct solution:\n" + total(text))
        assert r["meta"]["source"] == "reflection" and r["meta"]["task_answer"] is False


# ---- refusal -------------------------------------------------------------------------------

def test_refusal_replaces_what_the_student_cannot_answer(tmp_path):
    spec = verifier_file(tmp_path, "input == '1+2'")  # the student "knows" 1+2 only
    with StubServer(lambda m: "unused") as server:
        ctx = context(teacher_for(server, tmp_path), tmp_path, student=True)
        refused = run_methods(seed_records(), [step("refusal", verifier=spec)], ctx)
        assert [record_input(r) for r in refused] == SEEDS and ctx.used() == 0
        assert refused[0] == seed_records()[0]
        assert [record_answer(r) for r in refused[1:]] == ["I am not sure I know the answer to this."] * 3
        assert all(r["meta"]["source"] == "refusal" and r["meta"]["task_answer"] is False for r in refused[1:])
        ctx = context(teacher_for(server, tmp_path), tmp_path, student=True)
        padded = run_methods(seed_records(), [step("refusal", verifier=spec, style="unsure")], ctx)
    assert record_answer(padded[0]) == f"3\n\n{R_TUNING_QUESTION} I am sure."
    assert [record_answer(r) for r in padded[1:]] == [f"{total(s)}\n\n{R_TUNING_QUESTION} I am unsure."
                                                      for s in SEEDS[1:]]


# ---- in the pipeline -----------------------------------------------------------------------

TASK = """name: adder
instruction: "{instruction}"
seeds: [{{input: "1+2", output: "3"}}, {{input: "2+3", output: "5"}}, {{input: "3+4", output: "7"}}]
test: [{{input: "50+50", output: "100"}}]
metric: numeric
teacher: {{kind: openai, base_url: "{url}", model: "{model}", max_retries: 0}}
student: {{model: "tiny:0"}}
synth:
  label_inputs: false
{methods}
budget: {{requests: {budget}}}
"""


def test_synth_round0_runs_the_methods_and_charges_the_budget(tmp_path):
    from protege.loop.data import synthesize_round0
    from protege.loop.state import prepare
    methods = ("  methods:\n    - {name: self-instruct, n: 2}\n"
               "    - {name: rejection, sampler: teacher, samples: 2}\n    - preference-pairs\n")
    written = Counted(["9+9", "8+8"])
    with StubServer(lambda m: total(m[1]["content"]) if is_answer(m) else written("w")) as server:
        (tmp_path / "task.yaml").write_text(TASK.format(instruction=INSTRUCTION, url=server.base_url,
                                                        model=tmp_path.name, methods=methods, budget=9))
        state = prepare(load_task(tmp_path), tmp_path / "run")
        folder = synthesize_round0(state).data.parent
    data, notes = read_jsonl(folder / "data.jsonl"), read_json(folder / "methods.json")
    # 2 written + 2 answered, then rejection's k=2 for as many inputs as the 5 requests left allow
    assert sources(data) == {"seed": 3, "self-instruct": 2, "rejection": 2}
    assert [n["method"] for n in notes["steps"]] == ["self-instruct", "rejection", "preference-pairs"]
    assert [n["requests"] for n in notes["steps"]] == [4, 4, 0] and state.budget.spent == 8 <= 9
    assert all(p["meta"]["source"] == "preference-pairs" for p in read_jsonl(folder / "pairs.jsonl"))


def test_a_task_without_methods_keeps_its_stage_key(tmp_path):
    from protege.loop.data import synthesize_round0
    from protege.loop.state import prepare
    with StubServer(lambda m: total(m[1]["content"])) as server:
        (tmp_path / "task.yaml").write_text(TASK.format(instruction=INSTRUCTION, url=server.base_url,
                                                        model=tmp_path.name, methods="", budget=9))
        task = load_task(tmp_path)
        state = prepare(task, tmp_path / "run")
        folder = synthesize_round0(state).data.parent
    key = read_json(folder / "stage.json")["key"]
    synth = {"label_inputs": False, "expand": 0, "generator": "", "seeds_per_prompt": 3, "expand_share": 0.2,
             "input_validator": "", "per_failure": 2, "max_failures": 64, "mine_size": 200, "methods": []}
    # what only the synthesis methods read (the student, the metric, the test inputs) stays out
    assert key == {"teacher": state.teacher.backend.identity(), "instruction": INSTRUCTION,
                   "seeds": [s.model_dump() for s in task.seeds], "inputs": [], "synth": synth, "budget": 9,
                   "seed": 0, "student": None, "metric": None, "test": None, "max_new_tokens": None}
    assert sorted(p.name for p in folder.iterdir()) == ["data.jsonl", "stage.json", "teacher.json"]
    assert Run(tmp_path / "run").stage("synth-r0", key, lambda out: None)[1]  # the same stage: reused
