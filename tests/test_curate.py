import json
import math

import numpy as np
import pytest
import torch

from openai_stub import StubServer
from protege.config import ConfigError, CurateConfig, parse_spec
from protege.curate import CurateContext, curate
from protege.curate import curriculum, decontaminate, dedup, diversity, ifd, mixture, perplexity, quality
from protege.curate.curriculum import CurriculumStep
from protege.curate.decontaminate import DecontaminateStep
from protege.curate.dedup import DedupStep
from protege.curate.diversity import DiversityStep
from protege.curate.ifd import IFDStep
from protege.curate.mixture import MixtureStep
from protege.curate.perplexity import PerplexityStep
from protege.curate.quality import QualityStep
from protege.curate.embeddings import nearest
from protege.curate.student_loss import ifd as ifd_score
from protege.curate.student_loss import mean_answer_losses, student_losses, without_question
from protege.evaluate.forgetting import PROBE_FILE
from protege.records import normalize
from protege.models import load_model
from protege.models.tiny import build_tiny
from protege.records import record_input, sft_record
from protege.teachers import CachedTeacher, TeacherCache
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig
from protege.train.sft import tokenize_chat


def rec(text, answer="out", source="teacher"):
    return sft_record("I.", text, answer, source, 0)


def texts(records):
    return [record_input(r) for r in records]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = build_tiny(tmp_path_factory.mktemp("tiny"), seed=3)
    return load_model(directory, "cpu")


def letter_embedder(texts_):
    """Deterministic stand-in for MiniLM: each text's first letter picks a direction, and a little
    of the text's length keeps texts of one letter apart; rows are unit vectors."""
    rows = np.zeros((len(texts_), 27))
    for i, text in enumerate(texts_):
        rows[i, ord(text[0].lower()) - ord("a")] = 1.0
        rows[i, 26] = 0.01 * len(text)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --- the YAML list of steps ------------------------------------------------------------------------

SPEC = "test: [{input: a, output: b}]\n"


def test_curate_yaml_is_a_list_of_names_or_mappings_in_order():
    spec, _ = parse_spec(SPEC + "curate:\n  - mixture\n  - name: dedup\n    near_threshold: 0.7\n", "t.yaml")
    assert [type(s) for s in spec.curate.root] == [MixtureStep, DedupStep]
    assert spec.curate.root[1].near_threshold == 0.7


def test_curate_default_and_the_old_mapping_form():
    assert [s.name for s in CurateConfig().root] == ["decontaminate", "dedup"]
    old = parse_spec(SPEC + "curate: {dedup: false, decontaminate: true}\n", "t.yaml")[0]
    assert [s.name for s in old.curate.root] == ["decontaminate"]


@pytest.mark.parametrize("text, line, words", [
    ("curate:\n  - dedupe\n", 3, "does not match any of the expected tags"),
    ("curate:\n  - name: quality\n    min_score: 11\n", 4, "less than or equal to 10"),  # min_score's own line
    ("curate:\n  dedup: true\n  shuffle: true\n", 2, "unknown key(s) ['shuffle']"),
])
def test_bad_curate_step_names_file_and_line(text, line, words):
    with pytest.raises(ConfigError) as err:
        parse_spec(SPEC + text, "t.yaml")
    assert str(err.value).startswith(f"t.yaml:{line}: field 'curate") and words in str(err.value)


def test_curate_runs_steps_in_order_and_names_the_step_of_each_removal():
    records = [rec("March 3"), rec(" march  3 "), rec("b")]
    kept, removed = curate(records, CurateConfig.model_validate(["decontaminate", "dedup"]),
                           CurateContext(test_inputs=["B."]))
    assert texts(kept) == ["March 3"]
    assert [(r["id"], r["step"], r["reason"]) for r in removed] == [
        (records[2]["id"], "decontaminate", "in the held-out test or dev set"),
        (records[1]["id"], "dedup", "duplicate")]


def test_a_step_without_what_it_needs_says_so():
    with pytest.raises(ValueError, match="curate step 'quality' needs the judge"):
        curate([rec("a")], CurateConfig.model_validate(["quality"]), CurateContext())


# --- dedup -----------------------------------------------------------------------------------------

def test_shingles_and_jaccard_by_hand():
    assert dedup.shingles("abcdef", 3) == {"abc", "bcd", "cde", "def"}
    assert dedup.shingles("ab", 3) == {"ab"}
    # {abc, bcd, cde, def} against {abc, bcd, cde, dex}: 3 shared of 5
    assert dedup.jaccard(dedup.shingles("abcdef", 3), dedup.shingles("abcdex", 3)) == pytest.approx(0.6)


