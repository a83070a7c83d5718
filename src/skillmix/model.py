"""SkillMixModel: adapter injection into a Hugging Face model, routing, save/load, merge and LoRA export."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .config import CONFIG_NAME, DEFAULT_TARGET_MODULES, WEIGHTS_NAME, SkillMixConfig
from .data import model_inputs
from .errors import SkillMixError
from .io import atomic_save_safetensors, atomic_write_text
from .layers import AdapterLayer
from .layers.base import linear_shape
from .routing import RoutingContext, TaskRouter, load_balancing_loss

PEFT_PREFIX = "base_model.model."


def _is_linear(module: nn.Module) -> bool:
    try:
        linear_shape(module)
        return True
    except TypeError:
        return False


def resolve_target_modules(base_model: nn.Module, config: SkillMixConfig) -> list[str]:
    """Full names of the linear layers that `config.target_modules` selects (PEFT's matching rules)."""
    targets = config.target_modules
    if targets is None:
        model_type = getattr(getattr(base_model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise SkillMixError(f"SkillMixConfig.target_modules is required for model_type {model_type!r} "
                                f"(defaults exist for {', '.join(sorted(DEFAULT_TARGET_MODULES))})")
        targets = config.target_modules = list(DEFAULT_TARGET_MODULES[model_type])
    linear = [name for name, module in base_model.named_modules() if name and _is_linear(module)]
    if isinstance(targets, str):
        names = [n for n in linear if re.fullmatch(targets, n)]
    else:
        names = [n for n in linear if any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        suffixes = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linear}))
        raise SkillMixError(f"SkillMixConfig.target_modules={targets!r} matched no linear layer; "
                            f"this model's linear layers are: {suffixes}")
    return names


class SkillMixModel(nn.Module):
    """A frozen base model with one adapter method injected; forward/generate work like the base model's."""

    def __init__(self, base_model: nn.Module, config: SkillMixConfig):
        super().__init__()
        self.base_model = base_model
        self.adapter_config = config
        self.routing = RoutingContext()
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(getattr(base_model, "config", None), "_name_or_path", None) or None
        for p in base_model.parameters():
            p.requires_grad_(False)
        layer_cls = self.layer_class = config.layer_class
        self.adapter_layers: dict[str, AdapterLayer] = {}  # full module name -> layer (registered in base_model)
        for name in resolve_target_modules(base_model, config):
            parent_name, _, child = name.rpartition(".")
            parent = base_model.get_submodule(parent_name) if parent_name else base_model
            layer = layer_cls(getattr(parent, child), config, self.routing, name)
            setattr(parent, child, layer)
            self.adapter_layers[name] = layer
        self.task_router = None  # a model-level router (OrchMoE's task router), when the method has one
        if layer_cls.uses_task_weights:
            embed = base_model.get_input_embeddings()
            self.task_router = layer_cls.build_model_router(config, embed.embedding_dim)
            if self.task_router is not None:
                self.task_router.to(embed.weight.device)

    # ---- attribute access like PEFT's wrapper ------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def method(self) -> str:
        return self.adapter_config.method

    # ---- routing -------------------------------------------------------------------------------
    def prompt_features(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None,
                        prompt_mask=None) -> torch.Tensor:
        """The task router's input: the mask-mean of the prompt tokens' input embeddings [B, d_model].

        Prompt tokens: `prompt_mask` when given; else attention_mask, minus the target positions
        (labels != -100) of a causal LM. Encoder-decoder models route on the whole encoder input.
        """
        embeds = inputs_embeds if inputs_embeds is not None else self.base_model.get_input_embeddings()(input_ids)
        bsz, length = embeds.shape[:2]
        if prompt_mask is None:
            prompt_mask = attention_mask if attention_mask is not None else torch.ones(bsz, length, device=embeds.device)
            is_seq2seq = getattr(self.base_model.config, "is_encoder_decoder", False)
            if labels is not None and not is_seq2seq and labels.shape == (bsz, length):
                prompt_mask = prompt_mask * (labels == -100)
        return TaskRouter.pool(embeds, prompt_mask)

    def compute_task_weights(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None,
                             prompt_mask=None) -> torch.Tensor:
        """OrchMoE task-router weights w [B, N] from the prompt tokens (`prompt_features`)."""
        features = self.prompt_features(input_ids, attention_mask, labels, inputs_embeds, prompt_mask)
        if self.task_router is None:  # ablation: no task router
            n = self.adapter_config.n_abstract_tasks
            return torch.full((features.shape[0], n), 1.0 / n, device=features.device)
        return torch.softmax(self.task_router.logits(features), dim=-1)

    @torch.no_grad()
    def fit_task_router(self, batches, kmeans: bool = True, seed: int = 0) -> None:
        """Data-dependent init of the task router from training batches (dicts with input_ids, attention_mask,
        labels): its feature statistics and, with `kmeans`, its keys (`TaskRouter.fit`). No-op without one."""
        if self.task_router is None:
            return
        device = self.task_router.keys.device
        features = [self.prompt_features(**{k: v.to(device) for k, v in model_inputs(b, False).items()})
                    for b in batches]
        self.task_router.fit(torch.cat(features).cpu(), kmeans=kmeans, seed=seed)

    def _begin_routing(self, args: tuple, kwargs: dict, task_ids, task_weights) -> None:
        cfg, ctx = self.adapter_config, self.routing
        ctx.reset()
        if self.layer_class.uses_task_ids:
            if task_ids is None:
                raise SkillMixError(f"method {cfg.method!r} needs task_ids (LongTensor [B]) in forward/generate")
            ctx.task_ids = torch.as_tensor(task_ids).long()
        elif task_ids is not None:
            raise SkillMixError(f"method {cfg.method!r} routes without task ids; remove 'task_ids' from its inputs")
        if not self.layer_class.uses_task_weights:
            return
        if task_weights is None:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            task_weights = self.compute_task_weights(input_ids, kwargs.get("attention_mask"), kwargs.get("labels"),
                                                     kwargs.get("inputs_embeds"))
            if cfg.load_balancing_coef > 0 and self.training and self.task_router is not None:
                ctx.aux_losses.append(cfg.load_balancing_coef * load_balancing_loss(task_weights))
        ctx.task_weights = torch.as_tensor(task_weights)
        ctx.record["task_weights"] = ctx.task_weights.detach()

    def forward(self, *args, task_ids=None, task_weights=None, **kwargs):
        """The base model's forward; `task_ids` [B] for poly/mhr, optional `task_weights` [B, N] for orchmoe."""
        self._begin_routing(args, kwargs, task_ids, task_weights)
        try:
            return self.base_model(*args, **kwargs)
        finally:
            self.routing.task_ids = self.routing.task_weights = None

    def generate(self, *args, task_ids=None, task_weights=None, **kwargs):
        """The base model's generate; routing is computed once from the prompt and fixed while decoding."""
        self._begin_routing(args, kwargs, task_ids, task_weights)
        try:
            return self.base_model.generate(*args, **kwargs)
        finally:
            self.routing.task_ids = self.routing.task_weights = None

    def set_gumbel_temperature(self, temperature: float) -> None:
        """Set the Gumbel-sigmoid temperature of every skill router (for a temperature schedule)."""
        for layer in self.adapter_layers.values():
            layer.set_gumbel_temperature(temperature)

    def aux_loss(self) -> torch.Tensor:
        """Sum of the weighted load-balancing losses of the last forward (0 when disabled)."""
        losses = self.routing.aux_losses
        return torch.stack(losses).sum() if losses else torch.zeros(())

    @torch.no_grad()
    def last_routing(self) -> dict[str, Any]:
        """Routing decisions of the last forward, detached.

        `task_weights`: OrchMoE task-router output w [B, N] (None for other methods);
        `layers`: per adapted layer, token-router probabilities [B, T, E] (molora) or [B, T, G, m] (mode,
        molora_sd), skill weights [B, h, S] (poly/mhr) or alpha [B, S] (orchmoe);
        `allocation`: per layer, the eval allocation sigmoid(Theta): [N, S] (orchmoe) or [n_tasks, h, S] (poly/mhr).
        """
        record = self.routing.record
        layers = {name: record[name] for name in self.adapter_layers if name in record}
        allocation = {name: alloc for name, layer in self.adapter_layers.items()
                      if (alloc := layer.eval_allocation()) is not None}
        return {"task_weights": record.get("task_weights"), "layers": layers, "allocation": allocation}

    @contextlib.contextmanager
    def disable_adapter(self):
        """Context manager in which the model behaves exactly like the base model."""
        for layer in self.adapter_layers.values():
            layer.disabled = True
        try:
            yield
        finally:
            for layer in self.adapter_layers.values():
                layer.disabled = False

    # ---- new tasks (unseen-task evaluation, few-shot adaptation) -------------------------------------
    @torch.no_grad()
    def add_task_rows(self, n: int = 1, init: str = "mean") -> list[int]:
        """Methods routed by task id (Poly/MHR): append `n` rows for new tasks to every layer's per-task
        parameters and return the new task ids.

        init="mean": a new row's eval skill weights are the mean over the existing (trained) rows of
        their normalised eval weights, per head (METHODS.md §1.7, OA-17; see `PolyLayer.add_task_rows`).
        """
        if not self.layer_class.per_task_parameters:
            raise SkillMixError(f"add_task_rows: method {self.method!r} has no per-task rows (it does not route by "
                                "task id)")
        if init != "mean":
            raise SkillMixError(f"add_task_rows(init={init!r}): expected 'mean'")
        old = self.adapter_config.n_tasks
        for layer in self.adapter_layers.values():
            layer.add_task_rows(n)
        self.adapter_config.n_tasks = old + n
        return list(range(old, old + n))

    @torch.no_grad()
    def remove_task_rows(self, n_tasks: int) -> None:
        """Keep only the first `n_tasks` per-task rows (undoes `add_task_rows`)."""
        if not self.layer_class.per_task_parameters or not 0 < n_tasks <= self.adapter_config.n_tasks:
            raise SkillMixError(f"remove_task_rows({n_tasks}): expected a method routed by task id and 1 <= n_tasks <= "
                                f"{self.adapter_config.n_tasks}")
        for layer in self.adapter_layers.values():
            layer.keep_task_rows(n_tasks)
        self.adapter_config.n_tasks = n_tasks

    def routing_parameter_names(self) -> list[str]:
        """Keys of `adapter_state_dict()` that route rather than transform: each layer's
        `routing_parameters` (allocation logits, token routers) and the model-level task router."""
        names = self.layer_class.routing_parameters
        router = {f"task_router.{n}" for n, _ in self.task_router.named_parameters()} if self.task_router else set()
        return [k for k in self.adapter_state_dict() if k in router or k.rsplit(".", 1)[-1] in names]

    def per_task_parameter_names(self) -> list[str]:
        """Keys of `adapter_state_dict()` with one row per task id (`add_task_rows` grows them)."""
        names = self.layer_class.per_task_parameters
        return [k for k in self.adapter_state_dict() if k.rsplit(".", 1)[-1] in names]

    def set_fast_path(self, enabled: bool) -> None:
        """Switch every layer between its fused fast path and the plain reference computation."""
        for layer in self.adapter_layers.values():
            layer.use_fast_path = bool(enabled)

    # ---- parameters ------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every adapter parameter (trainable or not), keyed by module path in the base model."""
        state = {}
        for name, layer in self.adapter_layers.items():
            for pname, p in layer.named_parameters():
                if not pname.startswith("base_layer."):
                    state[f"{name}.{pname}"] = p
        if self.task_router is not None:  # its parameters and its fitted feature statistics (buffers)
            for pname, p in self.task_router.named_parameters():
                state[f"task_router.{pname}"] = p
            for pname, buf in self.task_router.named_buffers():
                state[f"task_router.{pname}"] = buf
        return state

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.num_trainable_parameters(), sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    @torch.no_grad()
    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy adapter tensors in; keys and shapes must match exactly."""
        own = self.adapter_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise SkillMixError(f"{source}: adapter weights do not match the config "
                                f"(missing: {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                                f"unexpected: {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
        for key, p in own.items():
            if tuple(state[key].shape) != tuple(p.shape):
                raise SkillMixError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(p.shape)}")
            p.copy_(state[key])

    # ---- save / load / merge / export ----------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write adapter_config.json + adapter_model.safetensors (a PEFT LoRA adapter for method 'lora')."""
        os.makedirs(save_directory, exist_ok=True)
        if self.layer_class.saves_as_peft_lora:
            cfg = self.adapter_config
            alpha = cfg.lora_alpha if cfg.lora_alpha is not None else float(cfg.r)  # PEFT scales by alpha / r
            layers = {n: (layer.lora_A, layer.lora_B) for n, layer in self.adapter_layers.items()}
            _write_peft_lora(save_directory, layers, self, cfg.r, alpha, cfg.lora_dropout)
            return
        self.adapter_config.save(save_directory)
        atomic_save_safetensors(self.adapter_state_dict(), Path(save_directory) / WEIGHTS_NAME,
                                metadata={"format": "pt", "skillmix_method": self.method})

    @torch.no_grad()
    def export_lora(self, save_directory: str | os.PathLike, task_id: int | None = None,
                    task_weights=None) -> int:
        """Collapse a per-sequence mixture into a plain PEFT LoRA adapter directory; returns its rank.

        poly/mhr: `task_id` picks the task's allocation row. orchmoe: `task_weights` (N floats on the
        simplex) fixes the task router's output; the output-mix variant gives rank S*r, poly-mix rank r.
        """
        routing = self.layer_class.export_routing(self.adapter_config, task_id=task_id, task_weights=task_weights)
        layers = {n: layer.lora_factors(**routing) for n, layer in self.adapter_layers.items()}
        rank = next(iter(layers.values()))[0].shape[0]
        _write_peft_lora(save_directory, layers, self, rank, float(rank), 0.0)
        return rank

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Fold an adapter without routing (LoRA) into the base weights and return the plain base model."""
        if self.layer_class.routing != "none":
            raise SkillMixError(f"merge_and_unload needs a method without routing (lora); {self.method!r} mixes per "
                                "input: use export_lora(...) for one task, then merge that LoRA")
        for name, layer in self.adapter_layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            setattr(parent, child, layer.merge_into_base())
        self.adapter_layers = {}
        return self.base_model


def _write_peft_lora(directory, layers: dict[str, tuple[torch.Tensor, torch.Tensor]], model: SkillMixModel,
                     r: int, alpha: float, dropout: float) -> None:
    """Write a PEFT LoRA adapter: {name: (A [r, d_in], B [d_out, r])} with delta = alpha/r * B A."""
    os.makedirs(directory, exist_ok=True)
    cfg = model.adapter_config
    is_seq2seq = getattr(model.base_model.config, "is_encoder_decoder", False)
    transposed = any(layer.weight_transposed for layer in model.adapter_layers.values())
    peft_config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if is_seq2seq else "CAUSAL_LM",
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": cfg.target_modules,
        "bias": "none",
        "fan_in_fan_out": transposed,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }
    tensors = {}
    for name, (a, b) in layers.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.float()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.float()
    atomic_save_safetensors(tensors, Path(directory) / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_text(Path(directory) / CONFIG_NAME, json.dumps(peft_config, indent=2) + "\n")


def count_parameters(base_model: nn.Module, config: SkillMixConfig) -> int:
    """Trainable parameters `get_model(base_model, config)` would add, computed on the meta device
    without touching `base_model`."""
    config = SkillMixConfig.from_dict(config.to_dict())
    layer_cls = config.layer_class
    total = 0
    with torch.device("meta"):
        for name in resolve_target_modules(base_model, config):
            d_in, d_out, _ = linear_shape(base_model.get_submodule(name))
            layer = layer_cls(nn.Linear(d_in, d_out), config, RoutingContext(), name)
            total += sum(p.numel() for p in layer._adapter_parameters())
        if layer_cls.uses_task_weights:
            router = layer_cls.build_model_router(config, base_model.get_input_embeddings().embedding_dim)
            total += sum(p.numel() for p in router.parameters()) if router is not None else 0
    return total


def get_model(base_model: nn.Module, config: SkillMixConfig) -> SkillMixModel:
    """Inject `config.method` adapters into `base_model` (in place), freeze the base and wrap it."""
    if not isinstance(config, SkillMixConfig):
        raise SkillMixError(f"get_model: expected a SkillMixConfig, got {type(config).__name__}")
    return SkillMixModel(base_model, config)


def _config_from_peft_lora(data: dict, source: str) -> SkillMixConfig:
    for key, ok in (("use_dora", False), ("use_rslora", False), ("bias", "none")):
        if data.get(key, ok) != ok:
            raise SkillMixError(f"{source}: {key}={data[key]!r} is not supported (expected {ok!r})")
    r = int(data["r"])
    alpha = float(data.get("lora_alpha", r))
    return SkillMixConfig(method="lora", r=r, lora_alpha=None if math.isclose(alpha, r) else alpha,
                          lora_dropout=float(data.get("lora_dropout", 0.0)), target_modules=data.get("target_modules"),
                          base_model_name_or_path=data.get("base_model_name_or_path"))


def load_config(directory: str | os.PathLike) -> SkillMixConfig:
    """Read adapter_config.json (skillmix's own, or a PEFT LoRA config) from `directory`."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise SkillMixError(f"{path}: not found; expected an adapter directory written by save_pretrained")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SkillMixError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if data.get("peft_type") == "LORA":
        return _config_from_peft_lora(data, str(path))
    if data.get("peft_type") != "SKILLMIX":
        raise SkillMixError(f"{path}: field 'peft_type' is {data.get('peft_type')!r}; expected 'SKILLMIX' or 'LORA'")
    return SkillMixConfig.from_dict(data, source=str(path))


def load_model(base_model: nn.Module, directory: str | os.PathLike, is_trainable: bool = False) -> SkillMixModel:
    """Rebuild a saved adapter on `base_model`; eval mode and frozen unless `is_trainable`."""
    config = load_config(directory)
    model = get_model(base_model, config)
    path = Path(directory) / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise SkillMixError(f"{path}: cannot read adapter weights ({err})") from None
    if config.layer_class.saves_as_peft_lora:
        state = _lora_state_from_peft(state)
    model.load_adapter_state_dict(state, source=str(path))
    if not is_trainable:
        model.eval()
        for p in model.adapter_state_dict().values():
            p.requires_grad_(False)
    return model


def _lora_state_from_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        name = re.sub(r"\.lora_([AB])(\.default)?\.weight$", r".lora_\1", name)
        out[name] = value
    return out
