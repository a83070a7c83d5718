"""Shared fixtures. Data fixtures (prefix `data_`): tiny byte-level tokenizers and task-file writers."""
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"<pad>": 0, "</s>": 1, "<s>": 2}


def _byte_tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (no merges); `template` adds special tokens, e.g. "$A </s>"."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {**SPECIAL_TOKENS, **{ch: i + len(SPECIAL_TOKENS) for i, ch in enumerate(alphabet)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if template:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, SPECIAL_TOKENS[t]) for t in ("</s>", "<s>") if t in template]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


@pytest.fixture(scope="session")
def data_causal_tokenizer():
    """Byte-level causal tokenizer that adds no special tokens (GPT-2/SmolLM style)."""
    return _byte_tokenizer(None)


@pytest.fixture(scope="session")
def data_bos_tokenizer():
    """Byte-level causal tokenizer that prepends <s> (Llama style)."""
    return _byte_tokenizer("<s> $A")


@pytest.fixture(scope="session")
def data_seq2seq_tokenizer():
    """Byte-level tokenizer that appends </s> (T5 style)."""
    return _byte_tokenizer("$A </s>")


def _task_dict(name: str = "task001_demo", n_instances: int = 10) -> dict:
    """A valid task in the official schema with `n_instances` instances."""
    return {
        "Categories": ["Demo Category"],
        "Definition": ["Answer the question"],
        "Positive Examples": [
            {"input": "What is 1+1", "output": "2", "explanation": "Sum."},
            {"input": "Capital of France?", "output": "Paris.", "explanation": "Known."},
            {"input": "Third example", "output": "three", "explanation": "-"},
        ],
        "Negative Examples": [{"input": "What is 2+2", "output": "5", "explanation": "Wrong."}],
        "Instances": [
            {"id": f"{name}-{i}", "input": f"question {i}", "output": [f"answer {i}"] + (["alt"] if i == 0 else [])}
            for i in range(n_instances)
        ],
    }


@pytest.fixture
def data_task_dict():
    """Factory (name, n_instances) -> a valid task dict in the official schema."""
    return _task_dict


@pytest.fixture
def data_write_task(tmp_path):
    """Write a task file into tmp_path/tasks: (name, n_instances=10, content=None) -> path; content may be a str."""
    directory = tmp_path / "tasks"
    directory.mkdir(exist_ok=True)

    def write(name: str = "task001_demo", n_instances: int = 10, content=None) -> Path:
        path = directory / f"{name}.json"
        text = content if isinstance(content, str) else json.dumps(content or _task_dict(name, n_instances))
        path.write_text(text, encoding="utf-8")
        return path

    return write
