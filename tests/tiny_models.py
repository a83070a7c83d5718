"""Tiny random base models built from configs, for fast tests."""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

VOCAB = 64


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    return T5ForConditionalGeneration(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


BUILDERS = {"llama": tiny_llama, "t5": tiny_t5, "gpt2": tiny_gpt2}


def batch(kind: str, bsz: int = 3, length: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """A padded batch: causal LMs get prompt-masked labels, T5 gets decoder labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (bsz, length), generator=g)
    mask = torch.ones(bsz, length, dtype=torch.long)
    mask[0, :2] = 0  # left padding in row 0
    if kind == "t5":
        labels = torch.randint(3, VOCAB, (bsz, 4), generator=g)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    labels = ids.clone()
    labels[:, : length // 2] = -100  # prompt
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
