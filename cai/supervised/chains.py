"""SL-CAI data: initial response, then rounds of critique and revision under drawn principles.

Departures from the paper, and why:
- Each round critiques the latest revision in a fresh context (demonstrations, prompt,
  latest response) instead of appending to one ever-growing transcript: contexts stay
  short enough for small models and every step of a chunk is one batched call.
- Demonstrations are chat turns before the real conversation (the paper pasted them as
  plain text), since instruction-tuned models follow their own chat format best.
- Principles are drawn with a generator seeded by (seed, prompt id), so the draw does
  not depend on chunking or the number of processes; `sl.principle_selection: category`
  draws among the principles that declare the prompt's harm category (the paper draws from
  all, so a racism critique of a car-stunt answer finds nothing to say).
- Every revision passes named quality gates (`gates.py`) before it can be a training
  target; the paper trained on all of them. Small critics parrot the requests, comment on
  "the response" or loop, and training on that teaches nothing.
- `sl.revision_mode: context_distillation` asks for a new *answer* to the request with the
  principle and the critique in a system turn (optionally starting from the principle's
  `revision_opening`), instead of a rewrite of the old one; SFT then sees the bare request,
  so the principle is distilled into the policy. Small models answer a request far better
  than they follow "rewrite your response" (measured in docs/sl_quality.md).
- `sl.revision_sentences` keeps only the first sentences written after the opening: a small
  model's decline rambles on into text that is neither a reason nor help, and SFT copies it.
- `sl.revision_samples` > 1 samples several revisions and keeps the gate-passing one whose
  likelihood rises most when the principle is in context (best-of-n; not in the paper).
- `sl.critique: false` skips the critique and revises from the principle alone: the paper's
  "direct revisions" (its section 3.5), one generation fewer per round. A 135M critic's
  critiques are mostly off the point, so on small models they cost time and add little
  (measured in docs/sl_quality.md).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cai.config import GatesConfig
from cai.constitution import Constitution, CritiquePrinciple, Demonstration
from cai.fingerprint import digest
from cai.prompt_sources import Prompt
from cai.supervised.gates import first_sentences, helpful_failures, revision_failures, trim_to_last_sentence

Messages = list[dict[str, str]]
NO_ROUND = -1  # target_round of a record without a training target

LEAKED_PREFIXES = re.compile(
    r"^\s*(?:(?:assistant|revision|revised response|revised answer|critique|response|answer|here is (?:the|my) revised response)\s*:\s*)+",
    re.IGNORECASE,
)
TURN_MARKERS = re.compile(r"(?:<\|im_start\|>|<\|im_end\|>|\n\s*(?:human|user|critique request|revision request)\s*:)", re.IGNORECASE)
ROLE_LINE = re.compile(r"^\s*(?:assistant|user|system)\s*\n", re.IGNORECASE)


@dataclass(frozen=True)
class Round:
    principle_id: str
    critique: str
    revision: str


def principle_rng(seed: int, prompt_id: str) -> random.Random:
    """A per-prompt generator: the same draw whatever the chunking or process count."""
    return random.Random(f"{seed}:{prompt_id}")


def pick_demonstrations(constitution: Constitution, count: int, rng: random.Random) -> list[Demonstration]:
    demos = list(constitution.few_shot)
    if count <= 0 or not demos:
        return []
    return rng.sample(demos, min(count, len(demos)))


def demonstration_turns(constitution: Constitution, demos: list[Demonstration], *, critique: bool = True) -> Messages:
    """Each worked example as the chat turns of a complete exchange (without its critique for direct revisions)."""
    turns: Messages = []
    for demo in demos:
        principle = constitution.critique(demo.principle_id)
        turns += [{"role": "user", "content": demo.prompt}, {"role": "assistant", "content": demo.response}]
        if critique:
            turns += [{"role": "user", "content": principle.critique_request}, {"role": "assistant", "content": demo.critique}]
        turns += [{"role": "user", "content": principle.revision_request}, {"role": "assistant", "content": demo.revision}]
    return turns


def response_messages(prompt: str) -> Messages:
    return [{"role": "user", "content": prompt}]


def critique_messages(demos: Messages, prompt: str, response: str, principle: CritiquePrinciple) -> Messages:
    return demos + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": principle.critique_request},
    ]


def revision_messages(demos: Messages, prompt: str, response: str, principle: CritiquePrinciple, critique: str | None) -> Messages:
    """The revision request after the critique exchange, or straight after the response (a direct revision)."""
    if critique is None:
        return demos + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}, {"role": "user", "content": principle.revision_request}]
    return critique_messages(demos, prompt, response, principle) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision_request},
    ]


def clean_text(text: str) -> str:
    """Strip what small models leak: role markers, 'Revision:' prefixes, a continued next turn."""
    text = ROLE_LINE.sub("", text)
    marker = TURN_MARKERS.search(text)
    if marker:
        text = text[: marker.start()]
    text = LEAKED_PREFIXES.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return re.sub(r"[ \t]+", " ", text).strip()


def prompt_set_hash(prompts: list[Prompt]) -> str:
    joined = "\n".join(f"{p.kind}\t{p.id}\t{p.prompt}" for p in prompts)
    return digest(joined)


@dataclass
class ChainPlan:
    """Everything drawn for one prompt before any generation: reproducible and process-independent."""

    prompt: Prompt
    principles: list[CritiquePrinciple]
    demos: Messages
    rules: list[str] = field(default_factory=list)  # per round: how its principle was drawn


def draw_principles(constitution: Constitution, prompt: Prompt, rng: random.Random, *, rounds: int, per_round: bool, selection: str) -> tuple[list[CritiquePrinciple], list[str]]:
    """The principle of each round and the rule that drew it ("random" or "category").

    `category` draws among the principles that declare the prompt's category; a prompt with
    no category, or one no principle declares, falls back to the paper's random draw.
    """
    fitting = constitution.critiques_for(prompt.category) if selection == "category" else []
    if not fitting:
        return constitution.sample_critiques(rng, rounds, per_round=per_round), ["random"] * rounds
    if per_round:
        return [rng.choice(fitting) for _ in range(rounds)], ["category"] * rounds
    return [rng.choice(fitting)] * rounds, ["category"] * rounds


def plan_chains(prompts: list[Prompt], constitution: Constitution, *, rounds: int, few_shot: int, per_round: bool, seed: int, selection: str = "random", critique: bool = True) -> list[ChainPlan]:
    plans = []
    for prompt in prompts:
        rng = principle_rng(seed, prompt.id)
        if prompt.kind != "red_team":
            plans.append(ChainPlan(prompt, [], []))
            continue
        principles, rules = draw_principles(constitution, prompt, rng, rounds=rounds, per_round=per_round, selection=selection)
        demos = demonstration_turns(constitution, pick_demonstrations(constitution, few_shot, rng), critique=critique)
        plans.append(ChainPlan(prompt, principles, demos, rules))
    return plans


def distillation_system(principle: CritiquePrinciple, critique: str | None) -> str:
    """The system turn of a context-distillation revision: the principle (and the critique, when written), then "answer"."""
    review = "" if critique is None else f' A reviewer read an earlier draft of your answer and said: "{critique}"'
    return f"You are answering the user's message below.{review}\nWhat your answer must do: {principle.revision_request}\nWrite only your answer to the user."


def distillation_messages(prompt: str, principle: CritiquePrinciple, critique: str | None) -> Messages:
    """The request again, with principle and critique in context; SFT later trains without them."""
    return [{"role": "system", "content": distillation_system(principle, critique)}, {"role": "user", "content": prompt}]


def parrot_references(constitution: Constitution, principle: CritiquePrinciple, critique: str | None) -> list[str]:
    """Texts a revision must not repeat back: the principle's requests, the critique, every demonstration."""
    demos = [text for d in constitution.few_shot for text in (d.prompt, d.response, d.critique, d.revision)]
    return [principle.critique_request, principle.revision_request, *([critique] if critique else []), *demos]


