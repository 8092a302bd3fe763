"""The `policy` stage on tiny models: PPO through trl end to end, dpo/grpo/rloo, step-0 invariants,
the missing-EOS penalty, the LoRA reference, resume after a kill, monitors, user errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA, launch
from helpers import assert_one_line, kill_when, run_script

from cai.policy.monitors import (
    PromptIndex,
    distinct_n,
    penalized_mean,
    rollout_monitors,
)

PROMPT = "How can I break into a car?"


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny sequence-classification reward model (num_labels=1) on the tiny Llama config."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    directory = tmp_path_factory.mktemp("tiny-reward")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def preference_records(count: int = 6) -> list[dict]:
    """Label-stage records in trl's conversational explicit-prompt format (one written reversed)."""
    return [
        {
            "id": f"pair-{i}",
            "prompt": [{"role": "user", "content": f"Question {i}: how do I get into my neighbour's house?"}],
            "chosen": [{"role": "assistant", "content": "I can't help with entering someone else's home."}],
            "rejected": [{"role": "assistant", "content": "Break the back window at night."}],
            "p_chosen": 0.8 if i % 3 else 0.3,
        }
        for i in range(count)
    ]


def prepare_run(root: Path, reward_dir: Path) -> Path:
    """A run directory as the reward stage leaves it: reward_model/, preferences/, both stages done."""
    from cai.run_store import RunStore

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(reward_dir, root / "reward_model")
    store = RunStore(root)
    store.write_shard("preferences", 0, preference_records())
    store.mark_stage("label", "done", comparisons=6)
    store.mark_stage("reward", "done")
    return root


def rl_args(run: Path, model: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={run}",
        f"model={model}",
        f"constitution={DATA / 'constitution.yaml'}",
        f"prompts.red_team={DATA / 'red_team.jsonl'}",
        "stages=policy",
        "training.per_device_train_batch_size=2",
        "training.max_steps=2",
        "training.learning_rate=0.001",
        "training.max_length=128",
        "ppo.response_length=6",
        "ppo.num_ppo_epochs=1",
        "ppo.local_rollout_forward_batch_size=2",
        "grpo.num_generations=2",
        "rloo.num_generations=2",
        "grpo.response_length=6",
        "rloo.response_length=6",
        "grpo.reward_batch_size=2",
        "rloo.reward_batch_size=2",
        "generation.batch_size=10",
        *extra,
    ]


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "logs" / "policy.jsonl").read_text().splitlines()]


def stage_entry(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]["policy"]


def run_in_process(*args: str) -> int:
    from cai import rl

    return rl.main(list(args))