LONG = "Please convert the following calendar date into the ISO format used by databases: March 3, 2021"


def test_near_duplicate_with_the_same_answer_goes_with_its_exact_similarity():
    first, near = rec(LONG, "2021-03-03"), rec(LONG + "!", "2021-03-03")
    kept, removed = dedup.dedup([first, near], DedupStep(near_threshold=0.9))
    expected = dedup.jaccard(dedup.shingles(normalize(LONG), 5), dedup.shingles(normalize(LONG + "!"), 5))
    assert 0.9 < expected < 1
    assert kept == [first]
    assert removed == [{"id": near["id"], "reason": "near-duplicate", "of": first["id"],
                        "similarity": round(expected, 4)}]


def test_near_duplicate_inputs_with_different_answers_both_stay_unless_asked():
    a, b = rec(LONG, "2021-03-03"), rec(LONG.replace("3, 2021", "4, 2021"), "2021-03-04")
    assert dedup.dedup([a, b], DedupStep(near_threshold=0.8))[1] == []
    assert [r["reason"] for r in dedup.dedup([a, b], DedupStep(near_threshold=0.8, same_answer=False))[1]] == \
        ["near-duplicate"]
    assert dedup.dedup([a, b], DedupStep(near_threshold=1.0, same_answer=False))[1] == []


# --- decontaminate ---------------------------------------------------------------------------------

def test_ngram_overlap_by_hand():
    banned = decontaminate.ngrams("the cat sat on the mat", 3)
    # "the cat sat on a mat": 3-grams (the cat sat) (cat sat on) (sat on a) (on a mat); 2 of 4 are banned
    assert decontaminate.ngram_overlap("The cat sat on a mat", banned, 3) == 0.5
    assert decontaminate.ngram_overlap("the cat", banned, 3) == 0.0


def test_decontaminate_by_ngrams_and_by_embedding():
    test_inputs = ["one two three four five six", "zebra"]
    records = [rec("one two three four five seven"), rec("eight nine one two three ten"), rec("zulu"), rec("apple")]
    cfg = DecontaminateStep(ngram=3, ngram_overlap=0.5, embedding_threshold=0.99)
    kept, removed = decontaminate.decontaminate(records, test_inputs, cfg, letter_embedder)
    assert texts(kept) == ["eight nine one two three ten", "apple"]
    # 3 of the first record's 4 trigrams are in the test set, 1 of the second's; "zulu" points the way
    # "zebra" does
    zulu_similarity = float(letter_embedder(["zulu"])[0] @ letter_embedder(["zebra"])[0])
    assert removed == [
        {"id": records[0]["id"], "reason": decontaminate.NGRAM_REASON, "overlap": 0.75},
        {"id": records[2]["id"], "reason": decontaminate.EMBEDDING_REASON,
         "similarity": round(zulu_similarity, 4), "test_input": "zebra"}]


def test_nearest_is_the_best_cosine_and_its_index():
    queries = np.array([[1.0, 0.0], [0.6, 0.8]])
    corpus = np.array([[0.0, 1.0], [1.0, 0.0]])
    similarity, index = nearest(queries, corpus)
    assert similarity.tolist() == pytest.approx([1.0, 0.8]) and index.tolist() == [1, 0]


# --- diversity -------------------------------------------------------------------------------------

def test_cluster_quotas_by_hand():
    # 5 of 10 by size: 3, 1.5, 0.5 -> 3, 1, 0 and the one left to the earlier of the two .5 remainders
    assert diversity.proportional_quotas([6, 3, 1], 5) == [3, 2, 0]
    # equal shares: 1 each, then the two left to the clusters that can still take one
    assert diversity.balanced_quotas([6, 3, 1], 5) == [2, 2, 1]
    assert diversity.balanced_quotas([5, 5, 5], 2) == [1, 1, 0]
    assert diversity.balanced_quotas([2, 1], 9) == [2, 1]


def test_diversity_keeps_every_cluster_and_the_seeds():
    pool = [rec(f"a{i}") for i in range(6)] + [rec(f"b{i}") for i in range(3)] + [rec("c0")]
    seed = rec("s-seed", source="seed")
    ctx = CurateContext(embed=letter_embedder)
    kept, removed = diversity.run(pool + [seed], DiversityStep(size=4, clusters=3, allocation="balanced"), ctx)
    # 4 kept: the seed, and 3 over three clusters, one each
    assert len(kept) == 4 and seed in kept
    assert sorted(t[0] for t in texts(kept) if t != "s-seed") == ["a", "b", "c"]
    assert len(removed) == 7 and {r["reason"] for r in removed} == {diversity.REASON}
    assert len({r["cluster"] for r in removed}) == 2  # the lone c0 was never removed


