"""Rewards: one signature for every task, built-in metrics by name, composition.

See :mod:`textgym.rewards.base` for the contract.  Metric functions are
registered here by import path and loaded on first use.
"""

from textgym.rewards.base import (
    METRICS,
    Reward,
    RewardOutput,
    RewardSpec,
    compute_metrics,
    metric_info,
    register_metric,
)

_TEXT = "textgym.rewards.text"

register_metric("chrf", f"{_TEXT}:sacrebleu_scores", 0.0, 1.0, "sacrebleu sentence chrF / 100")
register_metric("bleu", f"{_TEXT}:sacrebleu_scores", 0.0, 1.0, "sacrebleu sentence BLEU / 100")
register_metric("ter", f"{_TEXT}:sacrebleu_scores", 0.0, float("inf"), "sacrebleu sentence TER / 100 (lower is better)")
# Cheap metrics stay in-process (parallel=False): shipping them to scoring
# workers costs more than computing them.
register_metric("length_ratio", f"{_TEXT}:length_scores", 0.0, float("inf"), "output words / reference words", parallel=False)
register_metric("length_penalty", f"{_TEXT}:length_scores", -1.0, 0.0, "-|1 - length_ratio|, clipped at -1", parallel=False)
register_metric("words", f"{_TEXT}:length_scores", 0.0, float("inf"), "whitespace-separated words of the output", parallel=False)
register_metric(
    "placeholders", "textgym.tasks.translation:placeholder_scores", 0.0, 1.0,
    "fraction of the source's format placeholders (%(name)s, {obj}, %s) kept in the output", parallel=False,
)
# Translation's guard against copying the source (textgym/rewards/language.py, textgym/tasks/translation.py)
_LANGUAGE = "textgym.rewards.language:language_scores"
register_metric("target_language", _LANGUAGE, 0.0, 1.0,
                "1 if lingua (choosing between the sample's source and target language) detects the target", parallel=False)
register_metric("language_guard", _LANGUAGE, 0.0, 1.0,
                "target_language, or 1 when the reference itself is not detected as the target", parallel=False)
_SOURCE = "textgym.tasks.translation:source_scores"
register_metric("copy_score", _SOURCE, 0.0, 1.0, "sacrebleu chrF / 100 of the output against the SOURCE", parallel=False)
register_metric("source_copy", _SOURCE, 0.0, 1.0, "1 if the output is the source (case and spacing aside)", parallel=False)
register_metric(
    "copy_accuracy", "textgym.tasks.copy:copy_scores", 0.0, 1.0,
    "words reproduced at the right position / max(output words, target words)", parallel=False,
)
_GUESS = "textgym.tasks.guess:guess_scores"
register_metric("guess_closeness", _GUESS, 0.0, 1.0, "GuessNumber: 1 - |guess - target| / 9 (0 without a digit)",
                parallel=False)  # fmt: skip
register_metric("guess_correct", _GUESS, 0.0, 1.0, "GuessNumber: 1 for the hidden number", parallel=False)
register_metric("game_score", _GUESS, 0.0, 1.0, "GuessNumber: the mean guess_closeness of the game's guesses so far",
                parallel=False)  # fmt: skip

# Summarization / dialogue metrics (textgym/rewards/rouge.py, semantic.py, diversity.py)
_ROUGE = "textgym.rewards.rouge:rouge_scores"
register_metric("rouge1", _ROUGE, 0.0, 1.0, "rouge-score ROUGE-1 F1 (stemmed), best over references")
register_metric("rouge2", _ROUGE, 0.0, 1.0, "rouge-score ROUGE-2 F1 (stemmed), best over references")
register_metric("rougeL", _ROUGE, 0.0, 1.0, "rouge-score ROUGE-L F1 (stemmed), best over references")
register_metric(
    "semantic_similarity", "textgym.rewards.semantic:semantic_scores", -1.0, 1.0,
    "cosine similarity of all-MiniLM-L6-v2 sentence embeddings (output vs best reference)", parallel=False,
)
_DIVERSITY = "textgym.rewards.diversity:diversity_scores"
register_metric("distinct_2", _DIVERSITY, 0.0, 1.0, "distinct bigrams / bigrams of the output", parallel=False)
register_metric("repetition", _DIVERSITY, -1.0, 0.0, "minus the fraction of repeated word 3-grams (0 = none)", parallel=False)

# Code metrics (textgym/rewards/execution.py, through textgym/sandbox/)
_EXEC = "textgym.rewards.execution:execution_scores"
register_metric("pass_rate", _EXEC, 0.0, 1.0, "fraction of the problem's asserts that pass in the sandbox", parallel=False)
register_metric("all_pass", _EXEC, 0.0, 1.0, "1 if every assert passes, else 0", parallel=False)

__all__ = [
    "METRICS",
    "Reward",
    "RewardOutput",
    "RewardSpec",
    "compute_metrics",
    "metric_info",
    "register_metric",
]
