"""Routing: the typed context passed to every adapter layer, the routers, and their auxiliary loss."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributions.utils import clamp_probs

EPS = 1e-12  # as PEFT's Poly router


@dataclass
class RoutingContext:
    """Routing inputs of the current forward and the last routing decisions.

    One object is shared by the model wrapper and all its adapter layers (no global state,
    no monkey-patched attributes). The wrapper fills the inputs before each forward.
    """

    task_ids: torch.Tensor | None = None  # [B] long, Poly/MHR only
    task_weights: torch.Tensor | None = None  # [B, N] OrchMoE task-router output, fixed for a sequence
    record: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> last routing tensor (detached)
    aux_losses: list[torch.Tensor] = field(default_factory=list)  # load-balancing terms of the last forward
    cache: dict[str, tuple] = field(default_factory=dict)  # name -> (key, value), see `cached`

    def cached(self, name: str, key: tuple, compute):
        """`compute()`, reused for the same `key` while autograd is off (eval forward, generation).

        A per-sequence layer's mixing weights depend only on the routing input (task ids or task
        weights: the same tensor object for a whole `generate` call) and on its parameters, so during
        generation they are computed once per layer instead of once per layer and decoding step.
        Callers put the routing tensor and their parameters' versions in `key`; tensors are compared by
        identity, everything else by value. `reset()` (every SkillMixModel forward/generate) clears it.
        """
        if torch.is_grad_enabled():
            return compute()
        entry = self.cache.get(name)
        if entry is not None and len(entry[0]) == len(key) and all(
                (a is b) if isinstance(a, torch.Tensor) else (type(a) is type(b) and a == b)
                for a, b in zip(entry[0], key)):
            return entry[1]
        value = compute()
        self.cache[name] = (key, value)
        return value

    def per_example(self, value: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Expand a per-sequence tensor [B, ...] to a batch of `batch_size` rows (beams, sampled copies)."""
        if value.shape[0] == batch_size:
            return value
        if batch_size % value.shape[0]:
            raise ValueError(f"routing batch {value.shape[0]} does not divide the layer batch {batch_size}")
        return value.repeat_interleave(batch_size // value.shape[0], dim=0)

    def reset(self) -> None:
        self.task_ids = None
        self.task_weights = None
        self.aux_losses = []
        self.cache = {}


def relaxed_bernoulli(logits: torch.Tensor, temperature: float, training: bool) -> torch.Tensor:
    """Gumbel-sigmoid sample in training (same draw as PEFT's Poly router), sigmoid in eval.

    The training draw is `RelaxedBernoulli(temperature, logits=logits).rsample()` written out op by op
    (the same uniforms from the same `torch.rand` call, the same clamping), without building a
    Distribution object per layer and forward (argument validation made that the slowest part).
    """
    if not training:
        return torch.sigmoid(logits)
    probs = clamp_probs(torch.sigmoid(logits))
    uniforms = clamp_probs(torch.rand(logits.shape, dtype=probs.dtype, device=probs.device))
    x = (uniforms.log() - (-uniforms).log1p() + probs.log() - (-probs).log1p()) / temperature
    finfo = torch.finfo(x.dtype)
    return torch.clamp(torch.sigmoid(x), min=finfo.tiny, max=1.0 - finfo.eps)


def normalise_rows(z: torch.Tensor) -> torch.Tensor:
    """z / (sum over the last axis + 1e-12): each row on the simplex."""
    return z / (z.sum(dim=-1, keepdim=True) + EPS)


def token_router_probs(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Softmax in float32 over the last axis; with top_k, zero all but the k largest (no renormalisation)."""
    probs = torch.softmax(logits.float(), dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = probs * (probs >= kth)
    return probs


def load_balancing_loss(probs: torch.Tensor) -> torch.Tensor:
    """Switch Transformer auxiliary loss: E * sum_e f_e * P_e over all leading axes of probs [..., E]."""
    probs = probs.reshape(-1, probs.shape[-1])
    num_experts = probs.shape[-1]
    fraction = torch.nn.functional.one_hot(probs.argmax(-1), num_experts).float().mean(0)  # f_e
    return num_experts * (fraction * probs.float().mean(0)).sum()


class TaskRouter(nn.Module):
    """OrchMoE task router: the pooled prompt attends over N learned abstract-task keys.

    h = masked mean of the prompt's token embeddings [B, d_model].
    scoring="cosine" (default): h is standardised with the training prompts' mean and spread
      (`fit`; the identity until fitted), q = W_Q h, w = softmax(exp(log_scale) * cos(q, E_i)) with a
      learnable temperature (X-MoE); W_Q ~ N(0, 1/d_model), keys ~ N(0, 1) or, after `fit(kmeans=True)`,
      the spherical k-means centroids of the training prompts' queries (a data-dependent init).
    scoring="dot" (the first version, PEFT-Poly-style init): w = softmax(<W_Q h, E_i> / sqrt(d_k)) on the
      raw pooled embeddings, W_Q, E ~ N(0, 0.02^2).
    """

    def __init__(self, d_model: int, n_abstract_tasks: int, router_dim: int, scoring: str = "cosine",
                 init_scale: float = 10.0):
        super().__init__()
        self.scoring = scoring
        self.query = nn.Linear(d_model, router_dim, bias=False)  # W_Q [d_k, d_model]
        self.keys = nn.Parameter(torch.empty(n_abstract_tasks, router_dim))  # E [N, d_k]
        if scoring == "cosine":
            nn.init.normal_(self.query.weight, std=d_model ** -0.5)
            nn.init.normal_(self.keys)
            self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))  # learnable inverse temperature
            self.register_buffer("feature_mean", torch.zeros(d_model))  # training prompts' statistics
            self.register_buffer("feature_std", torch.ones(d_model))
        else:
            nn.init.normal_(self.query.weight, std=0.02)
            nn.init.normal_(self.keys, std=0.02)

    @staticmethod
    def pool(embeddings: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over the prompt tokens: embeddings [B, T, d_model], prompt_mask [B, T] -> [B, d_model]."""
        mask = prompt_mask.to(torch.float32).unsqueeze(-1)  # [B, T, 1]
        return (embeddings.float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled prompts [B, d_model] -> router logits [B, N]."""
        pooled = pooled.to(self.keys.dtype)
        if self.scoring == "cosine":
            query = self.query((pooled - self.feature_mean) / self.feature_std)  # [B, d_k]
            cos = nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(self.keys, dim=-1).T
            return self.log_scale.exp() * cos
        return self.query(pooled) @ self.keys.T / math.sqrt(self.keys.shape[-1])

    def forward(self, embeddings: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """embeddings [B, T, d_model], prompt_mask [B, T] -> task weights w [B, N]."""
        return torch.softmax(self.logits(self.pool(embeddings, prompt_mask)), dim=-1)

    @torch.no_grad()
    def fit(self, pooled: torch.Tensor, kmeans: bool = True, seed: int = 0) -> None:
        """Data-dependent init from the training prompts' pooled features [n, d_model]: the standardisation
        statistics; with `kmeans`, also W_Q's rows at the top principal directions of the standardised
        features (a random projection to d_k < d_model dimensions blurs the clusters) and the keys at the
        spherical k-means centroids of the queries."""
        if self.scoring != "cosine":
            return
        pooled = pooled.to(self.feature_mean)
        self.feature_mean.copy_(pooled.mean(0))
        self.feature_std.copy_(pooled.std(0).clamp_min(1e-6) if len(pooled) > 1 else torch.ones_like(self.feature_std))
        if not kmeans:
            return
        features = ((pooled - self.feature_mean) / self.feature_std).double()  # [n, d_model]
        directions = torch.linalg.svd(features, full_matrices=False).Vh  # [min(n, d_model), d_model]
        k = min(len(directions), self.query.weight.shape[0])
        self.query.weight[:k] = directions[:k].to(self.query.weight)  # the rest stays random
        queries = self.query(features.to(self.keys.dtype))
        self.keys.copy_(spherical_kmeans(queries, self.keys.shape[0], seed).to(self.keys))


def spherical_kmeans(x: torch.Tensor, k: int, seed: int = 0, restarts: int = 10, iterations: int = 50) -> torch.Tensor:
    """k unit-norm centroids of the rows of x [n, d] under cosine similarity: the best of `restarts` seeded
    k-means++ runs (the highest total similarity of the rows to their centroids, as sklearn's n_init).
    With fewer distinct rows than k, the remaining centroids are random unit vectors."""
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.normalize(x.double(), dim=-1)
    best, best_score = None, -math.inf
    for _ in range(restarts):
        c = _kmeans_pp(x, k, g)
        for _ in range(iterations):
            assign = (x @ c.T).argmax(1)  # [n]
            summed = torch.zeros_like(c).index_add_(0, assign, x)
            filled = torch.bincount(assign, minlength=k) > 0
            new = torch.where(filled[:, None], nn.functional.normalize(summed, dim=-1), c)
            if torch.allclose(new, c):
                break
            c = new
        score = float((x @ c.T).amax(1).sum())
        if score > best_score:
            best, best_score = c, score
    return best


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding under cosine distance: [k, d] unit rows."""
    centroids = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    for _ in range(1, k):
        distance = (1 - (x @ torch.stack(centroids).T).amax(1)).clamp_min(0)  # [n]
        if distance.sum() <= 1e-12:
            centroids.append(nn.functional.normalize(torch.randn(x.shape[1], generator=g, dtype=x.dtype), dim=0))
        else:
            centroids.append(x[torch.multinomial(distance, 1, generator=g)].squeeze(0))
    return torch.stack(centroids)