def test_diversity_prefers_the_judge_score_within_a_cluster():
    pool = [rec(f"a{i}") for i in range(4)]
    pool[2]["meta"]["quality"] = 9
    kept, _ = diversity.run(pool, DiversityStep(size=1, clusters=1), CurateContext(embed=letter_embedder))
    assert kept == [pool[2]]


# --- quality (judge) -------------------------------------------------------------------------------

def judge_reply(messages):
    """Grades the answer by its text: 'good' scores 9, 'bad' 3, anything else gets no score."""
    answer = messages[-1]["content"].split("Answer to grade:\n")[-1]
    return {"good": "Fine.\nScore: 9", "bad": "Wrong.\nScore: 3"}.get(answer.strip(), "I cannot tell.")


def test_quality_drops_low_judge_scores_keeps_unscored_and_seeds(tmp_path):
    records = [rec("q1", "good"), rec("q2", "bad"), rec("q3", "???"), rec("q4", "bad", source="seed")]
    with StubServer(judge_reply) as server:
        cfg = OpenAITeacherConfig(base_url=server.base_url, model="judge")
        judge = CachedTeacher(OpenAITeacher(cfg), TeacherCache(tmp_path / "judge.sqlite"), {"max_tokens": 32})
        ctx = CurateContext(instruction="Answer.", judge=lambda: judge)
        kept, removed = quality.run(records, QualityStep(min_score=7), ctx)
        assert server.requests == 3  # the seed was not judged
    assert texts(kept) == ["q1", "q3", "q4"]
    assert kept[0]["meta"]["quality"] == 9 and "quality" not in kept[1]["meta"]
    assert removed == [{"id": records[1]["id"], "reason": quality.REASON, "score": 3}]


# --- the base student's losses: perplexity, IFD, curriculum ----------------------------------------

def test_perplexity_and_ifd_by_hand():
    assert ifd_score(1.0, 0.5) == pytest.approx(math.exp(0.5))
    assert ifd_score(math.inf, 2.0) == math.inf
    assert perplexity.kept_by_rank([3.0, 1.0, 2.0, 5.0], 0.5) == [False, True, True, False]
    assert perplexity.kept_by_rank([3.0, 1.0, 2.0], 1.0, cap=2.5) == [False, True, True]
    # 1.2 does not fit; of 0.5, 0.9, 0.7 the top half (rounded up: 2) by IFD stays
    assert ifd.ifd_reasons([0.5, 1.2, 0.9, 0.7], 1.0, 0.5) == [ifd.EASY_REASON, ifd.MISFIT_REASON, None, None]


def test_batched_answer_losses_equal_each_chat_alone(tiny):
    model, tokenizer = tiny
    records = [rec("short", "x"), rec("a much longer question here", "a longer answer")]
    rows = [tokenize_chat(tokenizer, r["messages"], 512) for r in records]
    batched = mean_answer_losses(model, tokenizer, rows, batch_size=2)
    for row, loss in zip(rows, batched):
        alone = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
        assert loss == pytest.approx(alone.item(), rel=1e-4)
    assert without_question(records[0]["messages"]) == [{"role": "user", "content": ""},
                                                        {"role": "assistant", "content": "x"}]


def student_ctx(tiny):
    return CurateContext(student=lambda: tiny)


def test_perplexity_step_drops_the_least_likely_answers_but_no_seed(tiny):
    records = [rec(f"q{i}", "y" * (i + 1)) for i in range(4)] + [rec("s", "zz", source="seed")]
    ctx = student_ctx(tiny)
    kept, removed = perplexity.run(records, PerplexityStep(keep=0.5), ctx)
    scores = {r["id"]: math.exp(ctx.losses[r["id"]][0]) for r in records[:4]}
    worst = sorted(scores, key=scores.get)[2:]
    assert sorted(r["id"] for r in removed) == sorted(worst) and records[4] in kept
    assert all(r["reason"] == perplexity.REASON and r["perplexity"] == round(scores[r["id"]], 4) for r in removed)


def test_ifd_step_removes_with_reasons_from_the_scores(tiny):
    records = [rec(f"question {i}", f"answer {i}") for i in range(4)]
    ctx = student_ctx(tiny)
    kept, removed = ifd.run(records, IFDStep(max_ifd=1.0, keep=0.5), ctx)
    values = [ifd_score(*ctx.losses[r["id"]]) for r in records]
    reasons = ifd.ifd_reasons(values, 1.0, 0.5)
    assert [r["reason"] for r in removed] == [why for why in reasons if why]
    assert texts(kept) == [record_input(r) for r, why in zip(records, reasons) if why is None]
    assert len(student_losses(records, ctx, "ifd")) == 4  # scored once, then read back