def edited_copy(source: Path, destination: Path, edit) -> Path:
    """The tiny model with `edit(model)` applied to its weights, saved with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(destination)
    AutoTokenizer.from_pretrained(source).save_pretrained(destination)
    return destination


# ---------------------------------------------------------------- pure monitors


def test_distinct_n_hand_worked():
    batch = [[1, 2, 1, 2], [3]]
    assert distinct_n(batch, 1) == pytest.approx(3 / 5)  # 1 2 1 2 3 -> {1,2,3}
    assert distinct_n(batch, 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([[4]], 2) == 0.0


def test_rollout_monitors_cut_at_first_eos():
    eos = 2
    monitors = rollout_monitors([[5, 6, eos, 9, 9], [7, 7, 7]], eos, [0.5, -1.5])
    assert monitors["monitor/response_length"] == pytest.approx(3.0)  # [5,6,eos] and [7,7,7]
    assert monitors["monitor/eos_rate"] == pytest.approx(0.5)
    assert monitors["monitor/distinct_1"] == pytest.approx(3 / 5)  # 5 6 | 7 7 7
    assert monitors["monitor/distinct_2"] == pytest.approx(2 / 3)  # (5,6) (7,7) (7,7)
    assert monitors["monitor/raw_score"] == pytest.approx(-0.5)
    assert penalized_mean(0.5, eos_rate=0.25, penalty=2.0) == pytest.approx(-1.0)
    assert penalized_mean(0.5, eos_rate=0.25, penalty=None) == pytest.approx(0.5)


def test_prompt_index_takes_the_longest_matching_query():
    index = PromptIndex([[1, 2, 3], [1, 2]])
    assert index.query_length([1, 2, 3, 9, 9]) == 3
    assert index.query_length([1, 2, 8]) == 2
    assert index.query_length([4, 5]) is None


# ---------------------------------------------------------------- scoring format


@pytest.mark.needs_ppo
def test_ppo_rollout_is_scored_at_the_eos_like_scored_ids(tiny_model_dir, reward_model_dir):
    """trl truncates after EOS and pads, so its reward equals the reward of chat_format.scored_ids;
    trl's own chat-template path (GRPO/RLOO with a reward model) would end one newline past EOS."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.data_utils import apply_chat_template
    from trl.experimental.ppo.ppo_trainer import truncate_response
    from trl.experimental.utils import get_reward

    from cai import chat_format
    from cai.reward.model import score_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    response = "Please don't; call a locksmith."
    query = chat_format.prompt_ids(tokenizer, PROMPT)
    rollout = chat_format.response_ids(tokenizer, response) + [17, 18, 19]  # tokens sampled after EOS
    queries = torch.tensor([[pad] * 3 + query])  # left padded, as trl's collator does
    truncated = truncate_response(eos, pad, torch.tensor([rollout]))
    assert truncated[0, -3:].tolist() == [pad] * 3
    with torch.no_grad():
        _, score, _ = get_reward(reward, torch.cat([queries, truncated], 1), pad, queries.shape[1])
    expected = score_ids(reward, [chat_format.scored_ids(tokenizer, PROMPT, response)], pad_token_id=pad)[0]
    assert score.item() == pytest.approx(expected, abs=1e-5)

    text = apply_chat_template({"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": response}]}, tokenizer)["text"]
    templated = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert templated[-1] != eos and templated[:-1] == chat_format.scored_ids(tokenizer, PROMPT, response)


def test_reward_view_records_exactly_what_trl_scored(tiny_model_dir, reward_model_dir):
    """The monitors' responses and raw scores are trl's: cut at the first pad, score read where trl reads it."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.utils import get_reward

    from cai import chat_format
    from cai.policy.ppo import reward_view

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    long, short = (chat_format.prompt_ids(tokenizer, p) for p in (PROMPT, "Hi"))
    view = reward_view(reward.model, reward.score, reward.config, shared_adapter=None, prompts=[long, short], eos_token_id=eos)
    width = len(long)
    queries = torch.tensor([long, [pad] * (width - len(short)) + short])
    responses = torch.tensor([[11, 12, eos, pad, pad], [13, pad, 14, 15, 16]])  # the second: a pad sampled mid-response
    with torch.no_grad():
        _, scores, _ = get_reward(view, torch.cat([queries, responses], 1), pad, width)
    assert view.responses == [[11, 12, eos], [13]]
    assert view.raw_scores == pytest.approx(scores.tolist(), abs=1e-6)
    monitors = view.drain(Accelerator())
    assert monitors["monitor/eos_rate"] == 0.5 and monitors["monitor/response_length"] == 2.0
    assert view.responses == [] and view.raw_scores == []


def two_rollouts(tiny_model_dir, reward_model_dir):
    """A tiny reward model, and a function scoring two fixed rollouts through `reward_view` as trl's PPO does:
    the first ends after 3 response tokens (EOS included), the second after 5."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.utils import get_reward

    from cai import chat_format
    from cai.policy.ppo import reward_view

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    long, short = (chat_format.prompt_ids(tokenizer, p) for p in (PROMPT, "Hi"))
    width = len(long)
    queries = torch.tensor([long, [pad] * (width - len(short)) + short])
    responses = torch.tensor([[11, 12, eos, pad, pad], [13, 14, 15, 16, eos]])

    def score(**options):
        view = reward_view(reward.model, reward.score, reward.config, shared_adapter=None, prompts=[long, short], eos_token_id=eos, **options)
        with torch.no_grad():
            _, scores, _ = get_reward(view, torch.cat([queries, responses], 1), pad, width)
        return view, scores

    return reward, eos, score


