"""MADE in PyTorch: masked linear layers whose masks come from stored degrees (torch only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from made.core.errors import ConfigError
from made.core.masks import MaskSet, build_direct_mask, build_masks, make_mask_set, orderings_to_degrees

# Hidden-unit nonlinearities a model may use; the exported graph and the serving engine apply
# the same one (the manifest's "activation", made/store/manifest.py ACTIVATIONS; training/graphs.py ACTIVATION_OPS).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "tanh": torch.tanh}
INITS = ("default", "orthogonal")


class MaskedConfig:
    """What the bit and table model configs share: the fields that draw the K masks (each
    config, a dataclass, declares them), their dict form (the run's config.json, the manifest's
    "training") and the mask set they draw over the model's `dims` units of autoregression."""

    dims: int
    hidden: list[int]
    n_masks: int
    order_agnostic: bool
    connectivity_agnostic: bool
    random_ordering: bool
    mask_seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The config of a dict, keeping the fields this build knows (a later build may add some)."""
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{k: data[k] for k in fields if k in data})

    def mask_set(self) -> MaskSet:
        """K orderings of the `dims` units and hidden degrees in [1, dims - 1]."""
        return make_mask_set(
            self.dims,
            list(self.hidden),
            self.n_masks,
            order_agnostic=self.order_agnostic,
            connectivity_agnostic=self.connectivity_agnostic,
            random_ordering=self.random_ordering,
            seed=self.mask_seed,
        )


@dataclass
class MADEConfig(MaskedConfig):
    dims: int  # D, the number of binary inputs
    hidden: list[int] = field(default_factory=lambda: [500])  # widths of the hidden layers
    n_masks: int = 1  # K, the fixed mask set drawn per minibatch; 1 is plain MADE
    order_agnostic: bool = False  # each mask has its own random ordering
    connectivity_agnostic: bool = False  # each mask draws its own hidden degrees
    random_ordering: bool = False  # with one shared ordering: a random one instead of natural
    direct: bool = False  # direct input-to-output weights (masked by ordering)
    mask_seed: int = 0  # seeds the mask set, so the same config gives the same masks
    activation: str = "relu"  # hidden units: relu | tanh
    # weight initialisation: torch's default (uniform), or orthogonal weight matrices with zero
    # hidden biases (the official MADE code's `Orthogonal`)
    init: str = "default"


class MaskedNetwork(nn.Module):
    """What MADE and the table model (training/table_model.py) share: masked layers whose masks
    (`masks(k)`, from degree buffers) multiply the weights functionally, the mixture over K masks,
    and a mask cache that moving or loading the module clears. Subclasses set `layers`, `direct`,
    `input_degrees` and define `masks` and `log_prob`."""

    layers: list[nn.Linear]
    direct: nn.Linear | None
    input_degrees: torch.Tensor
    _mask_cache: dict[int, list[torch.Tensor]]
    activation: str = "relu"  # the hidden units' nonlinearity, a key of ACTIVATIONS

    @property
    def n_masks(self) -> int:
        return int(self.input_degrees.shape[0])

    def masks(self, k: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, mask_index: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask_index: int = 0, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(N, inputs) -> (N, outputs) under mask k (MADE: the logits of p(x_d = 1 | x before d)),
        or under the dense `masks` given (one per layer, then the direct mask if any)."""
        if masks is None:
            masks = self.masks(mask_index)
        act = ACTIVATIONS[self.activation]
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = F.linear(h, masks[i] * layer.weight, layer.bias)
            if i < last:
                h = act(h)
        if self.direct is not None:
            h = h + F.linear(x, masks[-1] * self.direct.weight)
        return h

    def mixture_log_prob(self, x: torch.Tensor, mask_indices: list[int] | None = None) -> torch.Tensor:
        """(N,) log of (1/K) sum_k p_k(x): the ensemble as a true mixture of the K models."""
        ks = list(range(self.n_masks)) if mask_indices is None else mask_indices
        per_mask = torch.stack([self.log_prob(x, k) for k in ks])  # (K, N)
        return torch.logsumexp(per_mask, dim=0) - math.log(len(ks))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._mask_cache = {}
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # loading replaces the degree buffers in place: masks cached from the old ones are stale
        self._mask_cache = {}
        super()._load_from_state_dict(*args, **kwargs)


