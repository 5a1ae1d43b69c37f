"""textgym tasks in other libraries' training loops: TRL reward functions and datasets, OpenEnv servers."""
