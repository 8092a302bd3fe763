"""SL-CAI data: initial response, then rounds of critique and revision under drawn principles.

Departures from the paper, and why:
- Each round critiques the latest revision in a fresh context (demonstrations, prompt,
  latest response) instead of appending to one ever-growing transcript: contexts stay
  short enough for small models and every step of a chunk is one batched call.
- Demonstrations are chat turns before the real conversation (the paper pasted them as
  plain text), since instruction-tuned models follow their own chat format best.
- Principles are drawn with a generator seeded by (seed, prompt id), so the draw does
  not depend on chunking or the number of processes.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from cai.constitution import Constitution, CritiquePrinciple, Demonstration
from cai.fingerprint import digest
from cai.prompt_sources import Prompt

Messages = list[dict[str, str]]

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


def demonstration_turns(constitution: Constitution, demos: list[Demonstration]) -> Messages:
    """Each worked example as the chat turns of a complete critique-revision exchange."""
    turns: Messages = []
    for demo in demos:
        principle = constitution.critique(demo.principle_id)
        turns += [
            {"role": "user", "content": demo.prompt},
            {"role": "assistant", "content": demo.response},
            {"role": "user", "content": principle.critique_request},
            {"role": "assistant", "content": demo.critique},
            {"role": "user", "content": principle.revision_request},
            {"role": "assistant", "content": demo.revision},
        ]
    return turns


def response_messages(prompt: str) -> Messages:
    return [{"role": "user", "content": prompt}]


def critique_messages(demos: Messages, prompt: str, response: str, principle: CritiquePrinciple) -> Messages:
    return demos + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": principle.critique_request},
    ]


def revision_messages(demos: Messages, prompt: str, response: str, principle: CritiquePrinciple, critique: str) -> Messages:
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


def plan_chains(prompts: list[Prompt], constitution: Constitution, *, rounds: int, few_shot: int, per_round: bool, seed: int) -> list[ChainPlan]:
    plans = []
    for prompt in prompts:
        rng = principle_rng(seed, prompt.id)
        if prompt.kind != "red_team":
            plans.append(ChainPlan(prompt, [], []))
            continue
        principles = constitution.sample_critiques(rng, rounds, per_round=per_round)
        demos = demonstration_turns(constitution, pick_demonstrations(constitution, few_shot, rng))
        plans.append(ChainPlan(prompt, principles, demos))
    return plans


def run_chains(plans: list[ChainPlan], complete: Any, *, constitution_hash: str) -> tuple[list[dict[str, Any]], int]:
    """Run all chains of a chunk step by step; `complete(list[Messages], desc)` batches one step.

    Returns the records and how many revisions came back empty after cleaning (kept as the
    previous response, so a bad generation never blanks a training target).
    """
    responses = [clean_text(t) for t in complete([response_messages(p.prompt.prompt) for p in plans], "response")]
    current = list(responses)
    rounds: list[list[Round]] = [[] for _ in plans]
    empty = 0
    max_rounds = max((len(p.principles) for p in plans), default=0)
    for index in range(max_rounds):
        active = [i for i, p in enumerate(plans) if index < len(p.principles)]
        critiques = complete(
            [critique_messages(plans[i].demos, plans[i].prompt.prompt, current[i], plans[i].principles[index]) for i in active],
            f"critique {index + 1}/{max_rounds}",
        )
        critiques = [clean_text(c) for c in critiques]
        revisions = complete(
            [revision_messages(plans[i].demos, plans[i].prompt.prompt, current[i], plans[i].principles[index], c) for i, c in zip(active, critiques)],
            f"revision {index + 1}/{max_rounds}",
        )
        for i, critique, revision in zip(active, critiques, revisions):
            revision = clean_text(revision)
            if not revision:
                empty += 1
                revision = current[i]
            rounds[i].append(Round(plans[i].principles[index].id, critique, revision))
            current[i] = revision
    records = []
    for plan, response, chain, final in zip(plans, responses, rounds, current):
        records.append(
            {
                "id": plan.prompt.id,
                "prompt": plan.prompt.prompt,
                "kind": plan.prompt.kind,
                "category": plan.prompt.category,
                "response": response,
                "rounds": [{"principle_id": r.principle_id, "critique": r.critique, "revision": r.revision} for r in chain],
                "revision": final,
                "constitution_hash": constitution_hash,
            }
        )
    return records, empty


def sft_examples(records: list[dict[str, Any]], *, helpful_per_red_team: float, all_rounds: bool, seed: int) -> list[dict[str, Any]]:
    """Prompt-completion chat pairs: revisions of red-team prompts plus a helpful mix.

    The paper fine-tuned on the revisions of every round; `all_rounds` does that, otherwise
    only the final revision is a target (what open recipes do).
    """
    examples = []
    for record in (r for r in records if r["kind"] == "red_team"):
        targets = [r["revision"] for r in record["rounds"]] if all_rounds and record["rounds"] else [record["revision"]]
        for target in dict.fromkeys(targets):  # identical revisions across rounds add nothing
            if target.strip():
                examples.append(_pair(record["prompt"], target, record["id"], "red_team"))
    red_team_count = len(examples)
    helpful = [r for r in records if r["kind"] == "helpful" and r["response"].strip()]
    random.Random(seed).shuffle(helpful)
    wanted = int(round(helpful_per_red_team * red_team_count)) if red_team_count else len(helpful)
    examples += [_pair(r["prompt"], r["response"], r["id"], "helpful") for r in helpful[:wanted]]
    return examples


def _pair(prompt: str, completion: str, record_id: str, kind: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "kind": kind,
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }
