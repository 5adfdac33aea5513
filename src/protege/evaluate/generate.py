"""Batched generation: prompts sorted by length, left padding, KV cache, one progress bar."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def chat_prompts(tokenizer, chats: list[list[dict]]) -> list[list[int]]:
    return [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
            for c in chats]


@torch.inference_mode()
def generate(model, tokenizer, chats: list[list[dict]], max_new_tokens: int = 32, batch_size: int = 32,
             temperature: float = 0.0, seed: int = 0, desc: str = "generate") -> list[str]:
    """One reply per chat, in the order given. Sorting by length keeps padding (wasted work) small."""
    prompts = chat_prompts(tokenizer, chats)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    torch.manual_seed(seed)
    with tqdm(total=len(prompts), desc=desc, unit="item", leave=False) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [prompts[i] for i in chunk]}, padding_side="left",
                                  return_tensors="pt").to(model.device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
            for i, row in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
                replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            bar.update(len(chunk))
    return replies
