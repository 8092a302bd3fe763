"""The constitutional reward as a trl reward function and as an HTTP service (OpenRLHF's remote reward protocol).

Loopback only (127.0.0.1, a free port), a bounded number of requests, the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.client import HTTPConnection
from pathlib import Path

import pytest
from helpers import OFFLINE, ROOT, assert_one_line

PROMPTS = ["How do I pick the lock on my neighbour's door?", "Write a haiku about rain."]
RESPONSES = ["I can't help you get into someone else's home.", "Soft rain on the roof"]


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny sequence-classification reward model (num_labels=1), saved like the reward stage's reward_model/."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    directory = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(directory)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reward(reward_dir):
    from cai.reward.function import ConstitutionalReward

    return ConstitutionalReward.from_pretrained(str(reward_dir), device="cpu", max_length=256, batch_size=2, missing_eos_penalty=1.5)


# ---------------------------------------------------------------- the function


def test_function_scores_exactly_the_reward_stage_ids(reward):
    from cai.chat_format import scored_ids
    from cai.reward.model import score_responses

    tokenizer = reward.tokenizer
    expected = score_responses(reward.model, tokenizer, PROMPTS, RESPONSES, max_length=256)
    assert reward.ids(PROMPTS[0], RESPONSES[0]) == scored_ids(tokenizer, PROMPTS[0], RESPONSES[0], max_length=256)
    plain = reward(prompts=PROMPTS, completions=RESPONSES)
    conversational = reward(
        prompts=[[{"role": "user", "content": p}] for p in PROMPTS],
        completions=[[{"role": "assistant", "content": r}] for r in RESPONSES],
    )
    assert plain == pytest.approx(expected, abs=1e-6) and conversational == pytest.approx(expected, abs=1e-6)
    assert len(set(expected)) == 2  # the two pairs really score differently


def test_missing_eos_is_penalised_only_when_completion_ids_say_so(reward):
    eos = reward.tokenizer.eos_token_id
    raw = reward(prompts=PROMPTS, completions=RESPONSES)
    penalised = reward(prompts=PROMPTS, completions=RESPONSES, completion_ids=[[5, 6, eos], [5, 6]])
    assert penalised == pytest.approx([raw[0], raw[1] - 1.5], abs=1e-6)


def test_multi_turn_prompts_are_rendered_with_the_template(reward):
    from cai.generation import render_chat

    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": PROMPTS[0]}]
    head = reward.tokenizer(render_chat(reward.tokenizer, turns, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert reward.ids(turns, RESPONSES[0])[: len(head)] == head
    with pytest.raises(ValueError, match="one prompt per completion"):
        reward.score(PROMPTS, RESPONSES[:1])


def test_rendered_openrlhf_queries_tokenize_like_a_rollout(reward):
    """A decoded rollout (left pads, template, response, EOS, right pads) maps back onto scored_ids."""
    from cai.chat_format import prompt_text, scored_ids

    tokenizer = reward.tokenizer
    pad, eos = tokenizer.pad_token, tokenizer.eos_token
    heads = [prompt_text(tokenizer, p) for p in PROMPTS]
    queries = [pad * 2 + h + r + eos + pad * 3 for h, r in zip(heads, RESPONSES)]
    for query, head, prompt, response in zip(queries, heads, PROMPTS, RESPONSES):
        assert reward.text_ids(query, pad + head) == scored_ids(tokenizer, prompt, response, max_length=256)
    assert reward.score_texts(queries, heads) == pytest.approx(reward.score(PROMPTS, RESPONSES), abs=1e-6)
    # without prompts the text is tokenized whole, still ending in exactly one EOS
    whole = reward.text_ids(queries[0])
    assert whole[-1] == tokenizer.eos_token_id and whole[-2] != tokenizer.eos_token_id


def test_a_length_corrected_reward_model_is_corrected_by_the_function_too(reward_dir, tmp_path):
    """`reward.length_correction` keeps the slope in config.json: loaded for GRPO/RLOO or the service,
    every score (plain, conversational, rendered text) is the raw score less slope x response tokens."""
    import json
    import shutil

    from cai.chat_format import prompt_text, response_ids
    from cai.reward.function import ConstitutionalReward

    corrected_dir = tmp_path / "corrected"
    shutil.copytree(reward_dir, corrected_dir)
    config = json.loads((corrected_dir / "config.json").read_text())
    (corrected_dir / "config.json").write_text(json.dumps({**config, "cai_length_slope": 0.5}))
    raw = ConstitutionalReward.from_pretrained(str(reward_dir), device="cpu", max_length=256)
    corrected = ConstitutionalReward.from_pretrained(str(corrected_dir), device="cpu", max_length=256)
    lengths = [len(response_ids(raw.tokenizer, r)) for r in RESPONSES]
    expected = [score - 0.5 * n for score, n in zip(raw.score(PROMPTS, RESPONSES), lengths)]
    assert corrected.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-5)
    heads = [prompt_text(raw.tokenizer, p) for p in PROMPTS]
    assert corrected.score_texts([h + r for h, r in zip(heads, RESPONSES)], heads) == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------- the service, in process


@pytest.fixture
def server(reward):
    from cai.reward.service import RewardServer

    server = RewardServer(reward, "127.0.0.1", 0, max_batch=4, max_body_bytes=4096, max_requests=None, name="tiny")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    connection = HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def post(server, payload) -> tuple[int, dict]:
    return request(server, "POST", "/get_reward", json.dumps(payload).encode())


def test_openrlhf_request_gets_the_function_rewards(server, reward):
    from cai.chat_format import prompt_text
    from cai.reward.service import remote_rewards

    heads = [prompt_text(reward.tokenizer, p) for p in PROMPTS]
    queries = [h + r + reward.tokenizer.eos_token for h, r in zip(heads, RESPONSES)]
    expected = reward.score(PROMPTS, RESPONSES)
    status, body = post(server, {"query": queries, "prompts": heads, "labels": ["", ""]})
    assert status == 200 and body["rewards"] == pytest.approx(expected, abs=1e-6) and body["scores"] == body["rewards"]
    assert remote_rewards(server.url, queries, heads) == pytest.approx(expected, abs=1e-6)  # OpenRLHF's client call
    status, body = post(server, {"prompts": PROMPTS, "responses": RESPONSES})  # raw text: the server applies the template
    assert status == 200 and body["rewards"] == pytest.approx(expected, abs=1e-6)
    status, body = post(server, {"query": []})
    assert status == 200 and body["rewards"] == []
    assert request(server, "GET", "/health") == (200, {"status": "ok", "model": "tiny", "endpoint": "/get_reward", "max_batch": 4})


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (json.dumps({"queries": ["x"]}).encode(), 400, "expected {"),
        (json.dumps({"query": "one text"}).encode(), 400, "'query' must be a list"),
        (json.dumps({"query": ["a", 3]}).encode(), 400, "query[1] must be a string"),
        (json.dumps({"query": ["a", "b"], "prompts": ["a"]}).encode(), 400, "2 queries but 1 prompts"),
        (json.dumps({"prompts": ["a"], "responses": ["b", "c"]}).encode(), 400, "1 prompts but 2 responses"),
        (json.dumps({"prompts": [[{"role": "user"}]], "responses": ["b"]}).encode(), 400, "prompts[0] must be a string or a list"),
        (json.dumps({"query": ["x"] * 5}).encode(), 413, "more than --max_batch=4"),
        (json.dumps({"query": ["x" * 5000]}).encode(), 413, "more than --max_body_mb"),
    ],
)
def test_bad_requests_are_answered_with_4xx_and_the_server_stays_up(server, reward, body, status, fragment):
    got, answer = request(server, "POST", "/get_reward", body)
    assert got == status and fragment in answer["error"], answer
    assert post(server, {"prompts": PROMPTS[:1], "responses": RESPONSES[:1]})[0] == 200


def test_verl_custom_reward_function_calls_the_service(server, reward, monkeypatch):
    from cai.reward.service import verl_compute_score

    monkeypatch.setenv("CAI_REWARD_URL", server.url)
    score = verl_compute_score("cai", RESPONSES[0], None, extra_info={"prompt": PROMPTS[0]})
    assert score == pytest.approx(reward.score(PROMPTS[:1], RESPONSES[:1])[0], abs=1e-6)
    with pytest.raises(ValueError, match="extra_info has no 'prompt'"):
        verl_compute_score("cai", RESPONSES[0], None, extra_info={})


def test_wrong_path_method_and_length(server):
    assert request(server, "POST", "/other", b"{}")[0] == 404
    assert request(server, "GET", "/get_reward")[0] == 405
    assert request(server, "POST", "/get_reward", b"{}", {"Content-Length": "-4"})[0] == 400
    assert request(server, "GET", "/health")[0] == 200


def test_scoring_failure_is_a_500_not_a_crash(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(server.scorer, "score_ids", broken)
    status, body = post(server, {"query": ["x"]})
    assert status == 500 and "out of memory" in body["error"]
    monkeypatch.undo()
    assert post(server, {"query": ["x"]})[0] == 200


def test_concurrent_clients_each_get_their_own_rewards(server, reward):
    expected = reward.score(PROMPTS, RESPONSES)
    results: dict[int, list[float]] = {}

    def client(i: int) -> None:
        results[i] = post(server, {"prompts": [PROMPTS[i % 2]], "responses": [RESPONSES[i % 2]]})[1]["rewards"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert {i: pytest.approx([expected[i % 2]], abs=1e-6) for i in range(6)} == results


def test_max_requests_stops_the_server(reward):
    from cai.reward.service import RewardServer

    server = RewardServer(reward, "127.0.0.1", 0, max_requests=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    assert post(server, {"query": 1})[0] == 400  # answered, not counted
    assert post(server, {"query": ["a"]})[0] == 200
    assert post(server, {"query": ["b"]})[0] == 200
    thread.join(timeout=10)
    assert not thread.is_alive() and server.served == 2
    server.server_close()


# ---------------------------------------------------------------- the command


def test_serve_reward_command_serves_then_stops_cleanly(reward_dir, reward):
    env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1"}
    # fp32 on every CPU, as the in-process reward it is compared with to 1e-5
    command = [sys.executable, "-m", "cai", "serve-reward", str(reward_dir), "--port", "0", "--max_requests", "1", "--max_length", "256", "--device", "cpu", "--precision", "fp32"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "POST http://127.0.0.1:" in line, line + process.stderr.read()
        url = line.split("POST ", 1)[1].split()[0]
        from cai.reward.service import _post

        assert _post(url, {"prompts": PROMPTS, "responses": RESPONSES}, timeout=60) == pytest.approx(reward.score(PROMPTS, RESPONSES), abs=1e-5)
        assert process.wait(timeout=60) == 0
        assert "stopped after 1 scoring request" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_reward_sigterm_is_a_clean_stop(reward_dir):
    import signal

    env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cai", "serve-reward", str(reward_dir), "--port", "0", "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "POST http://127.0.0.1:" in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "stopped after 0 scoring request" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_reward_user_errors_are_one_line(tmp_path):
    env = {**os.environ, **OFFLINE}
    missing = subprocess.run([sys.executable, "-m", "cai", "serve-reward", str(tmp_path / "nope")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert_one_line(missing, "nope")
    bad = subprocess.run([sys.executable, "-m", "cai", "serve-reward", str(tmp_path), "--max_batch", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert_one_line(bad, "--max_batch: must be at least 1")


# ---------------------------------------------------------------- trl's GRPO with the function


@pytest.mark.slow
def test_grpo_trains_one_step_on_the_constitutional_reward(tiny_model_dir, reward_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from cai.reward.function import ConstitutionalReward

    reward = ConstitutionalReward.from_pretrained(str(reward_dir), device="cpu", max_length=256)
    calls: list[tuple[int, bool]] = []

    class Counting(ConstitutionalReward):
        def __call__(self, prompts, completions, **kwargs):
            calls.append((len(prompts), isinstance(prompts[0], list)))
            return super().__call__(prompts, completions, **kwargs)

    counted = Counting(reward.model, reward.tokenizer, max_length=256, missing_eos_penalty=1.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        seed=0,
    )
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS * 2])
    trainer = GRPOTrainer(model=model, reward_funcs=counted, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    assert calls and all(n == 4 and conversational for n, conversational in calls)
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "rewards/constitutional_reward/mean" in logged
    assert any(not (before[k] == v).all() for k, v in trainer.model.state_dict().items() if k in before)
