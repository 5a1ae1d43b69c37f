"""textgym.integrations.trl: env datasets and rewards for TRL, and TRL reward functions in register_task.

* every registered id: the bridge's reward equals the env's reward on the same texts
  (plain and conversational completions; code envs run their sandbox);
* the dataset's prompts are the env's prompts (chat template applied, or the plain
  string; cut to ``max_prompt_tokens`` like the env cuts them);
* TRL's own ``GRPOTrainer`` trains tiny-random on ``dataset("textgym/Copy-v0")``
  with ``reward_function("textgym/Copy-v0")``;
* ``register_task(reward=...)`` calls a TRL reward function the TRL way and refuses
  a function of neither shape.
"""

from __future__ import annotations

import math
import sys

import gymnasium as gym
import pytest

import textgym
from tests.test_authoring import readme_block
from textgym.envsetup import ENV_KWARGS, make_task
from textgym.errors import ConfigError, DependencyNotInstalled, RewardError
from textgym.integrations.trl import dataset, reward_function
from textgym.wrappers import SequenceLevel

IDS = sorted(i for i, e in textgym.ENVS.items()  # single-turn ids (built-in and plugins): TRL scores one answer
             if not make_task(e.task, {k: v for k, v in e.kwargs.items() if k not in ENV_KWARGS}, i).multi_turn)