class MADE(MaskedNetwork):
    """Bernoulli MADE. Degrees of all K masks are buffers; masks are rebuilt from them per call
    and multiplied into the weights functionally, never written into the weights."""

    input_dtype = torch.float32

    def __init__(self, config: MADEConfig):
        super().__init__()
        if config.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation '{config.activation}', expected one of {', '.join(ACTIVATIONS)}")
        if config.init not in INITS:
            raise ConfigError(f"unknown initialisation '{config.init}', expected one of {', '.join(INITS)}")
        self.config = config
        self.activation = config.activation
        masks = config.mask_set()
        self.register_buffer("input_degrees", torch.from_numpy(masks.input_degrees()))  # (K, D)
        for i, degrees in enumerate(masks.hidden_degrees):
            self.register_buffer(f"hidden_degrees_{i}", torch.from_numpy(degrees))  # (K, H_i)
        widths = [config.dims, *config.hidden, config.dims]
        self.layers: list[nn.Linear] = nn.ModuleList(  # type: ignore[assignment]
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.direct = nn.Linear(config.dims, config.dims, bias=False) if config.direct else None
        self._mask_cache: dict[int, list[torch.Tensor]] = {}
        if config.init == "orthogonal":
            self.orthogonal_init()

    @torch.no_grad()
    def orthogonal_init(self) -> None:
        """Every weight matrix (hidden layers, outputs, direct connections) orthogonal, every
        bias zero, as the official code's `Orthogonal` initialiser does (it draws each matrix as
        a slice of a random square orthogonal one; torch's orthogonal_ draws a (semi-)orthogonal
        matrix of the layer's shape directly). The weights are drawn before masking, as there;
        training then starts the output biases at the data's marginals (train.init_output_bias)."""
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.direct is not None:
            nn.init.orthogonal_(self.direct.weight)

    def draw_masks(self, seed: int) -> list[torch.Tensor]:
        """Dense masks of a fresh mask drawn from `seed`: a new random ordering when the model is
        order-agnostic (else mask 0's), new hidden degrees when connectivity-agnostic (else mask
        0's). For training with a new mask per update (TrainConfig.resample_masks); the model's
        K stored masks stay what is evaluated and exported."""
        cfg = self.config
        fresh = make_mask_set(cfg.dims, list(cfg.hidden), 1, random_ordering=cfg.order_agnostic, seed=seed)
        inp0, hidden0 = self.degrees(0)
        inp = orderings_to_degrees(fresh.orderings)[0] if cfg.order_agnostic else inp0.cpu().numpy()
        if cfg.connectivity_agnostic:
            hidden = [h[0] for h in fresh.hidden_degrees]
        else:
            hidden = [h.cpu().numpy() for h in hidden0]
        dense = build_masks(inp, hidden)
        if self.direct is not None:
            dense.append(build_direct_mask(inp))
        return [torch.from_numpy(m).to(self.input_degrees.device) for m in dense]

    def degrees(self, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden: list[torch.Tensor] = [getattr(self, f"hidden_degrees_{i}")[k] for i in range(len(self.config.hidden))]
        return self.input_degrees[k], hidden

    def masks(self, k: int) -> list[torch.Tensor]:
        """Dense masks of mask k (one per layer, then the direct mask if any); cached per device."""
        cached = self._mask_cache.get(k)
        if cached is None or cached[0].device != self.input_degrees.device:
            inp, hidden = self.degrees(k)
            dense = build_masks(inp.cpu().numpy(), [h.cpu().numpy() for h in hidden])
            if self.direct is not None:
                dense.append(build_direct_mask(inp.cpu().numpy()))
            cached = [torch.from_numpy(m).to(self.input_degrees.device) for m in dense]
            self._mask_cache[k] = cached
        return cached

    def log_prob(self, x: torch.Tensor, mask_index: int = 0, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(N,) log p_k(x) in nats (or under the dense `masks` given), from logits with a stable
        BCE (never log of a sigmoid)."""
        logits = self(x, mask_index, masks)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
