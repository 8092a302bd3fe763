"""The `grow` stage: Self-Instruct bootstrapping of red-team and helpful prompt pools.

Each round draws few-shot blocks from the pool (seed and generated items), asks the model
for new items, parses and filters the answers, and adds the survivors to the pool, until
`target_new` items were added or `max_rounds` ran out. Departures from the paper (Wang et
al. 2022, arXiv 2212.10560), and why:
- With `request_format: chat` (the default) the instruction is the user turn and the
  numbered examples are already written into the assistant turn, so an instruction-tuned
  model continues the list instead of answering the examples; `completion` sends the raw
  text, as the paper did with a base GPT-3.
- A response's last line without closing punctuation is taken as cut off by
  `max_new_tokens` and dropped (`truncated`); at most `new_per_request` items are taken
  from one response (`over_limit`), as the paper read at most up to instruction 16.
- A round in which no response holds one well-formed request is an error (the model
  cannot do the task); rounds that only repeat the pool are not, but `max_empty_rounds` of
  them in a row end the run early.
- Generation is sharded over processes and gathered on all of them; every process then
  filters the same outputs the same way, so the pool needs no broadcast and is identical
  on 1 or N processes for the same generated text (always so under greedy decoding; sampled
  text depends on how `cai.generation` batches requests, so it may differ across N).
Each round's survivors are one atomic shard under `pool_rounds/<kind>/`, so a relaunch
continues after the last finished round; the pool files are assembled from the seeds and
the shards at the end.
"""

from __future__ import annotations

import json
import random
import time
import typing
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from cai import layout
from cai.config import (
    PoolKind,
    PromptsRunConfig,
    RequestFormat,
    SelfInstructConfig,
    check_choice,
)
from cai.errors import CaiError
from cai.fingerprint import fingerprint
from cai.prompt_sources import read_jsonl
from cai.run_store import RunStore, atomic_write_text, check_same_inputs
from cai.self_instruct.filters import (
    CATEGORY_KEYWORDS,
    DEFAULT_BLOCKLIST,
    FILTER_ORDER,
    KINDS,
    Candidate,
    FilterSettings,
    Pool,
    build_fewshot_request,
    filter_candidates,
    normalize,
    parse_candidates,
    sample_fewshot,
)
from cai.self_instruct.rouge import RougeIndex, max_similarities

ROUNDS_DIR = layout.ROUNDS
POOL_FILES = layout.POOL_FILES
ID_PREFIXES = {"red_team": "rt-gen", "helpful": "hp-gen"}
KIND_CHOICES = typing.get_args(PoolKind)
REQUEST_FORMATS = typing.get_args(RequestFormat)
# stage -> the outputs it owns (set aside, never deleted, when the stage is forced)
# Counted per round, in the order a candidate meets them; the first two act before `filter_candidates`.
COUNT_ORDER = ("truncated", "over_limit", *FILTER_ORDER)
# A candidate removed by one of these was not a well-formed request at all.
MALFORMED = ("truncated", "too_short", "too_long", "garbage", "repetition", "not_request")
CLOSING = tuple(".?!\"')]}\u201d\u2019*")

# complete(request texts, label) -> outputs; the label ("red_team round 3") names the round, for seeding and progress.
Complete = Callable[[Sequence[str], str], list[str]]


@dataclass
class Request:
    """One request to the model and the pool items it showed."""

    text: str
    fewshot_ids: list[str]


@dataclass
class KindPool:
    """One pool (red-team or helpful) being grown: records, the sampling view and the ROUGE index."""

    kind: str
    records: list[dict[str, Any]]
    pool: Pool
    index: RougeIndex
    known_categories: list[str]
    item_ids: dict[int, str] = field(default_factory=dict)  # id(Candidate) -> item id, to name the examples shown

    @property
    def generated(self) -> int:
        return len(self.pool.generated)


# ------------------------------------------------------------------ settings and seeds


def selected_kinds(settings: SelfInstructConfig) -> list[str]:
    kind = check_choice(settings.kind, KIND_CHOICES, "self_instruct.kind")
    return list(KINDS) if kind == "both" else [kind]


