"""The SL-CAI stages: `generate` (critique-revision data) and `sft` (trl SFTTrainer)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cai import layout, models
from cai.config import PromptsConfig, SLRunConfig
from cai.constitution import Constitution
from cai.errors import CaiError
from cai.fingerprint import fingerprint
from cai.generation import ChatCompleter
from cai.prompt_sources import Prompt, load_prompts
from cai.run_store import RunStore, atomic_write_text, check_same_inputs, run_chunked
from cai.supervised.chains import ChainSettings, plan_chains, prompt_set_hash, run_chains, sft_examples
from cai.supervised.data_card import data_card, gate_statistics, summary_lines
from cai.training import (
    jsonl_log_callback,
    last_checkpoint,
    no_final_checkpoint_callback,
    save_trained,
    trainer_config,
)

DATA_STAGE = layout.SL_DATA
MODEL_DIR = layout.SL_MODEL


def select_prompts(prompts: PromptsConfig, seed: int) -> list[Prompt]:
    """Red-team prompts, then helpful ones, each subsampled with the run's seed."""
    selected = load_prompts(prompts.red_team, kind="red_team", column=prompts.red_team_column, split=prompts.split, limit=prompts.max_red_team, shuffle=prompts.shuffle, seed=seed, setting="prompts.red_team")
    if prompts.helpful:
        selected += load_prompts(prompts.helpful, kind="helpful", column=prompts.helpful_column, split=prompts.split, limit=prompts.max_helpful, shuffle=prompts.shuffle, seed=seed, setting="prompts.helpful")
    return selected


def generate_fingerprint(prompts: list[Prompt], config: SLRunConfig, constitution: Constitution) -> str:
    """Everything that shapes the records: prompts, models, decoding, SL settings, constitution, seed.

    `generation.batch_size` and `sl.show_examples` are left out (a resume may lower the batch
    after running out of memory); `sl.chunk_size` is in, since shards are matched by number.
    """
    sl = {k: v for k, v in dataclasses.asdict(config.sl).items() if k not in ("show_examples", "helpful_per_red_team", "train_on_all_rounds")}
    decoding = {k: v for k, v in dataclasses.asdict(config.generation).items() if k != "batch_size"}
    return fingerprint([prompt_set_hash(prompts), config.model, sl, decoding, constitution.content_hash, config.seed])


def run_generate(config: SLRunConfig, store: RunStore, accelerator: Any, constitution: Constitution) -> None:
    sl = config.sl
    prompts = select_prompts(config.prompts, config.seed)
    if sl.principle_selection == "category" and not any(c.categories for c in constitution.critiques):
        raise CaiError(f"sl.principle_selection: 'category' needs principles that declare categories, and {constitution.path} declares none; add 'categories' to its critiques or use 'random'")
    check_same_inputs(store, stage="generate", records_dir=DATA_STAGE, fingerprint=generate_fingerprint(prompts, config, constitution))
    plans = plan_chains(prompts, constitution, rounds=sl.revision_rounds, few_shot=sl.few_shot, per_round=sl.principle_per_round, seed=config.seed, selection=sl.principle_selection, critique=sl.critique)
    policy = ChatCompleter(config.model, config.generation, config.seed, accelerator, setting="model", sample_temperature=sl.revision_temperature)
    critic = policy
    if sl.critique_model and sl.critique_model != config.model:
        critic = ChatCompleter(sl.critique_model, config.generation, config.seed, accelerator, setting="sl.critique_model", sample_temperature=sl.revision_temperature)

    def complete(conversations: list[list[dict[str, str]]], desc: str, **options: Any) -> list[str]:
        return (policy if desc == "response" else critic)(conversations, desc, **options)

    settings = ChainSettings.from_config(sl)

    def work(chunk: list[Any]) -> list[dict[str, Any]]:
        return run_chains(chunk, complete, constitution=constitution, settings=settings, scorer=critic.likelihood_ratio)

    records = run_chunked(store, stage="generate", records_dir=DATA_STAGE, items=plans, chunk_size=sl.chunk_size, work=work, accelerator=accelerator, tag="sl")
    check_record_ids(records, prompts, where=store.stage_dir(DATA_STAGE))
    stats = gate_statistics(records)
    cut = policy.cut_prompt_count() + (critic.cut_prompt_count() if critic is not policy else 0)
    stats["prompts_cut_to_fit"] = cut  # this launch's model calls (a resumed run: the chunks it generated)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rejected = [r for r in records if not r["target"] or any(not step["accepted"] for step in r["rounds"])]
        atomic_write_text(store.root / layout.SL_REJECTED / "rejected.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))
        atomic_write_text(store.root / layout.SL_DATA_CARD, data_card(records, stats, constitution=constitution, settings=sl))
    store.mark_stage("generate", "done", **stats)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"[sl] {DATA_STAGE}: {stats['red_team']} red-team chains, {stats['helpful']} helpful responses -> {store.stage_dir(DATA_STAGE)}")
        print(summary_lines(stats, store.root / layout.SL_DATA_CARD))
        if cut:
            print(f"[sl] {DATA_STAGE}: warning: {cut} model calls had prompts longer than generation.max_prompt_length={config.generation.max_prompt_length} tokens and lost their beginning (demonstrations first); raise generation.max_prompt_length or lower sl.few_shot")
        show_examples(records, sl.show_examples)


