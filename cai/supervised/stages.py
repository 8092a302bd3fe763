"""The SL-CAI stages: `generate` (critique-revision data) and `sft` (trl SFTTrainer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai import layout, models
from cai.config import GenerationConfig, PromptsConfig, SLRunConfig
from cai.constitution import Constitution
from cai.errors import CaiError
from cai.generation import build_generator, generate_sharded, render_chat
from cai.prompt_sources import Prompt, load_prompts
from cai.run_store import RunStore, atomic_write_text, check_same_inputs, run_chunked
from cai.supervised.chains import plan_chains, prompt_set_hash, run_chains, sft_examples
from cai.training import (
    jsonl_log_callback,
    last_checkpoint,
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


def generation_function(reference: str, settings: GenerationConfig, seed: int, accelerator: Any, *, setting: str):
    """A `complete(list[messages], desc) -> list[str]` for one model, sharded over processes."""
    ref = models.resolve(reference, setting=setting)
    tokenizer = models.load_tokenizer(ref)
    model = None
    if settings.backend == "transformers":
        model = models.load_causal_lm(ref, dtype=models.default_dtype(), device=accelerator.device)
        models.sync_pad_token(model, tokenizer)
    generator = build_generator(model, tokenizer, settings, model_path=ref.path, seed=seed, accelerator=accelerator)

    def complete(conversations: list[list[dict[str, str]]], desc: str) -> list[str]:
        texts = [render_chat(tokenizer, messages) for messages in conversations]
        return generate_sharded(generator, texts, accelerator, desc=desc)

    return complete


def run_generate(config: SLRunConfig, store: RunStore, accelerator: Any, constitution: Constitution) -> None:
    if config.sl.revision_rounds < 1:
        raise CaiError(f"sl.revision_rounds: must be at least 1, got {config.sl.revision_rounds}")
    prompts = select_prompts(config.prompts, config.seed)
    check_same_inputs(store, stage="generate", records_dir=DATA_STAGE, fingerprint=prompt_set_hash(prompts))
    plans = plan_chains(prompts, constitution, rounds=config.sl.revision_rounds, few_shot=config.sl.few_shot, per_round=config.sl.principle_per_round, seed=config.seed)
    complete_policy = generation_function(config.model, config.generation, config.seed, accelerator, setting="model")
    complete_critic = complete_policy
    if config.sl.critique_model and config.sl.critique_model != config.model:
        complete_critic = generation_function(config.sl.critique_model, config.generation, config.seed, accelerator, setting="sl.critique_model")

    def complete(conversations: list[list[dict[str, str]]], desc: str) -> list[str]:
        return (complete_policy if desc == "response" else complete_critic)(conversations, desc)

    def work(chunk: list[Any]) -> list[dict[str, Any]]:
        records, empty = run_chains(chunk, complete, constitution_hash=constitution.content_hash)
        if empty:
            store.mark_stage("generate", "running", empty_revisions=store.stage_info("generate").get("empty_revisions", 0) + empty)
        return records

    records = run_chunked(store, stage="generate", records_dir=DATA_STAGE, items=plans, chunk_size=config.sl.chunk_size, work=work, accelerator=accelerator, tag="sl")
    counts = {
        "records": len(records),
        "red_team": sum(r["kind"] == "red_team" for r in records),
        "helpful": sum(r["kind"] == "helpful" for r in records),
    }
    store.mark_stage("generate", "done", **counts)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"[sl] {DATA_STAGE}: {counts['red_team']} red-team chains, {counts['helpful']} helpful responses -> {store.stage_dir(DATA_STAGE)}")
        show_examples(records, config.sl.show_examples)


def show_examples(records: list[dict[str, Any]], count: int) -> None:
    shown = [r for r in records if r["kind"] == "red_team"][:count]
    for record in shown:
        print("-" * 78)
        print(f"PROMPT    {record['prompt']}")
        print(f"RESPONSE  {_short(record['response'])}")
        for number, step in enumerate(record["rounds"], start=1):
            print(f"CRITIQUE{number} [{step['principle_id']}] {_short(step['critique'])}")
        print(f"REVISION  {_short(record['revision'])}")
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
        eos_token=tokenizer.eos_token,
    )
    dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=models.lora_config(config.lora) if config.lora.enabled else None,
        callbacks=[jsonl_log_callback(store.root / layout.log("sft"), stage="sft")],
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
