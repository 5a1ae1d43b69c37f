"""Train TextPPO on the Copy sanity task with the tiny random model (about a minute on a CPU).

    python examples/train_copy.py
"""

import gymnasium as gym
import numpy as np
import torch

import textgym  # noqa: F401  (registers the env ids)
from agents import TextPPO

torch.set_num_threads(1)  # tiny matrices: extra threads only add overhead

env = gym.make_vec("textgym/Copy-v0", num_envs=64, model="tiny-random")
agent = TextPPO("LMPolicy", env, model="tiny-random", learning_rate=3e-3, n_epochs=8, batch_size=32, kl_coef=0.0,
                seed=0, verbose=0)
agent.learn(total_timesteps=8_000)

rewards = [h["rollout/ep_rew_mean"] for h in agent.history]
print(f"{len(rewards)} updates: mean reward of the first 5 = {np.mean(rewards[:5]):.3f}, last 5 = {np.mean(rewards[-5:]):.3f}")
print(agent.generate(["Copy: red cat sun\nAnswer:"], max_new_tokens=6, deterministic=True))
agent.save("runs/copy")
agent = TextPPO.load("runs/copy", env=env)  # resumes exactly: agent.learn(..., reset_num_timesteps=False)