def check_settings(settings: SelfInstructConfig) -> FilterSettings:
    """Every user mistake in `self_instruct.*` at once, before a model is loaded; returns the filter settings."""
    selected_kinds(settings)
    check_choice(settings.request_format, REQUEST_FORMATS, "self_instruct.request_format")
    for name in ("target_new", "max_rounds", "max_empty_rounds", "requests_per_round", "new_per_request", "num_workers"):
        if getattr(settings, name) < 1:
            raise CaiError(f"self_instruct.{name}: {getattr(settings, name)} is below 1; use 1 or more")
    for name in ("fewshot_seed", "fewshot_generated", "show_examples"):
        if getattr(settings, name) < 0:
            raise CaiError(f"self_instruct.{name}: {getattr(settings, name)} is negative; use 0 or more")
    if settings.fewshot_seed + settings.fewshot_generated < 1:
        raise CaiError("self_instruct.fewshot_seed: with fewshot_generated=0 it must be at least 1; the model needs examples (the paper: 6 + 2)")
    if settings.seed_limit is not None and settings.seed_limit < 1:
        raise CaiError(f"self_instruct.seed_limit: {settings.seed_limit} is below 1; use a positive number or null for all")
    for category, words in settings.category_keywords.items():
        if not isinstance(words, list) or not all(isinstance(word, str) and word.strip() for word in words):
            raise CaiError(f"self_instruct.category_keywords.{category}: expected a list of non-empty keywords, got {words!r}")
    try:
        return FilterSettings(
            min_words=settings.min_words,
            max_words=settings.max_words,
            rouge_threshold=settings.rouge_threshold,
            blocklist=DEFAULT_BLOCKLIST if settings.builtin_blocklist else (),
            extra_blocklist=tuple(settings.blocklist),
        )
    except CaiError as error:  # name the setting as the user types it
        raise CaiError(str(error).replace("self_instruct.filters.", "self_instruct.")) from None


def seed_path(settings: SelfInstructConfig, kind: str) -> str:
    return settings.seed_red_team if kind == "red_team" else settings.seed_helpful