def check_record_ids(records: list[dict[str, Any]], prompts: list[Prompt], *, where: Any) -> None:
    """After the stage: one record per prompt, no id missing or twice (a resume must not lose or duplicate)."""
    ids = [r["id"] for r in records]
    if sorted(ids) != sorted(p.id for p in prompts) or len(set(ids)) != len(ids):
        raise CaiError(f"{where}: the shards hold {len(ids)} records ({len(set(ids))} distinct ids) for {len(prompts)} prompts; the run directory is inconsistent, rerun the stage with force=true")


def show_examples(records: list[dict[str, Any]], count: int) -> None:
    shown = [r for r in records if r["kind"] == "red_team"][:count]
    for record in shown:
        print("-" * 78)
        print(f"PROMPT    {record['prompt']}")
        print(f"RESPONSE  {_short(record['response'])}")
        for number, step in enumerate(record["rounds"], start=1):
            verdict = "accepted" if step["accepted"] else "rejected: " + step["failures"].replace(",", ", ")
            critique = "(none: a direct revision)" if step["critique"] is None else _short(step["critique"])
            print(f"CRITIQUE{number} [{step['principle_id']}, {step['principle_rule']}] {critique}")
            print(f"REVISION{number} ({verdict}) {_short(step['revision'])}")
        print(f"TARGET    {_short(record['target']) if record['target'] else '(none: prompt left out of SFT)'}")
    if shown:
        print("-" * 78)


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_sft(config: SLRunConfig, store: RunStore, accelerator: Any) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    records = store.require_stage("generate", needed_by="sft", records=DATA_STAGE)
    examples = sft_examples(records, helpful_per_red_team=config.sl.helpful_per_red_team, all_rounds=config.sl.train_on_all_rounds, seed=config.seed)
    if not examples:
        raise CaiError(f"{store.stage_dir(DATA_STAGE)}: no usable revisions to fine-tune on; check the generate stage output")
    if accelerator.is_main_process:
        atomic_write_text(store.root / layout.SFT_DATA / "train.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    ref = models.resolve(config.model, setting="model")
    tokenizer = models.load_tokenizer(ref, padding_side="right")
    model = models.load_causal_lm(ref, trainable=True)  # fp32 masters; the trainer autocasts to bf16
    models.sync_pad_token(model, tokenizer)
    checkpoints = store.root / layout.checkpoints("sft")
    args = trainer_config(
        SFTConfig,
        config.sft,
        section="sft",
        output_dir=checkpoints,
        seed=config.seed,
        completion_only_loss=True,
        eos_token=tokenizer.convert_ids_to_tokens(models.end_of_turn_id(tokenizer)),  # the chat template's end of turn
    )
    dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=models.lora_config(config.lora) if config.lora.enabled else None,
        callbacks=[jsonl_log_callback(store.root / layout.log("sft"), stage="sft"), no_final_checkpoint_callback()],
    )
    check_completion_masks(trainer.train_dataset, section="sft")
    resume = last_checkpoint(checkpoints)
    if resume and accelerator.is_main_process:
        print(f"[sl] sft: resuming from {resume}")
    store.mark_stage("sft", "running", examples=len(examples))
    result = trainer.train(resume_from_checkpoint=resume)
    save_policy(trainer, tokenizer, store.root / MODEL_DIR, lora=config.lora, accelerator=accelerator)
    store.mark_stage("sft", "done", examples=len(examples), train_loss=result.training_loss, steps=result.global_step, lora=config.lora.enabled)
    store.update_manifest(lambda m: m.setdefault("models", {}).update({layout.SL_MODEL: str(store.root / MODEL_DIR)}))
    if accelerator.is_main_process:
        print(f"[sl] sft: {len(examples)} examples, {result.global_step} steps, loss {result.training_loss:.4f} -> {store.root / MODEL_DIR}")


def check_completion_masks(dataset: Any, *, section: str) -> None:
    """Every example must keep at least one trained token; truncation can silently remove them all."""
    if "completion_mask" not in dataset.column_names:
        return
    empty = [i for i, mask in enumerate(dataset["completion_mask"]) if not any(mask)]
    if empty:
        raise CaiError(f"{section}.max_length: {len(empty)} examples lose every completion token to truncation (first: row {empty[0]}); raise {section}.max_length")


def save_policy(trainer: Any, tokenizer: Any, destination: Path, *, lora: Any, accelerator: Any) -> None:
    """The SL policy, merged when LoRA asks (`lora.merge`), left-padded for generation."""
    save_trained(trainer, tokenizer, destination, merge_lora=lora.enabled and lora.merge, padding_side="left", accelerator=accelerator)