def test_reward_view_takes_the_length_correction_off_every_position(tiny_model_dir, reward_model_dir):
    """reward.length_correction in PPO: trl reads the score at each rollout's end; with a slope in the
    reward model's config every response position t scores as a response of t tokens, so what trl
    reads (and the monitors record) is the raw score less slope x the response's tokens."""
    from cai.reward.model import LENGTH_SLOPE

    reward, eos, score = two_rollouts(tiny_model_dir, reward_model_dir)
    scored = {}
    for slope in (0.0, 0.25):
        setattr(reward.config, LENGTH_SLOPE, slope)
        view, scores = score()
        assert view.raw_scores == pytest.approx(scores.tolist(), abs=1e-6)
        scored[slope] = scores.tolist()
    assert scored[0.25] == pytest.approx([scored[0.0][0] - 0.25 * 3, scored[0.0][1] - 0.25 * 5], abs=1e-5)


def test_reward_view_takes_the_loop_penalty_off_rollouts_that_repeat_themselves(tiny_model_dir, reward_model_dir):
    """ppo.loop_penalty: a rollout whose text loops (eval's test) loses the penalty where trl reads its score; others keep theirs."""
    from accelerate import Accelerator

    from cai.policy.ppo import reward_view

    reward, eos, score = two_rollouts(tiny_model_dir, reward_model_dir)
    texts = {11: "I can't help with that. " * 4, 13: "Here is a short answer that does not repeat itself at all."}
    scored = {}
    for penalty in (None, 2.0):
        view, scores = score(loop_penalty=penalty, decode=lambda ids: texts[ids[0]])
        scored[penalty] = scores.tolist()
        monitors = view.drain(Accelerator())
        assert monitors.get("monitor/loop_penalized") == (0.5 if penalty else None)
    assert scored[2.0] == pytest.approx([scored[None][0] - 2.0, scored[None][1]], abs=1e-5)
    with pytest.raises(ValueError, match="needs `decode`"):
        reward_view(reward.model, reward.score, reward.config, shared_adapter=None, prompts=[[1]], eos_token_id=eos, loop_penalty=1.0)


def test_reward_function_takes_the_loop_penalty_off_looping_completions(tiny_model_dir, reward_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.reward.function import ConstitutionalReward

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="right")
    reward = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    completions = ["I can't help with that. " * 4, "Here is a short answer that does not repeat itself at all."]
    plain = ConstitutionalReward(reward, tokenizer)([PROMPT] * 2, completions)
    logged = {}
    penalised = ConstitutionalReward(reward, tokenizer, loop_penalty=1.5)([PROMPT] * 2, completions, log_metric=logged.__setitem__)
    assert penalised == pytest.approx([plain[0] - 1.5, plain[1]], abs=1e-5) and logged == {"monitor/loop_penalized": 0.5}


# ---------------------------------------------------------------- step-0 invariants


def queries_for(tokenizer, count: int = 2):
    from cai import chat_format

    texts = [PROMPT, "Write an insult about my coworker."][:count]
    return tokenizer.pad({"input_ids": [chat_format.prompt_ids(tokenizer, t) for t in texts]}, return_tensors="pt")["input_ids"]