def load_seeds(path: str, *, kind: str, limit: int | None, seed: int) -> list[dict[str, Any]]:
    """Seed items as pool records; every line needs `prompt` (and `category` for red-team), `id` is optional.

    A `limit` keeps a seeded random subset in file order.
    """
    setting = f"self_instruct.seed_{kind}"
    file = Path(path).expanduser()
    if file.suffix.lower() != ".jsonl":
        raise CaiError(f"{setting}: {path} is not a .jsonl file; seed pools are JSONL with 'prompt' (and 'category' for red-team) per line")
    if not file.is_file():
        raise CaiError(f"{setting}: seed file {path} not found; check the path")
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    reserved = ID_PREFIXES[kind] + "-"
    for number, row in read_jsonl(file, setting):
        required = ("prompt", "category") if kind == "red_team" else ("prompt",)
        for name in required:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                problem = "missing field" if name not in row else "empty or non-text field"
                raise CaiError(f"{setting}: {path}:{number}: {problem} {name!r}; every seed needs a non-empty {name!r}")
        item_id = str(row.get("id", f"{kind}-seed-{number:05d}"))
        if item_id in seen:
            raise CaiError(f"{setting}: {path}:{number}: duplicate id {item_id!r}; ids must be unique")
        if item_id.startswith(reserved):
            raise CaiError(f"{setting}: {path}:{number}: id {item_id!r} starts with {reserved!r}, which names generated items; rename it")
        seen.add(item_id)
        category = row.get("category")
        records.append(seed_record(item_id, row["prompt"], str(category).strip() if category else None))
    if not records:
        raise CaiError(f"{setting}: {path} holds no seed prompts; the pool needs at least one to imitate")
    if limit is not None and limit < len(records):
        keep = sorted(random.Random(f"{seed}/{kind}/seeds").sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    return records


def seed_record(item_id: str, prompt: str, category: str | None) -> dict[str, Any]:
    return {"id": item_id, "prompt": " ".join(prompt.split()), "category": category, "source": "seed", "round": 0, "fewshot_ids": []}


def pool_fingerprint(config: PromptsRunConfig, seeds: dict[str, list[dict[str, Any]]]) -> str:
    """What defines the pools: seeds, model, seed and the request/filter settings (not targets or batch sizes)."""
    settings = asdict(config.self_instruct)
    for name in ("target_new", "max_rounds", "max_empty_rounds", "num_workers", "show_examples", "seed_red_team", "seed_helpful"):
        settings.pop(name)
    payload = {"model": config.model, "seed": config.seed, "settings": settings, "seeds": seeds}
    return fingerprint(payload, sort_keys=True)


def category_keywords(settings: SelfInstructConfig) -> dict[str, list[str]]:
    """The user's table first (first match wins), then the built-in one for categories it does not name."""
    table = {name: list(words) for name, words in settings.category_keywords.items()}
    for name, words in CATEGORY_KEYWORDS.items():
        table.setdefault(name, list(words))
    return table


# ------------------------------------------------------------------ one pool, round by round


def start_pool(kind: str, seeds: list[dict[str, Any]], generated: list[dict[str, Any]]) -> KindPool:
    """The pool as it stood after the finished rounds: seeds plus the records of their shards."""
    state = KindPool(
        kind=kind,
        records=[],
        pool=Pool(seed=[]),
        index=RougeIndex(),
        known_categories=sorted({r["category"] for r in seeds if r["category"]}) if kind == "red_team" else [],
    )
    for record in [*seeds, *generated]:
        state.index.add(record["prompt"])
        add_record(state, record)
    return state


def add_record(state: KindPool, record: dict[str, Any]) -> None:
    """Into the records and the sampling view; the ROUGE index is the caller's (`filter_candidates` adds survivors)."""
    candidate = Candidate(record["prompt"], record["category"])
    (state.pool.seed if record["source"] == "seed" else state.pool.generated).append(candidate)
    state.item_ids[id(candidate)] = record["id"]
    state.records.append(record)


def plan_requests(state: KindPool, round_number: int, settings: SelfInstructConfig, seed: int) -> list[Request]:
    """The round's requests; the draw depends only on (seed, kind, round) and the pool, so a relaunch redraws it."""
    rng = random.Random(f"{seed}/{state.kind}/round-{round_number}")
    requests = []
    for _ in range(settings.requests_per_round):
        examples = sample_fewshot(state.pool, num_seed=settings.fewshot_seed, num_generated=settings.fewshot_generated, rng=rng)
        text = build_fewshot_request(examples, kind=state.kind, num_new=settings.new_per_request)
        requests.append(Request(text, [state.item_ids[id(example)] for example in examples]))
    return requests


def unfinished_last_line(text: str) -> str | None:
    """The response's last line when it lacks closing punctuation (cut off by the token limit), else None."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines or lines[-1].endswith(CLOSING):
        return None
    return lines[-1]


def parse_response(text: str, state: KindPool, settings: SelfInstructConfig, keywords: dict[str, list[str]]) -> tuple[list[Candidate], dict[str, int]]:
    """Candidates of one response, without a cut-off last item and beyond `new_per_request`."""
    candidates = parse_candidates(text, kind=state.kind, known_categories=state.known_categories, category_keywords=keywords)
    counts = {"truncated": 0, "over_limit": 0}
    last_line = unfinished_last_line(text)
    if candidates and last_line is not None and normalize(last_line).endswith(normalize(candidates[-1].text)):
        candidates.pop()
        counts["truncated"] = 1
    counts["over_limit"] = max(0, len(candidates) - settings.new_per_request)
    return candidates[: settings.new_per_request], counts


class _RoundStartScores:
    """`filter_candidates`' view of the pool when ROUGE-L against the round-start pool was computed in parallel.

    Equivalent to the index itself: some item scores >= threshold iff the best round-start
    item does or one added during this round does.
    """

    def __init__(self, index: RougeIndex, best: dict[str, float]):
        self.index = index
        self.best = best
        self.added = RougeIndex()

    def contains_normalized(self, text: str) -> bool:
        return self.index.contains_normalized(text) or self.added.contains_normalized(text)

    def any_above(self, text: str, threshold: float) -> bool:
        return self.best[text] >= threshold or self.added.any_above(text, threshold)

    def add(self, text: str) -> int:
        self.added.add(text)
        return self.index.add(text)


def filter_round(candidates: list[Candidate], index: RougeIndex, filters: FilterSettings, *, num_workers: int) -> tuple[list[Candidate], dict[str, int]]:
    """`filter_candidates`, with the ROUGE-L scores against the pool spread over `num_workers` processes."""
    if num_workers == 1 or len(candidates) < 2:
        return filter_candidates(candidates, index, filters)
    texts = list(dict.fromkeys(candidate.text for candidate in candidates))
    scores = max_similarities(texts, index, num_workers=num_workers)
    return filter_candidates(candidates, _RoundStartScores(index, {t: s for t, (s, _) in zip(texts, scores)}), filters)  # type: ignore[arg-type]


def accept_round(
    state: KindPool,
    round_number: int,
    requests: list[Request],
    outputs: list[str],
    settings: SelfInstructConfig,
    filters: FilterSettings,
    keywords: dict[str, list[str]],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Parse and filter a round's outputs; survivors become records (with provenance) and join the pool."""
    counts = dict.fromkeys(COUNT_ORDER, 0)
    candidates: list[Candidate] = []
    origins: list[Request] = []
    for request, output in zip(requests, outputs, strict=True):
        parsed, parse_counts = parse_response(output, state, settings, keywords)
        for name, value in parse_counts.items():
            counts[name] += value
        candidates += parsed
        origins += [request] * len(parsed)
    parsed_total = len(candidates) + counts["truncated"] + counts["over_limit"]
    origin_of = {id(candidate): request for candidate, request in zip(candidates, origins)}
    kept, filter_counts = filter_round(candidates, state.index, filters, num_workers=settings.num_workers)
    for name, value in filter_counts.items():
        counts[name] += value
    records = []
    for number, candidate in enumerate(kept):
        record = {
            "id": f"{ID_PREFIXES[state.kind]}-r{round_number:03d}-{number:03d}",
            "prompt": candidate.text,
            "category": candidate.category,
            "source": "generated",
            "round": round_number,
            "fewshot_ids": list(origin_of[id(candidate)].fewshot_ids),
        }
        add_record(state, record)
        records.append(record)
    return records, {"requests": len(requests), "candidates": parsed_total, "kept": len(records), **counts}


def well_formed(counts: dict[str, int]) -> int:
    """Candidates that read as a request (kept, or removed only for being blocked, a duplicate or too similar)."""
    return counts["candidates"] - counts["over_limit"] - sum(counts[name] for name in MALFORMED)


def grow(
    state: KindPool,
    *,
    settings: SelfInstructConfig,
    filters: FilterSettings,
    seed: int,
    complete: Callable[[], Complete],
    finished_rounds: dict[int, dict[str, int]],
    on_round: Callable[[int, list[dict[str, Any]], dict[str, int]], None],
    log: Callable[[str], None] = lambda line: None,
    where: str = ROUNDS_DIR,
) -> str:
    """Run rounds after the finished ones until the target, the round limit or too many empty rounds.

    `complete` is called once, only if a round is left to run; `on_round(round, records,
    counts)` must persist the round (the shard) before the next one starts. Returns why it stopped.
    """
    keywords = category_keywords(settings)
    empty_streak = 0
    for number in sorted(finished_rounds):
        empty_streak = empty_streak + 1 if finished_rounds[number]["kept"] == 0 else 0
    generate: Complete | None = None
    round_number = len(finished_rounds) + 1
    while True:
        if state.generated >= settings.target_new:
            return "target reached"
        if round_number > settings.max_rounds:
            return f"max_rounds={settings.max_rounds} reached"
        if empty_streak >= settings.max_empty_rounds:
            return f"no new item in the last {empty_streak} round(s) (max_empty_rounds={settings.max_empty_rounds})"
        generate = generate or complete()
        started = time.perf_counter()
        requests = plan_requests(state, round_number, settings, seed)
        outputs = generate([request.text for request in requests], f"{state.kind} round {round_number}")
        records, counts = accept_round(state, round_number, requests, outputs, settings, filters, keywords)
        counts["seconds"] = round(time.perf_counter() - started, 1)
        if well_formed(counts) == 0:
            removed = ", ".join(f"{name} {counts[name]}" for name in MALFORMED if counts[name]) or "none parsed"
            first = " ".join(next((o for o in outputs if o.strip()), "").split())[:120]
            kept = {1: "nothing was written", 2: f"round 1 is kept in {where}"}.get(round_number, f"rounds 1-{round_number - 1} are kept in {where}")
            raise CaiError(
                f"self_instruct: round {round_number} of the {state.kind} pool: the model's {len(outputs)} responses held no "
                f"well-formed request ({counts['candidates']} items parsed; {removed}; first response {first!r}); {kept}; "
                "use a stronger instruction-tuned model, raise generation.max_new_tokens, or try self_instruct.request_format=completion"
            )
        on_round(round_number, records, counts)
        removed = ", ".join(f"{name} {counts[name]}" for name in COUNT_ORDER if counts[name]) or "none"
        log(f"{state.kind} round {round_number}: {len(requests)} requests, {counts['candidates']} candidates, {len(records)} kept (removed: {removed}); {state.generated}/{settings.target_new} new, {counts['seconds']}s")
        empty_streak = empty_streak + 1 if not records else 0
        round_number += 1


# ------------------------------------------------------------------ the stage


def model_completer(config: PromptsRunConfig, accelerator: Any) -> Complete:
    """`complete(request texts, label) -> outputs` from the configured model, sharded over processes."""
    from cai import models
    from cai.generation import build_generator, generate_sharded, render_chat

    ref = models.resolve(config.model, setting="model")
    tokenizer = models.load_tokenizer(ref)
    chat = config.self_instruct.request_format == "chat"
    if chat and not getattr(tokenizer, "chat_template", None):
        raise CaiError(f"self_instruct.request_format: model {config.model} has no chat template; use request_format=completion")
    model = None
    if config.generation.backend == "transformers":
        model = models.load_causal_lm(ref, dtype=models.default_dtype(), device=accelerator.device)
        models.sync_pad_token(model, tokenizer)
    generator = build_generator(model, tokenizer, config.generation, model_path=ref.path, seed=config.seed, accelerator=accelerator)

    def render(text: str) -> str:
        if not chat:
            return text
        instruction, separator, examples = text.partition("\n\n")  # build_fewshot_request: instruction, blank line, list
        if not separator:
            return render_chat(tokenizer, [{"role": "user", "content": text}])
        return render_chat(tokenizer, [{"role": "user", "content": instruction}]) + examples

    def complete(texts: Sequence[str], label: str) -> list[str]:
        # Generation seeds are per prompt index; a seed per round keeps rounds from replaying one random stream
        # and lets a relaunched round sample exactly what the killed one would have.
        generator.seed = config.seed * 1_000_003 + zlib.crc32(label.encode("utf-8"))
        return generate_sharded(generator, [render(text) for text in texts], accelerator, desc=label)

    return complete


def run_grow(config: PromptsRunConfig, store: RunStore, accelerator: Any) -> None:
    """Grow each selected pool round by round (resumable), then assemble the pool files atomically."""
    settings = config.self_instruct
    filters = check_settings(settings)
    kinds = selected_kinds(settings)
    seeds = {kind: load_seeds(seed_path(settings, kind), kind=kind, limit=settings.seed_limit, seed=config.seed) for kind in kinds}
    fingerprint = pool_fingerprint(config, seeds)
    for kind in kinds:
        check_same_inputs(store, stage="grow", records_dir=f"{ROUNDS_DIR}/{kind}", fingerprint=fingerprint)
    main = accelerator.is_main_process
    recorded = store.stage_info("grow").get("rounds", {})
    round_counts: dict[str, dict[str, dict[str, int]]] = {}
    completer: list[Complete] = []

    def complete() -> Complete:
        if not completer:
            completer.append(model_completer(config, accelerator))
        return completer[0]

    summary: dict[str, Any] = {}
    for kind in kinds:
        records_dir = f"{ROUNDS_DIR}/{kind}"
        done = sorted(store.done_shards(records_dir))
        if done != list(range(1, len(done) + 1)):
            raise CaiError(f"{store.stage_dir(records_dir)}: round shards {done} are not 1..{len(done)}; restore the missing shard or set force=true to start over")
        state = start_pool(kind, seeds[kind], store.read_records(records_dir))
        # Counts of rounds with a shard only: a forced restart leaves the old counts in the manifest entry.
        round_counts[kind] = {key: value for key, value in recorded.get(kind, {}).items() if int(key) in done}
        finished = {number: round_counts[kind].get(str(number), {"kept": sum(r["round"] == number for r in state.records)}) for number in done}
        if done and main:
            print(f"[prompts] {kind}: resuming after round {done[-1]} ({state.generated} generated items kept)")

        def on_round(number: int, records: list[dict[str, Any]], counts: dict[str, int], kind: str = kind) -> None:
            # Counts go into the manifest before the shard: a round counts as done only once its shard exists.
            round_counts[kind][str(number)] = counts
            store.mark_stage("grow", "running", rounds=round_counts)
            store.write_shard(f"{ROUNDS_DIR}/{kind}", number, records)

        stopped = grow(
            state,
            settings=settings,
            filters=filters,
            seed=config.seed,
            complete=complete,
            finished_rounds=finished,
            on_round=on_round,
            log=lambda line: print(f"[prompts] {line}", flush=True) if main else None,
            where=str(store.stage_dir(records_dir)),
        )
        summary[kind] = kind_summary(state, round_counts[kind], stopped, settings)
        if main:
            atomic_write_text(store.root / POOL_FILES[kind], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in state.records))
            report(state, summary[kind], store.root / POOL_FILES[kind], settings.show_examples)
    store.mark_stage("grow", "done", rounds=round_counts, pools=summary)
    accelerator.wait_for_everyone()


