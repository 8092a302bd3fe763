"""The `policy` stage (`stage`): PPO (`ppo`, its step-0 `invariants`), DPO/GRPO/RLOO (`alternatives`), rollout `monitors`."""