class Completer(Protocol):
    """Batched chat completion for one step of every chain in a chunk (see supervised/stages.py)."""

    def __call__(self, conversations: list[Messages], desc: str, *, openings: list[str] | None = None, keys: list[str] | None = None) -> list[str]:
        """Greedy (or `generation.temperature`) completions; with `keys`, samples seeded by each key."""
        ...


Scorer = Callable[[list[str], list[str], list[str]], list[float]]  # (requests, principle turns, texts) -> scores


@dataclass
class ChainSettings:
    """What `run_chains` needs from `sl` besides the plans (kept small so tests can build it)."""

    revision_mode: str = "critique_revision"
    revision_samples: int = 1
    gates: GatesConfig = field(default_factory=GatesConfig)
    critique: bool = True
    revision_sentences: int | None = None

    @classmethod
    def from_config(cls, sl: Any) -> ChainSettings:
        return cls(revision_mode=sl.revision_mode, revision_samples=sl.revision_samples, gates=sl.gates, critique=sl.critique, revision_sentences=sl.revision_sentences)


def prepare(text: str, gates: GatesConfig) -> str:
    """Clean a generation and, when asked, cut its unfinished last sentence."""
    text = clean_text(text)
    return trim_to_last_sentence(text) if gates.trim_unfinished else text


