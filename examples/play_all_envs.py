"""One episode of every registered env with a model: prompt, output, reference, reward.

    python examples/play_all_envs.py [--model smollm2-135m-instruct] [--seed 0]
"""

import argparse

import gymnasium as gym

import textgym
from textgym.models import load_model
from textgym.rollout import lm_responder, play_episodes

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--split", default="test")
args = parser.parse_args()

model = load_model(args.model)
for env_id in sorted(i for i, e in textgym.ENVS.items() if e.source == "textgym"):
    envs = gym.make_vec(env_id, num_envs=1, model=args.model, split=args.split)
    (info,) = play_episodes(envs, lm_responder(model), seed=args.seed)
    print(f"\n=== {env_id} (sample {info['sample_id']}) ===")
    print(f"prompt:    {info['prompt'][:600]}")
    print(f"output:    {info['generated_text'][:600]}")
    print(f"reference: {(info['references'] or ['(executed tests)'])[0][:600]}")
    print(f"reward:    {info['reward']:.4f}   metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in info["metrics"].items()))