def test_curriculum_orders_easy_to_hard_and_removes_nothing(tiny):
    records = [rec("ccc", "long answer"), rec("a", "b"), rec("bb", "cc")]
    kept, removed = curriculum.run(records, CurriculumStep(by="length"), CurateContext())
    assert texts(kept) == ["a", "bb", "ccc"] and removed == []
    assert [r["meta"]["difficulty"] for r in kept] == [2.0, 4.0, 14.0]
    ctx = student_ctx(tiny)
    kept, removed = curriculum.run(records, CurriculumStep(by="perplexity"), ctx)
    hardness = [math.exp(ctx.losses[r["id"]][0]) for r in kept]
    assert hardness == sorted(hardness) and removed == []


# --- mixture ---------------------------------------------------------------------------------------

def test_general_prompts_are_many_distinct_and_none_from_the_probe():
    prompts = mixture.general_prompts()
    probe = [json.loads(line)["prompt"] for line in PROBE_FILE.read_text().splitlines() if line]
    assert len(prompts) >= 150 and len({normalize(p) for p in prompts}) == len(prompts)
    # no prompt is a probe prompt, nor shares a run of five words with one
    records = [rec(p) for p in prompts]
    kept, removed = decontaminate.decontaminate(records, probe, DecontaminateStep(ngram=5, ngram_overlap=1e-9))
    assert removed == []


@pytest.fixture(scope="module")
def talking_tiny(tmp_path_factory):
    """A random tiny model with tied embeddings repeats its last token, which after the chat template is a
    newline: an empty answer. With the newline's embedding zeroed it writes characters instead."""
    model, tokenizer = load_model(build_tiny(tmp_path_factory.mktemp("talking"), seed=4), "cpu")
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("Ċ")] = 0
    return model, tokenizer


def test_mixture_adds_self_replayed_general_examples(talking_tiny):
    records = [rec(f"task {i}") for i in range(20)]
    cfg = MixtureStep(ratio=0.1, max_new_tokens=4)
    kept, removed = mixture.run(records, cfg, CurateContext(student=lambda: talking_tiny, seed=1))
    general = kept[20:]
    assert kept[:20] == records and removed == []
    assert 0 < len(general) <= 2 and mixture.mixture_size(20, 0.1, 151) == 2
    assert all(r["meta"]["source"] == "general" and r["messages"][0]["role"] == "user" for r in general)
    assert set(texts(general)) <= set(mixture.general_prompts())


def test_mixture_answered_by_the_teacher(tmp_path):
    with StubServer(lambda messages: "general answer") as server:
        cfg = OpenAITeacherConfig(base_url=server.base_url, model="t")
        teacher = CachedTeacher(OpenAITeacher(cfg), TeacherCache(tmp_path / "t.sqlite"), {"max_tokens": 32})
        kept, _ = mixture.run([rec(f"task {i}") for i in range(30)], MixtureStep(ratio=0.1, answer_by="teacher"),
                              CurateContext(teacher=teacher))
    assert [r["messages"][-1]["content"] for r in kept[30:]] == ["general answer"] * 3


# --- the real embedding model ----------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_finds_a_paraphrase_and_not_an_unrelated_input():
    from protege.curate.embeddings import minilm_embedder
    records = [rec("What is the boiling point of water at sea level?"), rec("Recommend a novel about sailing.")]
    kept, removed = decontaminate.decontaminate(
        records, ["At sea level, at what temperature does water boil?"], DecontaminateStep(embedding_threshold=0.8),
        minilm_embedder())
    assert texts(kept) == ["Recommend a novel about sailing."]
    assert removed[0]["reason"] == decontaminate.EMBEDDING_REASON and removed[0]["similarity"] >= 0.8


@pytest.mark.slow
def test_minilm_diversity_keeps_one_input_per_topic():
    topics = [["How do I bake sourdough bread?", "What flour is best for pizza dough?", "How long do cookies bake?"],
              ["How do I fix a flat bicycle tire?", "How often should a bike chain be oiled?", "Why do brakes squeak?"],
              ["What is the capital of Portugal?", "Which river flows through Vienna?", "Where is Lake Titicaca?"]]
    records = [rec(text) for topic in topics for text in topic]
    kept, removed = diversity.run(records, DiversityStep(size=3, clusters=3), CurateContext())
    assert sorted(next(i for i, topic in enumerate(topics) if t in topic) for t in texts(kept)) == [0, 1, 2]