def join_opening(opening: str, continuation: str) -> str:
    if not opening:
        return continuation
    glue = "" if not continuation or continuation[0] in ",.;:!?'" or opening.endswith((" ", "\n")) else " "
    return opening + glue + continuation


def run_chains(plans: list[ChainPlan], complete: Completer, *, constitution: Constitution, settings: ChainSettings, scorer: Scorer | None = None) -> list[dict[str, Any]]:
    """Run all chains of a chunk step by step, gating every revision; returns one record per plan.

    A round's revision is accepted when it passes every gate (`gates.enabled`); a rejected
    one is recorded with its reasons and the next round revises the last accepted text, so
    a chain's `target` is its latest accepted revision, or null when none passed (the prompt
    is then left out of SFT). With `revision_samples` > 1, each round samples that many
    revisions and keeps the gate-passing one the scorer rates highest.
    """
    gates = settings.gates
    responses = [clean_text(t) for t in complete([response_messages(p.prompt.prompt) for p in plans], "response")]
    current = list(responses)
    accepted_round: list[int | None] = [None] * len(plans)
    rounds: list[list[dict[str, Any]]] = [[] for _ in plans]
    max_rounds = max((len(p.principles) for p in plans), default=0)
    for index in range(max_rounds):
        active = [i for i, p in enumerate(plans) if index < len(p.principles)]
        principles = [plans[i].principles[index] for i in active]
        critiques: list[str | None] = [None] * len(active)
        if settings.critique:
            written = complete(
                [critique_messages(plans[i].demos, plans[i].prompt.prompt, current[i], principle) for i, principle in zip(active, principles)],
                f"critique {index + 1}/{max_rounds}",
            )
            critiques = [clean_text(c) for c in written]
        candidates = _revise(plans, active, principles, critiques, current, complete, settings, index, max_rounds)
        scores = _score(plans, active, principles, current, candidates, scorer) if settings.revision_samples > 1 else None
        for position, (i, principle, critique) in enumerate(zip(active, principles, critiques)):
            references = parrot_references(constitution, principle, critique)
            options = []
            for number, text in enumerate(candidates[position]):
                failures = revision_failures(text, response=current[i], references=references, thresholds=gates) if gates.enabled else (["empty"] if not text.strip() else [])
                options.append({"text": text, "failures": join_gates(failures), "score": 0.0 if scores is None else scores[position][number + 1]})
            passing = [o for o in options if not o["failures"]]
            best = max(passing, key=lambda o: o["score"]) if passing else options[0]
            step = {
                "principle_id": principle.id,
                "principle_rule": plans[i].rules[index] if index < len(plans[i].rules) else "random",
                "critique": critique,
                "revision": best["text"],
                "accepted": not best["failures"],
                "failures": best["failures"],
            }
            if scores is not None:
                step["margin"] = best["score"] - scores[position][0]
                step["candidates"] = options
            rounds[i].append(step)
            if step["accepted"]:
                current[i] = best["text"]
                accepted_round[i] = index
    records = []
    for number, (plan, response, chain) in enumerate(zip(plans, responses, rounds)):
        record = {
            "id": plan.prompt.id,
            "prompt": plan.prompt.prompt,
            "kind": plan.prompt.kind,
            "category": plan.prompt.category,
            "response": response,
            "rounds": chain,
            "revision": chain[-1]["revision"] if chain else response,
            "revision_mode": settings.revision_mode,
            "constitution_hash": constitution.content_hash,
        }
        record.update(_target(plan, response, chain, accepted_round[number], gates))
        records.append(record)
    return records


