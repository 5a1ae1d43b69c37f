"""A complete new task in a few lines: arithmetic word problems, exact-match reward, PPO.

    python examples/custom_task.py
"""

import random

import gymnasium as gym

import textgym
from agents import TextPPO

NAMES = ["Ada", "Ben", "Chloé", "Dev"]
THINGS = ["apples", "books", "coins", "shells"]


def problem(rng: random.Random) -> dict:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    who, what = rng.choice(NAMES), rng.choice(THINGS)
    text = f"{who} has {a} {what} and finds {b} more. How many {what} does {who} have now?"
    return {"id": f"{who}-{a}-{b}-{what}", "prompt": text, "references": [str(a + b)]}


def exact_number(texts, samples):
    """1.0 when the first number in the answer is the right one."""
    def first_number(text):
        digits = "".join(c if c.isdigit() else " " for c in text).split()
        return digits[0] if digits else None

    return [float(first_number(t) == s.references[0]) for t, s in zip(texts, samples)]


rng = random.Random(0)
textgym.register_task(
    "my/WordProblems-v0",
    samples=[problem(rng) for _ in range(500)],
    prompt="{prompt} Answer with the number only.",
    reward=exact_number,
    allowed_tokens=[str(d) for d in range(10)] + [" "],  # constrained decoding: digits only
    max_new_tokens=3,
)

if __name__ == "__main__":
    env = gym.make_vec("my/WordProblems-v0", num_envs=8, model="tiny-random")
    agent = TextPPO("LMPolicy", env, model="tiny-random", seed=0, learning_rate=1e-3, verbose=1)
    agent.learn(total_timesteps=8 * 3 * 4)  # four rollouts of 8 episodes, a few updates each
    print(agent.generate(["Ada has 2 coins and finds 3 more. How many coins does Ada have now?"], max_new_tokens=3))
