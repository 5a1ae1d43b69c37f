"""Free-form generation from prompt strings with a TextPPO policy (KV-cached sampling)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from agents.policies import positions_from_mask
from agents.sampling import generator_on, sample_tokens

if TYPE_CHECKING:
    from agents.ppo import TextPPO


def encode_prompts(tokenizer: object, prompts: list[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt, wrapped in the chat template when ``chat`` and the tokenizer has one."""
    out = []
    for prompt in prompts:
        if chat and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        else:
            text = prompt
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    return out


@torch.no_grad()
def generate_texts(
    agent: TextPPO, prompts: list[str], max_new_tokens: int | None, deterministic: bool, chat: bool | None
) -> list[str]:
    """See :meth:`agents.TextPPO.generate`."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of strings, got {prompts!r}")
    if not prompts:
        return []
    setup = agent.env.setup
    tokenizer = setup.tokenizer
    max_new = setup.max_new_tokens if max_new_tokens is None else max_new_tokens
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    chat = setup.task.chat if chat is None else chat
    encoded = encode_prompts(tokenizer, prompts, chat)
    width = max(len(e) for e in encoded)  # left-padded to the longest prompt only
    policy = agent.policy
    device = policy.device
    ids = torch.full((len(encoded), width), setup.pad_id, dtype=torch.long, device=device)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :] = torch.tensor(e, dtype=torch.long)
        attn[i, width - len(e) :] = 1
    policy.set_training_mode(False)
    logits, past, _ = policy.decode_step(ids, attn, positions_from_mask(attn))
    generator = generator_on(agent._torch_gen, device)  # draws where the logits are (CUDA too)
    done = [False] * len(encoded)
    outputs: list[list[int]] = [[] for _ in encoded]
    for _ in range(max_new):
        tokens = policy.to_token(sample_tokens(policy.filtered_logits(logits), generator, deterministic))
        for i, token in enumerate(tokens.tolist()):  # one host copy per step
            if done[i]:
                continue
            if token == setup.eos_id:
                done[i] = True
            else:
                outputs[i].append(token)
        if all(done):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        logits, past, _ = policy.decode_step(tokens.unsqueeze(1), attn, attn.sum(1, keepdim=True) - 1, past)
    return tokenizer.batch_decode(outputs, skip_special_tokens=True)
