"""Issue 19, item 2: `textgym serve` exposes any env as an OpenEnv server (one whole answer per step).

An OpenEnv client plays full episodes against a real `textgym serve` process (started on a free
port and stopped by these tests): rewards and infos equal the in-process env's on the same seeds
and answers, 8 sessions run at once, clients that vanish mid-episode leave the server healthy with
their sessions freed, and malformed requests get an error response that names the problem.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import gymnasium as gym
import numpy as np
import pytest
import websockets

import textgym
from tests.conftest import TINY
from tests.test_multi_turn import TwoTurnCopy
from textgym.cli import main
from textgym.errors import ConfigError
from textgym.integrations.openenv import MAX_ANSWER_CHARS, Server, ServerError, TextGymClient, jsonable
from textgym.wrappers import SequenceLevel

ENV_ID = "textgym/Copy-v0"
SPLIT = "test"
NUM_ENVS = 8


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """`textgym serve` as a subprocess on a free port; stopped with SIGINT, which must exit cleanly."""
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "textgym", "serve", ENV_ID, "--model", TINY, "--split", SPLIT,
             "--port", "0", "--num-envs", str(NUM_ENVS)],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith(f"serving {ENV_ID} on http://127.0.0.1:"), line + log.read_text()[-3000:]
        url = line.split(" on ")[1].split()[0]
        wait_healthy(url)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]


def http(url: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert http(url, "/health") == (200, {"status": "healthy"})
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def local_env(env_id: str = ENV_ID, **kwargs) -> SequenceLevel:
    return SequenceLevel(gym.make(env_id, model=TINY, split=SPLIT, **kwargs))


def prompt_ids(env: SequenceLevel, obs: dict) -> list[int]:
    prompt = slice(0, env.unwrapped.setup.max_prompt_tokens)
    return obs["input_ids"][prompt][obs["attention_mask"][prompt] == 1].tolist()


def served_info(info: dict) -> dict:
    """What the server sends of an in-process info: all of it, JSON-safe, without the token-level action mask."""
    return jsonable({k: v for k, v in info.items() if k != "action_mask"})


def answers(env: SequenceLevel, info: dict) -> list:
    """Right, wrong, partial, empty and over-long answers, as text and as token ids."""
    tokenizer, reference = env.unwrapped.tokenizer, info["references"][0]
    ids = tokenizer.encode(reference, add_special_tokens=False)
    return [reference, "sun", reference.split()[0], "", " ".join([reference] * 10), ids, ids[:1], [], ids * 10]


# -- episodes equal the in-process env's ---------------------------------------------------------


def test_episodes_over_the_server_equal_the_in_process_env(server_url) -> None:
    env = local_env()
    with TextGymClient(base_url=server_url).sync() as client:
        played = 0
        for seed in range(4):
            _, info = env.reset(seed=seed)
            for answer in answers(env, info):
                obs, info = env.reset(seed=seed)
                result = client.reset(seed=seed)
                assert result.reward is None and not result.done
                assert result.observation.info == served_info(info)
                assert result.observation.prompt_text == info["prompt_text"]
                assert result.observation.prompt_ids == prompt_ids(env, obs)
                if isinstance(answer, str):
                    obs, reward, terminated, truncated, info = env.step(answer)
                else:
                    obs, reward, terminated, truncated, info = play_token_ids(env, answer)
                result = client.step(answer)
                assert (result.reward, result.done, result.observation.truncated) == (reward, True, truncated)
                assert result.observation.info == served_info(info)
                assert client.state().step_count == 1 and client.state().done
                played += 1
        assert played == 36
        # options pick the sample, as in-process
        _, info = env.reset(options={"index": 5})
        assert client.reset(options={"index": 5}).observation.info == served_info(info)


def play_token_ids(env: SequenceLevel, ids: list[int]):
    """The in-process reference for a token-id answer: its tokens, cut to max_new_tokens, then EOS if room."""
    setup = env.unwrapped.setup
    tokens = ids[: setup.max_new_tokens] + ([setup.eos_id] if len(ids) < setup.max_new_tokens else [])
    for token in tokens:
        obs, reward, terminated, truncated, info = env.env.step(token)
        if terminated or truncated:
            return obs, reward, terminated, truncated, info
    raise AssertionError("the episode did not end")


def test_rewards_differ_with_the_answer_so_the_equality_above_means_something(server_url) -> None:
    with TextGymClient(base_url=server_url).sync() as client:
        rewards = set()
        for answer in ["sun", "cat", "dog sun cat"]:
            client.reset(seed=0)
            rewards.add(client.step(answer).reward)
    assert len(rewards) > 1


def test_multi_turn_episodes_take_one_step_per_turn() -> None:
    textgym.register_env("test/ServedTwoTurnCopy-v0", TwoTurnCopy, kwargs={"max_new_tokens": 8, "max_prompt_tokens": 16})
    env = local_env("test/ServedTwoTurnCopy-v0")
    with Server("test/ServedTwoTurnCopy-v0", port=0, num_envs=1, model=TINY, split=SPLIT) as server:
        with TextGymClient(base_url=server.url).sync() as client:
            for seed in range(3):
                obs, info = env.reset(seed=seed)
                result = client.reset(seed=seed)
                words = info["references"][0]
                for turn, answer in enumerate([words, words]):  # the second turn wants them reversed
                    obs, reward, terminated, truncated, info = env.step(answer)
                    result = client.step(answer)
                    assert (result.reward, result.done) == (reward, turn == 1)
                    assert result.observation.info == served_info(info)
                    if turn == 0:  # the context of the next answer: the prompt, the answer, the env's reply
                        context = obs["input_ids"][obs["attention_mask"] == 1].tolist()
                        assert result.observation.prompt_ids == context and context[-len(info["reply_ids"]):] == \
                            info["reply_ids"]
                    else:
                        assert result.observation.prompt_ids == prompt_ids(env, obs)
                    assert client.state().step_count == turn + 1
                assert info["turns"] == 2 and result.observation.info["metrics"]["reward"] < 1.0


def test_code_answers_run_in_the_server_with_the_in_process_verdicts() -> None:
    env = local_env("textgym/CodeGeneration-v0")
    rewards = []
    with Server("textgym/CodeGeneration-v0", port=0, num_envs=1, model=TINY, split=SPLIT) as server:
        with TextGymClient(base_url=server.url).sync() as client:
            for sample in env.unwrapped.setup.samples[:2]:
                for answer in [sample.meta["canonical_solution"], "    return None\n"]:
                    env.reset(options={"sample_id": sample.id})
                    client.reset(options={"sample_id": sample.id})
                    _, reward, _, _, info = env.step(answer)
                    result = client.step(answer)
                    assert result.reward == reward and result.observation.info == served_info(info)
                    rewards.append(reward)
    assert rewards[0] == rewards[2] == 1.0 and rewards[1] < 1.0 and rewards[3] < 1.0


# -- concurrency, capacity, disconnects ---------------------------------------------------------------


async def open_sessions(url: str, n: int, timeout: float = 10.0) -> list[TextGymClient]:
    """n connected clients whose sessions are live (a slot freed a moment ago may still be closing: retry)."""
    clients: list[TextGymClient] = []
    deadline = time.monotonic() + timeout
    while len(clients) < n:
        client = TextGymClient(base_url=url)
        await client.connect()
        try:
            await client.state()
            clients.append(client)
        except ServerError as err:
            await client.close()
            if err.code != "CAPACITY_REACHED" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    return clients


def test_eight_concurrent_sessions_keep_their_own_episodes(server_url) -> None:
    env = local_env()
    expected = []
    for seed in range(NUM_ENVS):
        _, info = env.reset(seed=seed)
        answer = info["references"][0] if seed % 2 else "sun"
        expected.append((answer, served_info(info), *env.step(answer)[1:]))

    async def play() -> tuple[list, list, str]:
        clients = await open_sessions(server_url, NUM_ENVS)
        try:
            # every session resets before any steps: each must keep its own sample
            resets = await asyncio.gather(*(c.reset(seed=s) for s, c in enumerate(clients)))
            steps = await asyncio.gather(*(c.step(expected[s][0]) for s, c in enumerate(clients)))
            extra = TextGymClient(base_url=server_url)
            with pytest.raises(ServerError) as err:
                await extra.reset(seed=0)
            await extra.close()
            return resets, steps, str(err.value)
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    resets, steps, refused = asyncio.run(play())
    assert len({r.observation.info["sample_id"] for r in resets}) > 1
    for (_, reset_info, reward, _, truncated, info), first, last in zip(expected, resets, steps):
        assert first.observation.info == reset_info
        assert (last.reward, last.done, last.observation.truncated) == (reward, True, truncated)
        assert last.observation.info == served_info(info)
    assert len({s.reward for s in steps}) > 1
    assert "CAPACITY_REACHED" in refused and f"{NUM_ENVS}/{NUM_ENVS} sessions" in refused


def test_clients_that_vanish_mid_episode_leave_the_server_healthy(server_url) -> None:
    ws_url = server_url.replace("http", "ws") + "/ws"

    async def vanish() -> None:
        for k in range(NUM_ENVS):
            ws = await websockets.connect(ws_url)
            await ws.send(json.dumps({"type": "reset", "data": {"seed": k}}))
            assert json.loads(await ws.recv())["type"] == "observation"
            if k % 2:  # gone while its step is being played
                await ws.send(json.dumps({"type": "step", "data": {"text": "cat sun"}}))
            ws.transport.abort()  # no close frame: the TCP connection just drops

    async def full_house() -> list[float]:
        clients = await open_sessions(server_url, NUM_ENVS)  # fails if a vanished session kept its slot
        try:
            await asyncio.gather(*(c.reset(seed=s) for s, c in enumerate(clients)))
            steps = await asyncio.gather(*(c.step("cat") for c in clients))
            return [s.reward for s in steps]
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(vanish())
    assert http(server_url, "/health") == (200, {"status": "healthy"})
    assert len(asyncio.run(full_house())) == NUM_ENVS


# -- malformed requests ---------------------------------------------------------------------------------


def test_malformed_requests_get_a_clear_error_and_the_session_goes_on(server_url) -> None:
    ws_url = server_url.replace("http", "ws") + "/ws"
    step = lambda data: json.dumps({"type": "step", "data": data})  # noqa: E731
    reset = lambda data: json.dumps({"type": "reset", "data": data})  # noqa: E731
    cases = [  # (message, error code, words the error must contain)
        (step({"text": "cat"}), "EXECUTION_ERROR", "step before reset"),
        ("{not json", "INVALID_JSON", "Invalid JSON"),
        (json.dumps({"type": "jump"}), "UNKNOWN_TYPE", "jump"),
        (json.dumps({"type": "step"}), "VALIDATION_ERROR", "Field required"),
        (reset({"seed": -1}), "EXECUTION_ERROR", "seed must be a non-negative integer"),
        (reset({"seed": 0, "temperature": 1}), "EXECUTION_ERROR", "unknown reset argument(s) ['temperature']"),
        (reset({"options": {"index": 10_000}}), "EXECUTION_ERROR", "index=10000 is out of range"),
        (reset({"seed": 0}), None, None),
        (step({"text": "cat", "colour": "red"}), "VALIDATION_ERROR", "Extra inputs are not permitted"),
        (step({"text": 3}), "VALIDATION_ERROR", "Input should be a valid string"),
        (step({"token_ids": "1 2"}), "VALIDATION_ERROR", "Input should be a valid list"),
        (step({"token_ids": [1.5]}), "VALIDATION_ERROR", "Input should be a valid integer"),
        (step({"token_ids": [-1]}), "VALIDATION_ERROR", "greater than or equal to 0"),
        (step({}), "VALIDATION_ERROR", "exactly one of 'text'"),
        (step({"text": "cat", "token_ids": [1]}), "VALIDATION_ERROR", "exactly one of 'text'"),
        (step({"text": "x" * (MAX_ANSWER_CHARS + 1)}), "VALIDATION_ERROR", f"at most {MAX_ANSWER_CHARS} characters"),
        (step({"token_ids": [10**9]}), "EXECUTION_ERROR", "action 1000000000 is out of range"),
        (step({"text": "cat"}), None, None),
        (step({"text": "cat"}), "EXECUTION_ERROR", "the episode has ended"),
    ]

    async def send_all() -> list[dict]:
        async with websockets.connect(ws_url) as ws:
            replies = []
            for message, _, _ in cases:
                await ws.send(message)
                replies.append(json.loads(await ws.recv()))
            return replies

    for (message, code, words), reply in zip(cases, asyncio.run(send_all())):
        if code is None:
            assert reply["type"] == "observation", reply
            continue
        assert reply["type"] == "error" and reply["data"]["code"] == code, (message[:80], reply)
        assert words in json.dumps(reply["data"]), (message[:80], reply)

    # the typed client raises the server's reason; the session goes on
    with TextGymClient(base_url=server_url).sync() as client:
        client.reset(seed=0)
        with pytest.raises(ServerError, match=r"server error EXECUTION_ERROR: action 1000000000 is out of range"):
            client.step([10**9])
        with pytest.raises(ServerError, match=r"VALIDATION_ERROR: Invalid message: colour: Extra inputs are not"):
            client.step({"text": "cat", "colour": "red"})
        assert client.step({"text": "cat"}).done


def test_malformed_http_requests_get_a_clear_error(server_url) -> None:
    status, body = http(server_url, "/step", b"{not json")
    assert status == 422 and "JSON decode error" in json.dumps(body)
    status, body = http(server_url, "/reset", json.dumps({"seed": -1}).encode())
    assert status == 422 and "greater than or equal to 0" in json.dumps(body)
    status, body = http(server_url, "/step", json.dumps({"action": {"text": "cat"}}).encode())
    assert status == 409 and "step before reset" in body["detail"] and "WebSocket /ws" in body["detail"]
    status, body = http(server_url, "/reset", json.dumps({"seed": 3}).encode())
    _, info = local_env().reset(seed=3)
    assert status == 200 and body["observation"]["info"] == served_info(info)
    status, body = http(server_url, "/schema")
    assert status == 200 and {"text", "token_ids"} <= set(body["action"]["properties"])
    assert http(server_url, "/health") == (200, {"status": "healthy"})


# -- the command ----------------------------------------------------------------------------------------------


def test_serve_without_openenv_is_one_line_naming_the_extra(monkeypatch, capsys) -> None:
    for name in [m for m in sys.modules if m == "openenv" or m.startswith("openenv.")] + ["openenv"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import openenv...` now fails
    monkeypatch.delitem(sys.modules, "textgym.integrations.openenv")
    assert main(["list"]) == 0  # other commands do not need it
    capsys.readouterr()
    assert main(["serve", ENV_ID, "--model", TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'textgym[serve]'" in err


def test_serve_refuses_bad_ids_and_busy_ports(server_url, capsys) -> None:
    assert main(["serve", "textgym/Cpy-v0"]) == 2
    assert "did you mean 'textgym/Copy-v0'" in capsys.readouterr().err
    port = int(server_url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        Server(ENV_ID, port=port, model=TINY)


def test_readme_section_runs_as_written(capsys) -> None:
    from tests.test_authoring import readme_block

    exec(compile(readme_block("openenv-serve"), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "Copy:" in out and "1.0 True" in out
    assert np.allclose(json.loads(out.strip().splitlines()[-1]), 1.0)