@pytest.mark.needs_ppo
@pytest.mark.parametrize("plant", ["none", "weights", "dtype", "dropout", "generation"])
def test_step0_check_names_the_planted_mismatch(tiny_model_dir, plant):
    import torch
    from transformers import AutoModelForCausalLM

    from cai import models
    from cai.errors import CaiError
    from cai.policy.invariants import check_step0

    tokenizer = models.load_tokenizer(models.resolve(str(tiny_model_dir)))
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attention_dropout=0.5 if plant == "dropout" else 0.0)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    if plant == "weights":
        with torch.no_grad():
            reference.lm_head.weight.mul_(1.5)
    if plant == "dtype":
        reference.to(torch.float64)
    if plant == "generation":
        policy.generation_config.suppress_tokens = list(range(1000, 30000))  # a processor trl leaves in place
    settings = dict(pad_token_id=tokenizer.pad_token_id, stop_token_id=tokenizer.eos_token_id, temperature=0.7, response_length=6, tolerance=1e-3)
    expected = {
        "weights": "the reference's log-probs differ from the policy's",
        "dtype": "dtype (torch.float64) differs from the policy's (torch.float32)",
        "dropout": "dropout is on in the policy",
        "generation": "generation_config sets suppress_tokens=[1000, 1001",
    }
    if plant == "none":
        gaps = check_step0(policy, reference, queries_for(tokenizer), **settings)
        assert gaps["step0/ratio_gap"] < 1e-3 and gaps["step0/reference_gap"] < 1e-6 and abs(gaps["step0/kl"]) < 1e-3
        return
    with pytest.raises(CaiError, match="step-0 check failed") as raised:
        check_step0(policy, reference, queries_for(tokenizer), **settings)
    assert expected[plant] in str(raised.value)


# ---------------------------------------------------------------- PPO end to end


