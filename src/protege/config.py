"""The task spec: one YAML file, validated by pydantic, errors that name file, line and field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A task spec that cannot be used; str() is the one line shown to the user."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Example(Strict):
    input: str = Field("", description="What the student is given.")
    output: str = Field("", description="The reference answer.")
    tests: str = Field("", description="code metric: Python run after the answer's code; the answer passes "
                       "when it exits 0. Empty: the reference answer is run as the test.")


class TeacherConfig(Strict):
    kind: Literal["function", "openai", "local", "self"] = Field(
        "function", description="function: a Python callable; openai: any OpenAI-compatible endpoint; "
        "local: a Hugging Face model run in this process (vLLM where installed and a GPU is there); "
        "self: the student samples answers and a verifier keeps those that pass.")
    function: str = Field("", description="module:attr of the teacher callable (kind=function); "
                          "modules are looked up in the task directory first.")
    base_url: str = Field("", description="Endpoint of an OpenAI-compatible server (kind=openai).")
    model: str = Field("", description="kind=openai: the model name sent to the endpoint; kind=local: "
                       "embedded:NAME, tiny:SEED or a local Hugging Face model directory.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    temperature: float = Field(0.0, description="Sampling temperature for answers.")
    max_tokens: int = Field(512, gt=0, description="Largest reply the teacher may write.")
    concurrency: int = Field(8, gt=0, description="Requests in flight at once (kind=openai).")
    max_retries: int = Field(5, ge=0, description="Retries after a timeout, a lost connection, 429, 5xx or a "
                             "malformed or empty reply (kind=openai); after the last one the request counts "
                             "as failed (or dropped, when its replies were unusable) and gives no data.")
    retry_base_delay: float = Field(0.5, ge=0, description="Seconds before the first retry; each further one "
                                    "waits up to twice as long (randomly between half and all of that), up to "
                                    "retry_max_delay. A 429 or 503 with Retry-After waits what it says.")
    retry_max_delay: float = Field(8.0, ge=0, description="Longest backoff between two tries, in seconds.")
    timeout: float = Field(60.0, gt=0, description="Seconds before one request is abandoned (and retried).")
    batch_size: int = Field(16, gt=0, description="Requests generated together by a local teacher "
                            "(kind=local); each batch is cached as it finishes.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where a local teacher runs "
                                                   "(kind=local); auto: a GPU when one is there.")
    samples: int = Field(4, gt=0, description="Answers sampled per input by the self teacher.")
    verifier: str = Field("", description="module:attr(input, answer) -> bool used by the self teacher; "
                          "by default an answer is verified against the reference when there is one.")


class StudentConfig(Strict):
    model: str = Field("embedded:smollm2-135m-instruct",
                       description="embedded:NAME, a local Hugging Face directory, or tiny:SEED for tests.")


class SelfInstructStep(Strict):
    name: Literal["self-instruct"] = Field("self-instruct", description="Seed expansion (Self-Instruct): the "
                                           "teacher writes new inputs from k random examples, then answers them.")
    n: int = Field(50, ge=0, description="New inputs asked for.")
    seeds_per_prompt: int = Field(3, gt=0, description="k examples (seeds, unlabeled inputs and the inputs of "
                                  "the data so far) shown per request, drawn at random.")
    ensemble: list[TeacherConfig] = Field(default_factory=list, description="Ensemble-Instruct: more teachers "
                                          "that answer every new input beside the task's teacher; an input is "
                                          "kept only when min_agree answers agree. Empty: no ensemble.")
    min_agree: int = Field(2, ge=1, description="Answers (the task teacher's included) that must agree for an "
                           "input to be kept; the answer kept is the one most others agree with.")
    agreement: Literal["metric", "rouge-l"] = Field(
        "metric", description="When two answers agree: metric: each scores at least threshold against the "
        "other by the task's metric; rouge-l: their ROUGE-L F1 is at least threshold.")
    threshold: float = Field(0.7, gt=0, le=1, description="Agreement threshold (see agreement).")


class EvolInstructStep(Strict):
    name: Literal["evol-instruct"] = Field("evol-instruct", description="Evol-Instruct: the teacher rewrites "
                                           "inputs deeper, more constrained or more varied, then answers them.")
    n: int = Field(50, ge=0, description="Inputs evolved per generation, drawn at random from the data so far "
                   "(the first generation) or from the previous generation's survivors.")
    generations: int = Field(1, ge=1, description="Rounds of evolution; each rewrites the last one's survivors "
                             "again (the paper runs 4).")
    kinds: list[Literal["constraints", "deepen", "concretize", "reasoning", "breadth"]] = Field(
        default_factory=lambda: ["constraints", "deepen", "concretize", "reasoning", "breadth"],
        description="Rewrites drawn from, one at random per input: constraints (add a requirement), deepen "
        "(ask more deeply), concretize (specific concepts), reasoning (more steps), breadth (a new, rarer input "
        "of the same kind).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the rewrites.")


class MagpieStep(Strict):
    name: Literal["magpie"] = Field("magpie", description="Magpie: a local model given only its chat template "
                                    "up to the user turn writes user turns; they are then answered.")
    n: int = Field(50, ge=0, description="User turns sampled (unfinished and repeated ones are dropped).")
    model: str = Field("", description="Who writes the user turns: a local Hugging Face directory, "
                       "embedded:NAME or tiny:SEED; empty: the base student.")
    system: bool = Field(True, description="Put the task's instruction in the template as the system message, "
                         "so the user turns are inputs to the task.")
    answer_by: Literal["teacher", "writer"] = Field("teacher", description="teacher: the task's teacher answers "
                                                    "each user turn; writer: the model that wrote it (as in the "
                                                    "paper).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the user turns.")
    max_new_tokens: int = Field(128, gt=0, description="Longest user turn; one not finished by then is dropped.")


class StudentSampledStep(Strict):
    """Options every method that samples the base student on the data so far shares."""

    items: int = Field(100, ge=0, description="Records of the data so far (those whose answer is a task answer) "
                       "drawn at random to work on.")
    samples: int = Field(4, ge=1, description="Answers sampled per input.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of those answers.")
    verifier: str = Field("", description="module:attr(input, answer) -> bool that says an answer is right; "
                          "empty: the task's metric against the record's answer scores 1.")


class LLM2LLMStep(StudentSampledStep):
    name: Literal["llm2llm"] = Field("llm2llm", description="LLM2LLM in round 0: the teacher writes new inputs "
                                     "like the ones the base student gets wrong, then answers them.")
    samples: int = Field(1, ge=1, description="Answers sampled per input; an input is a failure when any is wrong.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0: one greedy answer).")
    per_failure: int = Field(2, ge=1, description="New inputs the teacher writes per failure.")


class CritiqueStep(StudentSampledStep):
    name: Literal["critique"] = Field("critique", description="Critique data (CFT): the teacher critiques "
                                      "candidate solutions, the student's and its own, ending with a verdict.")
    samples: int = Field(2, ge=0, description="Student samples per input critiqued.")
    teacher_samples: int = Field(1, ge=0, description="Teacher answers per input critiqued, sampled at "
                                 "temperature.")
    reference: bool = Field(True, description="Show the critic the record's answer as the reference.")


class RejectionStep(StudentSampledStep):
    name: Literal["rejection"] = Field("rejection", description="Rejection sampling (STaR, RFT): k sampled "
                                       "answers per input, the verified ones kept.")
    sampler: Literal["student", "teacher"] = Field("student", description="Who samples: the base student "
                                                   "(self-improvement) or the task's teacher.")
    cap: int = Field(1, ge=1, description="Distinct verified answers kept per input.")


class PreferencePairsStep(StudentSampledStep):
    name: Literal["preference-pairs"] = Field("preference-pairs", description="On-policy DPO pairs: chosen = "
                                              "the reference or a verified answer, rejected = the base student's "
                                              "own wrong answer; written to pairs.jsonl.")
    chosen: Literal["reference", "verified"] = Field("reference", description="reference: the record's answer "
                                                     "(the teacher's, or a seed's); verified: the student's own "
                                                     "first right sample, else the reference.")


class ReflectionStep(StudentSampledStep):
    name: Literal["reflection"] = Field("reflection", description="Mistake and reflection (LEMMA): the "
                                        "student's wrong solution, the teacher's reflection on it, the right "
                                        "solution, as one answer.")


class RefusalStep(StudentSampledStep):
    name: Literal["refusal"] = Field("refusal", description="R-Tuning: inputs the base student cannot answer get "
                                     "an uncertainty target in place of their answer.")
    certain_share: float = Field(0.5, gt=0, le=1, description="Share of the samples that must be right for "
                                 "the student to know the answer.")
    style: Literal["refuse", "unsure"] = Field(
        "refuse", description="refuse: the target is the refusal text; unsure: the paper's padding, the answer "
        "then \"Are you sure you accurately answered the question based on your internal knowledge? I am "
        "unsure.\" (\"I am sure.\" on the inputs it knows).")
    refusal: str = Field("I am not sure I know the answer to this.", description="The target of style refuse.")


SynthMethod = Annotated[Union[SelfInstructStep, EvolInstructStep, MagpieStep, LLM2LLMStep, CritiqueStep,
                              RejectionStep, PreferencePairsStep, ReflectionStep, RefusalStep],
                        Field(discriminator="name")]


class SynthConfig(Strict):
    label_inputs: bool = Field(True, description="Have the teacher answer the task's unlabeled inputs.")
    expand: int = Field(0, ge=0, description="New inputs to create from the seeds in round 0.")
    generator: str = Field("", description="module:attr(n, seed) -> list of inputs; "
                           "when empty, the teacher writes new inputs from k random seeds.")
    seeds_per_prompt: int = Field(3, gt=0, description="k seeds shown to the teacher per new input.")
    per_failure: int = Field(2, ge=0, description="New examples the teacher writes per student failure.")
    max_failures: int = Field(64, ge=0, description="Failures sent to the teacher per round.")
    mine_size: int = Field(200, ge=0, description="Training items the student is tested on to find failures.")
    methods: list[SynthMethod] = Field(default_factory=list, description="Synthesis methods run in order in "
                                       "round 0 after labeling and expansion: each a name or {name: ..., "
                                       "options} (self-instruct, evol-instruct, magpie, llm2llm, critique, "
                                       "rejection, preference-pairs, reflection, refusal). Empty: none.")

    @field_validator("methods", mode="before")
    @classmethod
    def _steps_by_name(cls, value):
        if isinstance(value, list):
            return [{"name": step} if isinstance(step, str) else step for step in value]
        return value


class DecontaminateStep(Strict):
    name: Literal["decontaminate"] = Field("decontaminate", description="Drop examples that repeat a test or "
                                           "dev input: exactly, by word n-grams, or (when set) by embedding.")
    ngram: int = Field(8, gt=0, description="Words per n-gram compared with the test and dev inputs.")
    ngram_overlap: float = Field(0.9, gt=0, le=1, description="Drop an example when this share of its n-grams "
                                 "occurs in the test or dev inputs: the same text with a word or two changed. "
                                 "Lower values flag inputs that merely share the task's template; inputs "
                                 "shorter than ngram words are matched exactly only.")
    embedding_threshold: float | None = Field(None, gt=0, le=1, description="Also drop an example whose input "
                                              "embedding has at least this cosine similarity with a test or dev "
                                              "input (0.85 suits free text). Empty: off; templated inputs (dates, "
                                              "sums) are all close to each other.")


class DedupStep(Strict):
    name: Literal["dedup"] = Field("dedup", description="Drop exact and near-duplicate examples; the first wins.")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity of the inputs' character "
                                  "shingles (found with MinHash LSH, confirmed exactly) at or above which an "
                                  "example is a near-duplicate of an earlier one; 1: exact duplicates only.")
    shingle: int = Field(5, gt=0, description="Characters per shingle of the normalized input.")
    same_answer: bool = Field(True, description="A near-duplicate must also have the same answer: inputs that "
                              "differ in one number and have different answers both teach something.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: fewer missed pairs, slower).")


class DiversityStep(Strict):
    name: Literal["diversity"] = Field("diversity", description="Keep a subset spread over k-means clusters of "
                                       "the inputs' embeddings (Diversify and Conquer).")
    keep: float = Field(0.5, gt=0, le=1, description="Share of the examples kept (when size is 0).")
    size: int = Field(0, ge=0, description="Examples kept; 0: the keep share.")
    clusters: int = Field(0, ge=0, description="k of k-means; 0: the square root of the number of examples.")
    allocation: Literal["proportional", "balanced"] = Field(
        "proportional", description="How many each cluster keeps: proportional to its size (the paper's kMQ), "
        "or balanced (equal shares, so rare kinds of input weigh as much as common ones).")


class QualityStep(Strict):
    name: Literal["quality"] = Field("quality", description="A judge scores each teacher answer 1-10; "
                                     "examples under min_score are dropped.")
    min_score: int = Field(7, ge=1, le=10, description="Lowest judge score kept.")
    rubric: str = Field("Is the answer correct, complete, and in the form the task asks for?",
                        description="What the judge weighs.")


class PerplexityStep(Strict):
    name: Literal["perplexity"] = Field("perplexity", description="Drop the examples whose answer the base "
                                        "student finds least likely (POINTS: low-perplexity data trains better).")
    keep: float = Field(0.9, gt=0, le=1, description="Share of the examples kept, lowest perplexity first.")
    max_perplexity: float | None = Field(None, gt=1, description="Also drop every answer above this perplexity; "
                                         "empty: no cap.")


class IFDStep(Strict):
    name: Literal["ifd"] = Field("ifd", description="Instruction-Following Difficulty (Cherry LLM): perplexity "
                                 "of the answer with its question over without; keep the hardest useful ones.")
    max_ifd: float = Field(1.0, gt=0, description="Drop examples at or above this IFD: the question does not "
                           "help predict the answer, so question and answer do not fit.")
    keep: float = Field(1.0, gt=0, le=1, description="Then keep this share, highest IFD first (the paper: 0.05-0.1).")


class CurriculumStep(Strict):
    name: Literal["curriculum"] = Field("curriculum", description="Order the examples easy to hard; removes "
                                        "nothing.")
    by: Literal["perplexity", "ifd", "length"] = Field(
        "perplexity", description="Difficulty: the base student's perplexity of the answer, its IFD, or the "
        "length of input and answer in characters (no model needed).")


class MixtureStep(Strict):
    name: Literal["mixture"] = Field("mixture", description="Add general instructions (shipped with protege, "
                                     "none from the forgetting probe) to limit forgetting.")
    ratio: float = Field(0.1, gt=0, le=1, description="General examples added per task example (at most the "
                         "whole pool of about 150).")
    answer_by: Literal["student", "teacher"] = Field(
        "student", description="student: the base student answers (self-replay: keeps its own general "
        "behaviour, no teacher cost); teacher: the task's teacher answers (an LLM teacher only).")
    max_new_tokens: int = Field(128, gt=0, description="Longest general answer the base student writes.")


CurateStep = Annotated[Union[DecontaminateStep, DedupStep, DiversityStep, QualityStep, PerplexityStep, IFDStep,
                             CurriculumStep, MixtureStep], Field(discriminator="name")]
LEGACY_CURATE_ORDER = ("decontaminate", "dedup")


class CurateConfig(RootModel[list[CurateStep]]):
    root: list[CurateStep] = Field(default_factory=lambda: [DecontaminateStep(), DedupStep()],
                                   description="Curation steps run in order: each a name or {name: ..., "
                                   "options}; default decontaminate then dedup.")

    @model_validator(mode="before")
    @classmethod
    def _steps(cls, value):
        if isinstance(value, dict) and "name" not in value:
            # the earlier form {dedup: true, decontaminate: true} switched two fixed steps on and off
            unknown = set(value) - set(LEGACY_CURATE_ORDER)
            if unknown:
                raise ValueError(f"expected a list of steps, got unknown key(s) {sorted(unknown)}")
            value = [name for name in LEGACY_CURATE_ORDER if value.get(name, True)]
        if isinstance(value, list):
            return [{"name": step} if isinstance(step, str) else step for step in value]
        return value


class TrainConfig(Strict):
    method: Literal["sft", "masked-thought", "cft", "dpo", "distill", "grpo"] = Field(
        "sft", description="sft; masked-thought (SFT with reasoning tokens masked in the input); cft (learn to "
        "write the teacher's critiques); dpo (on-policy pairs); distill (teacher logits); grpo (verifier reward).")
    sft_first: bool = Field(True, description="dpo and grpo: train sft on the round's data first and start "
                            "from that model, as the DPO and GRPO papers do.")
    adapter: Literal["lora", "hft", "full"] = Field(
        "lora", description="lora (peft); hft: Half Fine-Tuning, a seeded random half of each layer's "
        "parameter groups frozen per round; full: every weight.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate (linear decay); "
                                        "empty: 1e-3 for lora, 2e-4 for hft, 5e-5 for full.")
    batch_size: int = Field(8, gt=0, description="Examples per optimizer step.")
    max_length: int = Field(512, gt=8, description="Tokens per example; longer ones are truncated.")
    packing: Literal["padding-free", "bfd", "none"] = Field(
        "padding-free", description="padding-free: a batch's examples are laid end to end in one row with "
        "restarting position ids (no padding, no attention across examples); bfd: TRL's best-fit packing into "
        "rows of max_length; none: padded, length-bucketed batches.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rslora).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    lora_targets: str = Field("all-linear", description="Modules LoRA wraps (peft target_modules).")
    rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha / sqrt(r).")
    mask_ratio: float = Field(0.2, ge=0, lt=1, description="masked-thought: fraction of answer tokens replaced "
                              "in the input (the targets stay).")
    cft_ratio: float = Field(1.0, gt=0, le=1, description="cft: share of critique examples in the mix; "
                             "the rest are plain SFT examples (1.0: critiques only).")
    cft_candidates: int = Field(2, ge=1, description="cft: student samples per input to be critiqued, besides "
                                "the teacher's answer.")
    rl_learning_rate: float | None = Field(None, gt=0, description="dpo and grpo: peak learning rate; empty: "
                                           "5e-5 for lora, 1e-6 for hft and full (preference and RL updates "
                                           "move far at SFT rates).")
    dpo_beta: float = Field(0.1, gt=0, description="dpo: strength of the pull toward the reference model.")
    dpo_samples: int = Field(4, ge=1, description="dpo: student samples per input searched for a wrong answer.")
    distill_teacher: str = Field("", description="distill: the teacher model (a directory or tiny:SEED) whose "
                                 "logits are learned; it must share the student's tokenizer. Empty: "
                                 "sequence-level distillation (SFT on the teacher's answers).")
    distill_loss: Literal["forward-kl", "reverse-kl", "gkd"] = Field(
        "forward-kl", description="distill: forward-kl (teacher-forced, mean-seeking), reverse-kl (on the "
        "student's own samples, mode-seeking), gkd (generalized JSD on a mix of both).")
    distill_lambda: float = Field(0.5, ge=0, le=1, description="distill gkd: share of batches generated by the "
                                  "student (on-policy).")
    distill_beta: float = Field(0.5, ge=0, le=1, description="distill gkd: interpolation of the generalized JSD.")
    grpo_generations: int = Field(4, ge=2, description="grpo: completions sampled per prompt.")
    grpo_max_completion: int = Field(96, ge=1, description="grpo: longest completion sampled.")
    grpo_max_steps: int = Field(50, description="grpo: optimizer steps of the grpo stage (-1: train.epochs); "
                                "each step samples batch_size x grpo_generations completions.")
    grpo_beta: float = Field(0.0, ge=0, description="grpo: KL penalty to the reference (0: none, as in DAPO).")
    data_order: Literal["shuffled", "as-given"] = Field(
        "shuffled", description="as-given: batches follow the data file's order (a curriculum step sets it); "
        "shuffled: a seeded shuffle each epoch.")
    save_steps: int = Field(50, gt=0, description="Checkpoint every this many steps; a killed run resumes "
                            "from the last one.")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"],
                                 description="Where the Trainer logs: tensorboard, wandb, none.")
    seed: int = Field(0, description="Seed for data order, initialization and the HFT selection.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when one is there.")


MetricName = Literal["exact", "numeric", "json", "regex", "rouge-l", "code"]


class MetricConfig(Strict):
    name: MetricName = Field("exact", description="exact: normalized string match; numeric: the last number; "
                             "json: field match of JSON objects; regex: the answer matches a pattern; rouge-l: "
                             "ROUGE-L F1 against the reference; code: the answer's code passes the item's tests.")
    ignore_case: bool = Field(True, description="exact: compare case-insensitively.")
    ignore_punctuation: bool = Field(False, description="exact: drop punctuation before comparing.")
    ignore_articles: bool = Field(False, description="exact: drop the articles a, an, the (SQuAD style).")
    tolerance: float = Field(1e-6, ge=0, description="numeric: absolute tolerance.")
    relative_tolerance: float = Field(0.0, ge=0, description="numeric: relative tolerance (either one passes).")
    fields: list[str] = Field(default_factory=list, description="json: the fields compared (empty: every "
                              "field of the reference); the item scores the share of fields that match.")
    all_fields: bool = Field(False, description="json: score 1 only when every field matches (else the share).")
    pattern: str = Field("", description="regex: the pattern the answer must match (re.search); {reference} "
                         "in it is replaced by the escaped reference. Empty: the reference is the pattern.")
    timeout: float = Field(5.0, gt=0, description="code: seconds one program may run.")
    memory_mb: int = Field(512, gt=0, description="code: address-space limit of one program, in MiB.")
    k: list[int] = Field(default_factory=lambda: [1], description="Report pass@k for these k "
                         "(needs eval.samples >= k).")

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        # a broken pattern must stop the run before training, not at the first evaluation
        try:
            re.compile(value.replace("{reference}", ""))
        except re.error as exc:
            raise ValueError(f"invalid pattern {value!r}: {exc}") from None
        return value


class EvalConfig(Strict):
    batch_size: int = Field(64, gt=0, description="Prompts generated together (more is faster on a CPU; "
                            "the KV cache grows with it).")
    max_new_tokens: int = Field(32, gt=0, description="Longest answer generated.")
    dev_size: int = Field(40, ge=0, description="Teacher-labeled items held out to decide when to stop.")
    samples: int = Field(1, ge=1, description="Answers sampled per test item (pass@k needs k of them); "
                         "1: one greedy answer.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature when samples > 1.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the bootstrap confidence intervals.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples per interval.")


class JudgeConfig(Strict):
    mode: Literal["none", "pointwise", "pairwise", "both"] = Field(
        "none", description="none; pointwise: the judge scores each answer 1-10 with the rubric; pairwise: "
        "student against teacher, asked in both orders, a win counted only when both orders agree; both.")
    teacher: TeacherConfig | None = Field(None, description="Who judges; empty: the task's teacher.")
    rubric: str = Field("Correctness first, then completeness, then clarity and format as the task asks.",
                        description="What the judge weighs (pointwise and pairwise).")
    items: int = Field(0, ge=0, description="Test items judged (0: all).")


class ForgettingConfig(Strict):
    enabled: bool = Field(True, description="Run the general-ability probe and perplexity on the base and on "
                          "every round's student.")
    probe_items: int = Field(0, ge=0, description="Probe items used, a fixed seeded sample (0: all).")
    categories: list[str] = Field(default_factory=list, description="Probe categories used (empty: all): "
                                  "instruction, knowledge, arithmetic, format.")
    perplexity: bool = Field(True, description="Also measure perplexity on the held-out general text.")
    max_new_tokens: int = Field(48, gt=0, description="Longest probe answer generated.")
    limit: float | None = Field(None, ge=0, le=1, description="Most probe accuracy the student may lose "
                                "against its base (0.05 = 5 points); rounds over it are never kept and "
                                "stop the loop. Empty: no limit.")


class MergeSweepConfig(Strict):
    strengths: list[float] = Field(default_factory=list, description="Merge the kept student back toward its "
                                   "base at each of these strengths (base + s * (student - base), 0 < s < 1) and "
                                   "keep the one best on dev inside forgetting.limit. Empty: no sweep.")
    method: Literal["task_arithmetic", "lines", "dare", "ties", "breadcrumbs"] = Field(
        "task_arithmetic", description="Merge method of the sweep; lines scales shallow layers down more.")
    params: dict[str, int | float] = Field(default_factory=dict, description="The method's parameters (e.g. "
                                     "lines: alpha, beta; dare: density, seed).")

    @field_validator("strengths")
    @classmethod
    def _strictly_between(cls, value: list[float]) -> list[float]:
        if any(not 0 < s < 1 for s in value):
            raise ValueError("every strength must be between 0 and 1 (1 is the student itself)")
        return sorted(set(value), reverse=True)


class ExportConfig(Strict):
    formats: list[Literal["hf", "adapter", "gguf"]] = Field(default_factory=list, description="What `protege run` "
                                                             "writes of the kept student to RUN/export at the end: "
                                                             "hf (merged safetensors), adapter (peft), gguf. "
                                                             "Empty: nothing (protege export RUN does it later).")
    gguf_dtype: Literal["f32", "f16", "q8_0"] = Field("f16", description="GGUF tensor type.")


class BudgetConfig(Strict):
    requests: int = Field(2000, ge=0, description="Teacher requests the synthesis may make (cache hits count).")
    tokens: int | None = Field(None, ge=0, description="Teacher tokens (prompt + completion, cache hits count) "
                               "the run may use over every stage that asks the task's teacher (synthesis, "
                               "critique, the teacher's own evaluation, judging); once spent, no more "
                               "requests go out (the last batch may pass it by a little). Empty: no limit.")


class TaskSpec(Strict):
    name: str = Field("task", description="Name of the task; the default run directory is runs/NAME.")
    instruction: str = Field("", description="What the student must do; sent as the system message.")
    seeds: list[Example] | str = Field(default_factory=list,
                                       description="Labeled examples, inline or a JSONL file of {input, output}.")
    inputs: list[str] | str = Field(default_factory=list,
                                    description="Unlabeled inputs, inline or a JSONL file of {input}.")
    test: list[Example] | str = Field(default_factory=list,
                                      description="Held-out test set, inline or a JSONL file of {input, output}.")
    metric: MetricConfig = Field(default_factory=MetricConfig, description="How answers are scored: a name "
                                 "(exact, numeric, json, regex, rouge-l, code) or a mapping with its options.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Who writes the data.")
    student: StudentConfig = Field(default_factory=StudentConfig, description="The model to train.")
    synth: SynthConfig = Field(default_factory=SynthConfig, description="How data is synthesized.")
    curate: CurateConfig = Field(default_factory=CurateConfig, description="How data is cleaned.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training options.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation options.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-as-judge scoring.")
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig,
                                         description="What the student loses of general ability.")
    merge: MergeSweepConfig = Field(default_factory=MergeSweepConfig, description="Trading task skill back "
                                    "for general ability after the last round.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Files written for other tools.")
    rounds: int = Field(2, ge=1, description="Most train/evaluate/augment rounds.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Teacher budget.")

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_by_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _needs_a_test_set(self) -> "TaskSpec":
        if not self.test:
            raise ValueError("a test set is required (field 'test')")
        return self


class LoadedTask:
    """A validated spec with its files read: what every stage works from."""

    def __init__(self, spec: TaskSpec, directory: Path, source: Path | None):
        self.spec, self.directory, self.source = spec, directory, source
        self.seeds: list[Example] = []
        self.inputs: list[str] = []
        self.test: list[Example] = []


def _line_index(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map every key path in a YAML document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            lines.update(_line_index(value, sub))
            lines[sub] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, path + (i,)))
    return lines


def _line_of(lines: dict[tuple, int], loc: tuple) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _user_loc(loc: tuple) -> tuple:
    # pydantic puts the union branch ("list[Example]", "str") into loc; the user never wrote those
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int"})))


def _field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in _user_loc(loc)) or "(document)"


def _first_error(exc: ValidationError, lines: dict[tuple, int], where: str) -> ConfigError:
    err = exc.errors()[0]
    message = err["msg"] if err["type"] != "extra_forbidden" else "unknown key"
    return ConfigError(f"{where}:{_line_of(lines, _user_loc(err['loc']))}: field '{_field_name(err['loc'])}': "
                       f"{message}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` pairs from the command line; the value is read as YAML (numbers, booleans)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: field '{item}': expected KEY=VALUE")
        path, raw = item.split("=", 1)
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: field '{path}': {part} is not a mapping")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return data


def read_yaml_mapping(text: str, where: str, expected: str) -> tuple[dict, dict[tuple, int]]:
    """A YAML document that must be a mapping, with the line of every key; `expected` says what the
    mapping holds, for the error when it is not one."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{where}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: field '(document)': expected a mapping of {expected}")
    return data, _line_index(node)


