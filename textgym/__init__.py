"""textgym: text tasks as Gymnasium environments.

``import textgym`` registers every id of ``envs_registry.yaml`` and of
installed plugins (entry-point group ``textgym.envs``)::

    import gymnasium as gym
    import textgym  # noqa: F401

    env = gym.make("textgym/Translation-v0", model="tiny-random")
    envs = gym.make_vec("textgym/Translation-v0", num_envs=8, model="tiny-random")
"""

from textgym.authoring import SimpleTask, register_task
from textgym.data.base import Sample
from textgym.env import TextEnv
from textgym.registry import ENVS, load_plugins, register_builtin, register_env, register_from_yaml
from textgym.rewards.base import Reward, RewardOutput, trl_reward
from textgym.tasks.base import Task
from textgym.vector import TextVectorEnv

__version__ = "0.1.0"

BUILTIN_IDS = tuple(register_builtin())
PLUGIN_IDS = tuple(load_plugins())

__all__ = [
    "ENVS",
    "Reward",
    "RewardOutput",
    "Sample",
    "SimpleTask",
    "Task",
    "TextEnv",
    "TextVectorEnv",
    "register_env",
    "register_from_yaml",
    "register_task",
    "trl_reward",
]