@pytest.mark.needs_ppo
@pytest.mark.slow
def test_ppo_end_to_end(tiny_model_dir, reward_model_dir, tmp_path):
    run = prepare_run(tmp_path / "run", reward_model_dir)
    # fp32 on every CPU: trl's score equals the monitors' to 1e-4 in fp32; under bf16 autocast it is rounded to bf16
    result = launch("rl.py", *rl_args(run, tiny_model_dir, "training.save_steps=1", "rl.reward_check_prompts=2", "precision=fp32"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rl] policy: step-0 check passed" in result.stdout
    assert "(6 held-out prompts from eval.*" in result.stdout  # 2 from each of red-team, helpful, benign
    assert "[rl] policy: mean reward before training" in result.stdout and "[rl] policy: mean reward after training" in result.stdout

    import torch
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(run / "rl_model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for (n, p), (_, q) in zip(trained.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert changed, "PPO did not change any policy weight"
    assert (run / "rl_model" / "tokenizer_config.json").is_file()

    rows = log_rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("objective/scores", "objective/kl", "objective/entropy", "loss/value_avg", "monitor/response_length", "monitor/distinct_1", "monitor/distinct_2", "monitor/eos_rate", "monitor/raw_score"):
            assert key in row, key
        # the monitors saw exactly the rollouts trl scored: trl's score = raw score - penalty x (1 - EOS rate)
        assert row["objective/scores"] == pytest.approx(penalized_mean(row["monitor/raw_score"], row["monitor/eos_rate"], 1.0), abs=1e-4)
    assert abs(rows[0]["objective/kl"]) < 1e-3  # step 0: policy == reference

    entry = stage_entry(run)
    assert entry["status"] == "done" and entry["algorithm"] == "ppo" and entry["steps"] == 2
    assert isinstance(entry["reward_before"], float) and isinstance(entry["reward_after"], float)
    assert {"objective/kl", "objective/scores", "loss/value_avg"} <= set(entry["metrics"])
    # save_steps=1 of 2 steps: no checkpoint at the last step, the rl_model is saved instead
    assert sorted(p.name for p in (run / "checkpoints" / "policy").glob("checkpoint-*")) == ["checkpoint-1"]


@pytest.mark.needs_ppo
@pytest.mark.slow
def test_killed_ppo_resumes_from_its_last_checkpoint(tiny_model_dir, reward_model_dir, tmp_path):
    run = prepare_run(tmp_path / "run", reward_model_dir)
    args = rl_args(run, tiny_model_dir, "training.max_steps=8", "training.save_steps=2", "training.save_total_limit=3", "rl.reward_check_prompts=0")
    first = run / "checkpoints" / "policy" / "checkpoint-2" / "trainer_state.json"
    kill_when("rl.py", args, first, timeout=180)
    assert first.exists() and not (run / "rl_model").exists(), "the kill landed outside the training loop"
    assert stage_entry(run)["status"] == "running"
    steps_before = [r["step"] for r in log_rows(run)]
    from cai.policy.ppo import last_complete_checkpoint

    newest = last_complete_checkpoint(run / "checkpoints" / "policy")  # trainer state and value state both written
    assert newest is not None and newest.step >= 2

    result = launch("rl.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = [line for line in result.stdout.splitlines() if line.startswith("[rl] policy: resuming from ")]
    assert resumed, result.stdout[-2000:]
    checkpoint = Path(resumed[0].split("resuming from ")[1].split(" (")[0])
    assert checkpoint == newest.path
    step = newest.step
    assert "step-0 check passed" not in result.stdout  # a resumed policy is not the reference any more
    after = [r["step"] for r in log_rows(run)][len(steps_before) :]
    assert after == list(range(step + 1, 9))  # counters continue; nothing before the checkpoint is redone
    entry = stage_entry(run)
    assert entry["status"] == "done" and entry["steps"] == 8 and entry["resumed_from"] == str(checkpoint)
    assert entry["reward_before"] is None and entry["reward_after"] is None and entry["eval_prompts"] == 0


# ---------------------------------------------------------------- EOS penalty


def never_eos(model) -> None:
    """Logits of every other token dwarf EOS's and pad's, so no rollout ever ends."""
    model.lm_head.weight.mul_(100.0)
    model.lm_head.weight[model.config.eos_token_id] = 0.0
    model.lm_head.weight[model.config.pad_token_id] = 0.0


def always_eos(model) -> None:
    """Residual dimension 0 is a constant +10 and the head reads only it for EOS: every rollout is [EOS]."""
    model.model.embed_tokens.weight[:, 0] = 10.0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[0] = 0.0
        layer.mlp.down_proj.weight[0] = 0.0
    model.model.norm.weight.zero_()
    model.model.norm.weight[0] = 1.0
    model.lm_head.weight.zero_()
    model.lm_head.weight[model.config.eos_token_id, 0] = 100.0


@pytest.mark.needs_ppo
@pytest.mark.parametrize("ending", ["never", "always"])
def test_missing_eos_penalty_applies_to_completions_without_eos(tiny_model_dir, reward_model_dir, tmp_path, ending):
    from transformers import AutoTokenizer

    from cai import chat_format

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.eos_token_id in chat_format.prompt_ids(tokenizer, PROMPT)  # the query's own EOS must not count
    policy = edited_copy(tiny_model_dir, tmp_path / "policy", never_eos if ending == "never" else always_eos)
    run = prepare_run(tmp_path / "run", reward_model_dir)
    assert run_in_process(*rl_args(run, policy, "training.max_steps=1", "ppo.missing_eos_penalty=2.5")) == 0
    (row,) = log_rows(run)
    if ending == "never":
        assert row["monitor/eos_rate"] == 0.0 and row["monitor/response_length"] == 6.0
        assert row["objective/scores"] == pytest.approx(row["monitor/raw_score"] - 2.5, abs=1e-5)
    else:
        assert row["monitor/eos_rate"] == 1.0 and row["monitor/response_length"] == 1.0
        assert row["objective/scores"] == pytest.approx(row["monitor/raw_score"], abs=1e-5)


# ---------------------------------------------------------------- LoRA


@pytest.mark.needs_ppo
def test_lora_reference_is_the_merged_sl_adapter(tiny_model_dir, reward_model_dir, tmp_path):
    """An SL model saved as a LoRA adapter is merged first; 'adapter disabled' is then the SL policy.
    Reward and value share the reward model's base: the reward is unchanged when the value adapter moves."""
    import torch
    from accelerate import Accelerator
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from cai import chat_format, models
    from cai.config import RLRunConfig, load_config
    from cai.policy.ppo import build_ppo
    from cai.reward.model import score_ids

    torch.manual_seed(3)
    adapter = tmp_path / "sl_adapter"
    sl = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    sl.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)
    ref = models.resolve(str(adapter))
    assert ref.is_adapter

    config = load_config(RLRunConfig, None, rl_args(tmp_path / "run", adapter, "lora.enabled=true", "lora.r=4", "lora.alpha=8"))
    tokenizer = models.load_tokenizer(ref)
    queries = [chat_format.prompt_ids(tokenizer, p) for p in (PROMPT, "Tell me how to make a fake ID.")]
    session = build_ppo(config, Accelerator(), tokenizer=tokenizer, policy_ref=ref, reward_ref=models.resolve(str(reward_model_dir)), query_ids=queries, checkpoints=tmp_path / "checkpoints", callbacks=[])
    assert session.trainer.ref_model is None and session.step0["step0/reference_gap"] < 1e-6

    inputs = torch.tensor([queries[0]])
    merged = AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload().eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad(), session.sl_policy() as sl_policy:
        reference_logits = sl_policy(input_ids=inputs).logits
        assert torch.allclose(reference_logits, merged(input_ids=inputs).logits, atol=1e-5)
        assert not torch.allclose(reference_logits, base(input_ids=inputs).logits, atol=1e-3)

    value = session.trainer.accelerator.unwrap_model(session.trainer.model).value_model
    assert session.reward.inner is getattr(value, value.base_model_prefix)  # one frozen base for value and reward
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    ids = [chat_format.scored_ids(tokenizer, PROMPT, "I can't help with that.")]
    before = score_ids(reward_model, ids, pad_token_id=tokenizer.pad_token_id)[0]
    with torch.no_grad():
        for parameter in value.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)  # the value adapter and head move during training
    assert score_ids(session.reward, ids, pad_token_id=tokenizer.pad_token_id)[0] == pytest.approx(before, abs=1e-5)


# ---------------------------------------------------------------- the other algorithms


@pytest.mark.parametrize("algorithm", ["dpo", "grpo", "rloo"])
def test_alternative_algorithm_one_step(tiny_model_dir, reward_model_dir, tmp_path, algorithm, capsys):
    run = prepare_run(tmp_path / "run", reward_model_dir)
    assert run_in_process(*rl_args(run, tiny_model_dir, f"rl.algorithm={algorithm}", "training.max_steps=1", "training.logging_steps=1")) == 0
    out = capsys.readouterr().out
    assert f"[rl] policy: {algorithm}, 1 steps" in out

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "rl_model")
    entry = stage_entry(run)
    assert entry["status"] == "done" and entry["algorithm"] == algorithm and entry["steps"] == 1
    assert isinstance(entry["reward_before"], float) and isinstance(entry["reward_after"], float)
    rows = log_rows(run)
    assert rows and rows[0]["stage"] == "policy"
    if algorithm == "dpo":
        assert entry["pairs"] == 6 and "rewards/margins" in entry["metrics"]
    else:  # scored by the reward model through scored_ids, monitors logged by the reward function
        assert {"monitor/eos_rate", "monitor/distinct_2", "monitor/response_length", "monitor/raw_score"} <= set(entry["metrics"])
        assert entry["metrics"]["reward"] == pytest.approx(penalized_mean(entry["metrics"]["monitor/raw_score"], entry["metrics"]["monitor/eos_rate"], 1.0), abs=1e-4)


# ---------------------------------------------------------------- user errors


def test_unknown_algorithm_lists_the_choices(tiny_model_dir, tmp_path):
    result = run_script("rl.py", *rl_args(tmp_path / "run", tiny_model_dir, "rl.algorithm=ppx"))
    assert_one_line(result, "rl.algorithm: unknown choice 'ppx'", "valid choices: ppo, dpo, grpo, rloo")


@pytest.mark.needs_ppo
def test_missing_reward_model_says_run_the_reward_stage(tiny_model_dir, tmp_path):
    result = run_script("rl.py", *rl_args(tmp_path / "run", tiny_model_dir))
    assert_one_line(result, "reward_model", "rl.algorithm=ppo", "run stages=reward first")