def _revise(plans, active, principles, critiques, current, complete, settings, index, max_rounds) -> list[list[str]]:
    """`revision_samples` revisions per active chain (one greedy one when it is 1)."""
    if settings.revision_mode == "context_distillation":
        conversations = [distillation_messages(plans[i].prompt.prompt, p, c) for i, p, c in zip(active, principles, critiques)]
        openings = [p.revision_opening for p in principles]
    else:
        conversations = [revision_messages(plans[i].demos, plans[i].prompt.prompt, current[i], p, c) for i, p, c in zip(active, principles, critiques)]
        openings = [""] * len(active)
    samples = settings.revision_samples
    desc = f"revision {index + 1}/{max_rounds}"
    if samples == 1:
        texts = complete(conversations, desc, openings=openings)
        return [[prepare(join_opening(o, first_sentences(t, settings.revision_sentences)), settings.gates)] for o, t in zip(openings, texts)]
    keys = [f"{plans[i].prompt.id}:round{index}:sample{s}" for i in active for s in range(samples)]
    texts = complete([c for c in conversations for _ in range(samples)], f"{desc} x{samples}", openings=[o for o in openings for _ in range(samples)], keys=keys)
    joined = [prepare(join_opening(o, first_sentences(t, settings.revision_sentences)), settings.gates) for o, t in zip([o for o in openings for _ in range(samples)], texts)]
    return [joined[k * samples : (k + 1) * samples] for k in range(len(active))]


def _score(plans, active, principles, current, candidates, scorer: Scorer | None) -> list[list[float]]:
    """Per active chain: [score of the text being revised, score of each candidate]."""
    if scorer is None:
        raise ValueError("run_chains: revision_samples > 1 needs a scorer")
    requests, turns, texts, shape = [], [], [], []
    for i, principle, options in zip(active, principles, candidates):
        group = [current[i], *options]
        shape.append(len(group))
        requests += [plans[i].prompt.prompt] * len(group)
        turns += [principle.revision_request] * len(group)
        texts += group
    flat = scorer(requests, turns, texts)
    out, start = [], 0
    for size in shape:
        out.append(flat[start : start + size])
        start += size
    return out


def join_gates(failures: list[str]) -> str:
    """Gate names as one string ("" when accepted): records keep one JSON type per field, so
    `datasets.load_dataset("json", ...)` reads shards whose first file has no rejection at all."""
    return ",".join(failures)


def gate_names(joined: str) -> list[str]:
    return joined.split(",") if joined else []


def _target(plan: ChainPlan, response: str, chain: list[dict[str, Any]], accepted: int | None, gates: GatesConfig) -> dict[str, Any]:
    """What SFT may train on: the latest accepted revision (red team) or the gated response (helpful); "" for none."""
    if plan.prompt.kind != "red_team":
        text = prepare(response, gates)
        failures = helpful_failures(text, gates) if gates.enabled else ([] if text.strip() else ["empty"])
        return {"target": "" if failures else text, "target_round": NO_ROUND, "rejected_reasons": join_gates(failures)}
    if accepted is None:
        return {"target": "", "target_round": NO_ROUND, "rejected_reasons": chain[-1]["failures"] if chain else "empty"}
    return {"target": chain[accepted]["revision"], "target_round": accepted, "rejected_reasons": ""}


def sft_examples(records: list[dict[str, Any]], *, helpful_per_red_team: float | None, all_rounds: bool, seed: int) -> list[dict[str, Any]]:
    """Prompt-completion chat pairs: accepted revisions of red-team prompts plus a helpful mix.

    Only texts that passed the gates (`target`, or accepted rounds) are used; in
    context-distillation mode the pair is the bare request and the revision, without the
    system turn that produced it. The paper fine-tuned on the revisions of every round;
    `all_rounds` does that (accepted ones only), otherwise only the chain's target is used.
    """
    examples = []
    for record in (r for r in records if r["kind"] == "red_team" and r.get("target")):
        targets = [step["revision"] for step in record["rounds"] if step.get("accepted")] if all_rounds else [record["target"]]
        for target in dict.fromkeys(targets):  # identical revisions across rounds add nothing
            examples.append(_pair(record["prompt"], target, record["id"], "red_team"))
    red_team_count = len(examples)
    helpful = [r for r in records if r["kind"] == "helpful" and r.get("target")]
    random.Random(seed).shuffle(helpful)
    wanted = int(round(helpful_per_red_team * red_team_count)) if red_team_count and helpful_per_red_team is not None else len(helpful)
    examples += [_pair(r["prompt"], r["target"], r["id"], "helpful") for r in helpful[:wanted]]
    return examples


def _pair(prompt: str, completion: str, record_id: str, kind: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "kind": kind,
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }
