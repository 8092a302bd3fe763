"""PPO's step-0 invariants, checked before training: ratio 1 and KL 0 between policy and reference.

At the first PPO step the policy *is* the reference, so the importance ratio must be 1 and
the KL penalty 0. When they are not, something other than learning separates the two (a
reference in another dtype, dropout on in one of them, a generation_config that changes the
sampling distribution beyond `ppo.temperature`, a reference with other weights) and PPO
would optimise against that noise from the first step. trl does not check this; we run its
own rollout and forward functions on one batch and stop with the first difference found.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

from cai.errors import CaiError

# generation_config fields that reshape the sampling distribution; trl sets temperature, top_k and top_p itself
SHAPING_FIELDS = (
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "min_length",
    "min_new_tokens",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
)


# Smallest tolerance used when the forward runs in half precision: generate() (with its KV cache)
# and a full forward pass round differently, ~1e-2 mean |log ratio| in bf16 at step 0.
HALF_PRECISION_TOLERANCE = {"bfloat16": 5e-2, "float16": 2e-2}


def step0_tolerance(configured: float, compute_dtype: Any) -> float:
    """`ppo.step0_tolerance` (an fp32 figure), raised to the half-precision floor when the forward runs in bf16/fp16."""
    return max(configured, HALF_PRECISION_TOLERANCE.get(str(compute_dtype).removeprefix("torch."), 0.0))


def output_dtype(model: Any) -> Any:
    """The dtype the log-probs are computed in: the output embedding's, else the first floating parameter's."""
    embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.dtype
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def shaping_settings(model: Any) -> list[str]:
    """generation_config settings that make sampled log-probs differ from temperature-scaled logits."""
    from transformers import GenerationConfig

    config = getattr(model, "generation_config", None)
    if config is None:
        return []
    defaults = GenerationConfig()
    found = [(name, repr(getattr(config, name))) for name in SHAPING_FIELDS if getattr(config, name, None) != getattr(defaults, name, None)]
    return [f"{name}={text if len(text) <= 40 else text[:37] + '...'}" for name, text in found]


def check_step0(
    policy: Any,
    reference: Any,
    queries: Any,
    *,
    pad_token_id: int,
    stop_token_id: int | None,
    temperature: float,
    response_length: int,
    tolerance: float,
    reference_context: Callable[[], Any] | None = None,
    autocast: Any = None,
) -> dict[str, float]:
    """Raise CaiError naming what differs between policy and reference at step 0; else the gaps measured.

    `reference_context` is trl's `null_ref_context` for a LoRA policy, whose reference is the
    same module with the adapter disabled. The policy runs in training mode, as in trl's loop.
    `autocast` (torch.bfloat16 / torch.float16) runs the check under the trainer's mixed
    precision; the tolerance is then raised to that precision's floor (`step0_tolerance`).
    """
    import torch
    from transformers import GenerationConfig
    from trl.experimental.ppo.ppo_trainer import (
        batch_generation,
        forward,
        truncate_response,
    )
    from trl.experimental.utils import first_true_indices
    from trl.trainer.utils import selective_log_softmax

    as_reference = reference_context or nullcontext
    policy_dtype = output_dtype(policy)
    with as_reference():
        reference_dtype = output_dtype(reference)
    if policy_dtype != reference_dtype:
        raise CaiError(f"ppo: step-0 check failed: the reference model's dtype ({reference_dtype}) differs from the policy's ({policy_dtype}), so ratio and KL start away from 1 and 0; load both with the same dtype")
    tolerance = step0_tolerance(tolerance, autocast or policy_dtype)
    was_training = policy.training
    policy.train()
    queries = queries.to(next(policy.parameters()).device)
    scale = temperature + 1e-7  # exactly as trl scales rollout and reference logits
    mixed = torch.autocast(queries.device.type, dtype=autocast) if autocast is not None else nullcontext()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), mixed:
            torch.manual_seed(0)
            for name, model, context in (("policy", policy, nullcontext), ("reference", reference, as_reference)):
                with context():
                    first = forward(model, queries, pad_token_id).logits
                    second = forward(model, queries, pad_token_id).logits
                if not torch.equal(first, second):
                    raise CaiError(
                        f"ppo: step-0 check failed: dropout is on in the {name} (two identical forward passes in "
                        f"{'training' if model.training else 'eval'} mode differ by up to {(first - second).abs().max().item():.2e}); "
                        "set the model config's dropout settings (e.g. attention_dropout) to 0.0"
                    )
            settings = GenerationConfig(max_new_tokens=response_length, temperature=scale, top_k=0.0, top_p=1.0, do_sample=True)
            query_responses, logits = batch_generation(policy, queries, queries.shape[0], pad_token_id, settings)
            context_length = queries.shape[1]
            responses = query_responses[:, context_length:]
            rollout = selective_log_softmax(logits, responses)
            scored = truncate_response(stop_token_id, pad_token_id, responses) if stop_token_id is not None else responses
            lengths = first_true_indices(scored == pad_token_id) - 1
            valid = torch.arange(responses.shape[1], device=responses.device)[None, :] <= lengths[:, None]
            own = selective_log_softmax(forward(policy, query_responses, pad_token_id).logits[:, context_length - 1 : -1] / scale, responses)
            with as_reference():
                theirs = selective_log_softmax(forward(reference, query_responses, pad_token_id).logits[:, context_length - 1 : -1] / scale, responses)
    finally:
        policy.train(was_training)
    count = valid.sum().clamp(min=1)
    ratio_gap = ((rollout - own).abs() * valid).sum().item() / count.item()
    reference_gap = ((own - theirs).abs() * valid).sum().item() / count.item()
    kl = ((rollout - theirs) * valid).sum(1).mean().item()
    if ratio_gap > tolerance:
        shaping = shaping_settings(policy)
        detail = f"the policy's generation_config sets {', '.join(shaping)} on top of ppo.temperature={temperature}" if shaping else f"sampling does not follow the logits scaled by ppo.temperature={temperature}"
        raise CaiError(
            f"ppo: step-0 check failed: the rollout's log-probs differ from the policy's own (mean |log ratio| {ratio_gap:.2e} > "
            f"tolerance {tolerance}); {detail}; remove those settings from the SL model's generation_config.json "
            "(or raise ppo.step0_tolerance if this is rounding noise)"
        )
    if reference_gap > tolerance or abs(kl) > tolerance * max(1.0, float(valid.sum(1).float().mean())):
        raise CaiError(
            f"ppo: step-0 check failed: the reference's log-probs differ from the policy's (mean |log ratio| {reference_gap:.2e}, "
            f"KL {kl:.2e}; tolerance {tolerance}), so the reference does not hold the policy's weights; "
            "start policy and reference from the same SL model"
        )
    return {"step0/ratio_gap": ratio_gap, "step0/reference_gap": reference_gap, "step0/kl": kl}