def kind_summary(state: KindPool, rounds: dict[str, dict[str, int]], stopped: str, settings: SelfInstructConfig) -> dict[str, Any]:
    """The manifest entry of one pool: sizes, rounds, and how many candidates each filter removed."""
    counted = list(rounds.values())
    return {
        "pool_file": POOL_FILES[state.kind],
        "seed": len(state.pool.seed),
        "generated": state.generated,
        "target_new": settings.target_new,
        "reached_target": state.generated >= settings.target_new,
        "stopped": stopped,
        "rounds": len(rounds),
        "requests": sum(c.get("requests", 0) for c in counted),
        "candidates": sum(c.get("candidates", 0) for c in counted),
        "removed": {name: sum(c.get(name, 0) for c in counted) for name in COUNT_ORDER},
        "seconds": round(sum(c.get("seconds", 0.0) for c in counted), 1),
    }


def report(state: KindPool, summary: dict[str, Any], path: Path, show: int) -> None:
    """The summary line, the filter counts and a sample of generated items."""
    removed = ", ".join(f"{name} {count}" for name, count in summary["removed"].items())
    print(
        f"[prompts] {state.kind}: {summary['seed']} seed + {summary['generated']} generated "
        f"(target {summary['target_new']}; {summary['stopped']}) in {summary['rounds']} rounds, "
        f"{summary['requests']} requests, {summary['candidates']} candidates, {summary['seconds']}s -> {path}"
    )
    print(f"[prompts] {state.kind} removed by filter: {removed}")
    generated = [r for r in state.records if r["source"] == "generated"]
    if not generated or not show:
        return
    step = max(1, len(generated) // show)
    for record in generated[::step][:show]:
        tag = f"[{record['category']}] " if record["category"] else ""
        print(f"  r{record['round']} {tag}{record['prompt']}")
