"""Atomic file writes: a reader never sees a half-written config, adapter or checkpoint."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def _atomic(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` through a temporary file and a rename."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, write)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata=None) -> None:
    """Save contiguous CPU copies of `tensors` as safetensors, atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save through a temporary file and a rename."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))