def parse_spec(text: str, where: str, overrides: list[str] = ()) -> tuple[TaskSpec, dict[tuple, int]]:
    data, lines = read_yaml_mapping(text, where, "task fields")
    data = apply_overrides(data, list(overrides))
    try:
        return TaskSpec.model_validate(data), lines
    except ValidationError as exc:
        raise _first_error(exc, lines, where) from None


def _read_jsonl(path: Path, where: str, line: int, field: str) -> list[Any]:
    from .runs import JSONLError, read_jsonl
    if not path.is_file():
        raise ConfigError(f"{where}:{line}: field '{field}': file not found: {path}")
    try:
        return read_jsonl(path)
    except JSONLError as exc:
        raise ConfigError(f"{exc.path}:{exc.line}: field '{field}': invalid JSON: {exc.msg}") from None


def _examples(value, task: LoadedTask, lines, field: str) -> list[Example]:
    if not isinstance(value, str):
        return list(value)
    path = task.directory / value
    rows = _read_jsonl(path, str(task.source), _line_of(lines, (field,)), field)
    try:
        return [Example.model_validate(r) for r in rows]
    except ValidationError as exc:
        raise ConfigError(f"{path}: field '{field}': {exc.errors()[0]['msg']} "
                          f"({_field_name(exc.errors()[0]['loc'])})") from None


def _inputs(value, task: LoadedTask, lines) -> list[str]:
    if not isinstance(value, str):
        return list(value)
    path = task.directory / value
    rows = _read_jsonl(path, str(task.source), _line_of(lines, ("inputs",)), "inputs")
    return [r["input"] if isinstance(r, dict) else str(r) for r in rows]


def task_file(target: str | Path) -> Path:
    path = Path(target)
    return path / "task.yaml" if path.is_dir() else path


def load_task(target: str | Path, overrides: list[str] = ()) -> LoadedTask:
    """Read and validate a task: a directory holding task.yaml, or the YAML file itself."""
    path = task_file(target)
    if not path.is_file():
        raise ConfigError(f"{path}:1: field '(document)': task file not found")
    spec, lines = parse_spec(path.read_text(encoding="utf-8"), str(path), overrides)
    task = LoadedTask(spec, path.parent.resolve(), path)
    task.seeds = _examples(spec.seeds, task, lines, "seeds")
    task.inputs = _inputs(spec.inputs, task, lines)
    task.test = _examples(spec.test, task, lines, "test")
    if not task.test:
        raise ConfigError(f"{path}:{_line_of(lines, ('test',))}: field 'test': the test set is empty")
    return task
