"""The Gymnasium loop on a text task, then the batched vector env.

    python examples/quickstart.py
"""

import gymnasium as gym
import numpy as np

import textgym  # noqa: F401  (registers the envs)

env = gym.make("textgym/Translation-v0", model="tiny-random", split="test", render_mode="ansi")
obs, info = env.reset(seed=0)
print("prompt:", info["prompt"], "| reference:", info["references"])
done = False
while not done:
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    done = terminated or truncated
print(env.render())
print("reward:", reward, "metrics:", info["metrics"])

envs = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
obs, infos = envs.reset(seed=0)
masks = envs.unwrapped.action_masks()
rng = np.random.default_rng(0)
returns = np.zeros(8)
for _ in range(6):  # Copy-v0 episodes end within 6 tokens; a slot that ends early restarts next step
    actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
    obs, rewards, terminated, truncated, infos = envs.step(actions)
    returns += rewards
print("rewards collected by the 8 slots:", returns.round(3))