def answers(sample: textgym.Sample) -> list[str]:
    """A good answer (the reference, or the whole canonical function for code), a poor one and, for text, a partial one."""
    if "canonical_solution" in sample.meta:
        return [f"```python\n{sample.meta['problem']}{sample.meta['canonical_solution']}```", "I do not know."]
    words = sample.references[0].split()
    return [sample.references[0], "I do not know.", " ".join(words[: max(1, len(words) // 2)])]


@pytest.mark.parametrize("env_id", IDS)
def test_bridge_scores_equal_env_rewards(env_id):
    env = SequenceLevel(gym.make(env_id, model="tiny-random", split="test"))
    samples = env.unwrapped.setup.samples[:2]
    played = []  # (text the env scored, sample id, env reward)
    for index, sample in enumerate(samples):
        for text in answers(sample):
            env.reset(options={"index": index})
            _, reward, terminated, truncated, info = env.step(text)
            assert terminated or truncated
            played.append((info["generated_text"], info["sample_id"], reward))
    texts, ids, rewards = map(list, zip(*played))
    assert max(rewards) > 0  # the good answers score: the comparison is not between zeros

    reward = reward_function(env_id, model="tiny-random", split="test")
    assert reward.__name__ == env_id.rsplit("/", 1)[-1]
    columns = {"sample_id": ids, "split": ["test"] * len(ids), "prompts": ["unused"] * len(ids)}
    assert reward(completions=texts, **columns) == rewards
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    assert reward(completions=conversational, **columns) == rewards


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("textgym/Copy-v0", {}),  # not a chat task: the plain prompt string
        ("textgym/Translation-v0", {}),
        ("textgym/Summarization-v0", {"max_prompt_tokens": 120}),  # documents cut to fit
    ],
)
def test_dataset_prompts_are_the_env_prompts(env_id, kwargs):
    ds = dataset(env_id, split="test", model="tiny-random", **kwargs)
    env = gym.make(env_id, model="tiny-random", split="test", **kwargs)
    setup = env.unwrapped.setup
    assert ds.column_names == ["prompt", "sample_id", "split", "references"]
    assert len(ds) == len(setup.samples)
    for index in range(3):
        row = ds[index]
        _, info = env.reset(options={"index": index})
        assert (row["sample_id"], row["split"], row["references"]) == (info["sample_id"], "test", info["references"])
        if setup.task.chat:
            assert [m["role"] for m in row["prompt"]] == [m["role"] for m in setup.task.messages(setup.samples[index])]
            shown = setup.tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        else:
            shown = row["prompt"]
        assert shown == info["prompt_text"]
    if kwargs:  # the env cut these documents, and so did the dataset
        full = setup.task.messages(setup.samples[0])[-1]["content"]
        assert len(ds[0]["prompt"][-1]["content"]) < len(full)


def test_reward_function_refuses_what_it_cannot_score():
    reward = reward_function("textgym/Copy-v0", model="tiny-random", split="test")
    with pytest.raises(ConfigError, match=r"needs the completions and the columns sample_id and split.*\['completions'\]"):
        reward(prompts=["p"], completions=["dog"])
    with pytest.raises(ConfigError, match="no sample 'nope' in split 'test'"):
        reward(completions=["dog"], sample_id=["nope"], split=["test"])
    sample_id = reward.setup.samples[0].id
    with pytest.raises(RewardError, match="a TRL completion must be a string or a list of messages"):
        reward(completions=[{"content": "dog"}], sample_id=[sample_id], split=["test"])
    with pytest.raises(ConfigError, match="multi-turn"):
        reward_function("textgym/Dialogue-v0", model="tiny-random", split="test", turns=2)
    with pytest.raises(gym.error.Error):
        reward_function("textgym/Nope-v0")


def test_dataset_without_datasets_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DependencyNotInstalled, match=r"pip install 'textgym\[hf\]'"):
        dataset("textgym/Copy-v0", model="tiny-random")


def test_grpo_trainer_trains_on_a_textgym_env(tmp_path):
    """TRL's own GRPOTrainer, a few steps on Copy-v0 with the env's reward."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from textgym.models import resolve_model_path

    torch.manual_seed(0)
    args = GRPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=2, logging_steps=1, seed=0,
        per_device_train_batch_size=4, num_generations=2, max_completion_length=6, save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=resolve_model_path("tiny-random"), reward_funcs=reward_function("textgym/Copy-v0", model="tiny-random"),
        train_dataset=dataset("textgym/Copy-v0", model="tiny-random"), args=args,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [entry for entry in trainer.state.log_history if "rewards/Copy-v0/mean" in entry]
    assert len(logs) == 2
    for entry in logs:  # TRL's reward column is the env's copy accuracy, which the bridge also logs
        assert 0.0 <= entry["rewards/Copy-v0/mean"] <= 1.0
        assert math.isclose(entry["Copy-v0/copy_accuracy"], entry["rewards/Copy-v0/mean"], abs_tol=1e-6)


# -- the other way: TRL reward functions in register_task ---------------------------------------------
CAPITALS = [
    {"id": "fr", "prompt": "France", "references": ["Paris"], "answer": "Paris"},
    {"id": "pe", "prompt": "Peru", "references": ["Lima"], "answer": "Lima"},
]


def _play(env_id: str, text: str, **kwargs) -> tuple[float, dict]:
    env = SequenceLevel(gym.make(env_id, model="tiny-random", split="train", **kwargs))
    env.reset(options={"sample_id": "fr"})
    _, reward, _, _, info = env.step(text)
    return reward, info


def test_register_task_calls_a_trl_reward_function_the_trl_way():
    calls = []

    def exact(prompts, completions, answer, **kwargs):
        calls.append({"prompts": prompts, "completions": completions, "answer": answer, **kwargs})
        return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]

    textgym.register_task("trl/Capitals-v0", samples={"train": CAPITALS}, prompt="Capital of {prompt}?",
                          reward=exact, max_new_tokens=8)
    assert _play("trl/Capitals-v0", "Paris")[0] == 1.0
    assert _play("trl/Capitals-v0", "Lyon")[0] == 0.0
    call = calls[-1]
    assert call["prompts"] == [[{"role": "user", "content": "Capital of France?"}]]
    assert call["completions"] == [[{"role": "assistant", "content": "Lyon"}]]
    assert (call["answer"], call["sample_id"], call["references"]) == (["Paris"], ["fr"], [["Paris"]])

    # chat=False: prompts and completions are strings (TRL's standard format); **kwargs only: marked
    def longer(**kwargs):
        calls.append(kwargs)
        return [float(len(c)) for c in kwargs["completions"]]

    textgym.register_task("trl/Plain-v0", samples={"train": CAPITALS}, prompt="Capital of {prompt}?",
                          chat=False, reward=textgym.trl_reward(longer), max_new_tokens=8)
    assert _play("trl/Plain-v0", "Paris")[0] == 5.0
    assert calls[-1]["prompts"] == ["Capital of France?\n"] and calls[-1]["completions"] == ["Paris"]
    # an env kwarg reward= is recognised the same way
    assert _play("trl/Plain-v0", "Lima", reward=lambda prompts, completions, **kw: [2.0] * len(completions))[0] == 2.0


def test_reward_functions_of_the_wrong_shape_are_refused():
    def one(texts):
        return [0.0] * len(texts)

    with pytest.raises(ConfigError, match=r"task 'trl/Bad-v0'.*one\(texts\) has the wrong shape.*trl_reward"):
        textgym.register_task("trl/Bad-v0", samples=CAPITALS, reward=one)
    assert "trl/Bad-v0" not in textgym.ENVS

    def kwargs_only(**kwargs):
        return [0.0] * len(kwargs["completions"])

    with pytest.raises(ConfigError, match="wrong shape"):
        textgym.register_task("trl/Bad-v0", samples=CAPITALS, reward=kwargs_only)  # unmarked: cannot tell
    with pytest.raises(ConfigError, match=r"trl_reward\(\): one\(texts\) cannot be called the TRL way"):
        textgym.trl_reward(one)

    # built-in tasks call rewards as f(texts, samples): a TRL function is refused by name
    with pytest.raises(ConfigError, match=r"kwargs_only\(\*\*kwargs\) is a TRL reward function.*register_task"):
        gym.make("textgym/Copy-v0", model="tiny-random", reward=textgym.trl_reward(kwargs_only))

    # a TRL function that cannot take every column fails at the first score, naming them
    def narrow(prompts, completions):
        return [0.0] * len(completions)

    textgym.register_task("trl/Narrow-v0", samples={"train": CAPITALS}, reward=narrow, max_new_tokens=4)
    with pytest.raises(RewardError, match=r"cannot take the columns \['answer', 'completions', 'prompts'.*\*\*kwargs"):
        _play("trl/Narrow-v0", "Paris")


def test_readme_trl_section_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(compile(readme_block("trl"), "README.md", "exec"), namespace)
    assert namespace["trainer"].state.global_step == 2
    exec(compile(readme_block("trl-register"), "README.md", "exec"), namespace)
