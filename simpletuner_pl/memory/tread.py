"""TREAD token routing (`tread.routes`): a route lets only some image tokens through a span of transformer blocks.

Before block `start` runs, a random `selection_ratio` of the image tokens is set aside (text tokens never are);
the kept tokens run blocks `start..end` (inclusive, numbered over the double- then the single-stream blocks,
negative indices from the end) with their rotary embeddings and attention-mask columns gathered to match; after
block `end` the set-aside tokens rejoin with the values they had before the route (an identity bypass, so their
gradient still flows). Fewer tokens through the routed blocks is the speed-up; training only.

Implemented with forward hooks on the blocks (each block takes and returns (image tokens, text tokens) apart, as
diffusers' Flux blocks do), so diffusers' own forward, gradient checkpointing (a recomputed
block reuses the selection of its forward) and compiled block forwards are untouched. One selection serves the
whole batch (diffusers applies one rotary table per batch); tokens that must be kept (masked-loss regions: the
module sets `force_keep`) are kept for every sample. Two bugs of SimpleTuner's version are not repeated: the
attention mask of a routed single block keeps its image columns, and force-keep masks index image tokens only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from simpletuner_pl.errors import ConfigError


@dataclass(frozen=True)
class Route:
    ratio: float  # fraction of image tokens set aside
    start: int  # first routed block (global, non-negative)
    end: int  # last routed block (inclusive)


def resolve_routes(routes: Sequence, depth: int) -> List[Route]:
    """Config routes ({selection_ratio, start_layer_idx, end_layer_idx}) as non-overlapping `Route`s of a model with
    `depth` blocks; a route outside the model or overlapping another is a ConfigError."""
    resolved = []
    for i, route in enumerate(routes):
        start, end = (idx + depth if idx < 0 else idx for idx in (route.start_layer_idx, route.end_layer_idx))
        if not 0 <= start <= end < depth:
            raise ConfigError(f"tread.routes[{i}]: blocks {route.start_layer_idx}..{route.end_layer_idx} are not a "
                              f"span of this model's {depth} blocks (0..{depth - 1}; negative counts from the end)")
        resolved.append(Route(route.selection_ratio, start, end))
    resolved.sort(key=lambda r: r.start)
    for before, after in zip(resolved, resolved[1:]):
        if after.start <= before.end:
            raise ConfigError(f"tread.routes overlap: blocks {before.start}..{before.end} and "
                              f"{after.start}..{after.end}")
    return resolved


class RouteState:
    """One route's selection for the current forward: kept image positions, the full pre-route tokens, and the
    rotary table and attention mask cut to [text; kept image]."""

    def __init__(self, keep: torch.Tensor, full: torch.Tensor, rope, mask: Optional[torch.Tensor], text: int):
        columns = torch.cat([torch.arange(text, device=keep.device), keep + text])
        self.keep, self.full = keep, full
        self.rope = tuple(table[columns.to(table.device)] for table in rope)
        self.mask = mask[..., columns.to(mask.device)] if mask is not None else None


def kept_positions(tokens: int, ratio: float, force_keep: Optional[torch.Tensor], device) -> torch.Tensor:
    """Sorted image positions to keep: every forced one (any sample), then random others up to the kept count."""
    forced = force_keep.any(0).to(device) if force_keep is not None else torch.zeros(tokens, dtype=torch.bool,
                                                                                   device=device)
    count = max(tokens - round(tokens * ratio), int(forced.sum()))
    score = torch.rand(tokens, device=device) - forced.float() * 2  # forced ones sort first
    return torch.sort(torch.argsort(score)[:count]).values


class TokenRouter:
    """Routes `routes` through `transformer`'s blocks while it trains with gradients on."""

    def __init__(self, transformer: nn.Module, block_lists: Sequence[str], routes: List[Route]):
        """`block_lists`: the transformer's block ModuleLists in execution order (`FamilySpec.routed_blocks`)."""
        self.blocks = [block for name in block_lists for block in getattr(transformer, name)]
        self.routes = routes
        self.force_keep: Optional[torch.Tensor] = None  # [B, image tokens] bool, set by the module per batch
        self.active = False
        self.states: Dict[int, RouteState] = {}
        self.names = list(inspect.signature(type(self.blocks[0]).forward).parameters)[1:]  # without self
        self.handles = [transformer.register_forward_pre_hook(self._begin)]
        for index, block in enumerate(self.blocks):
            route = self.route_of(index)
            if route is not None:
                self.handles.append(block.register_forward_pre_hook(self._before(index, route), with_kwargs=True))
            if route is not None and index == route.end:
                self.handles.append(block.register_forward_hook(self._after(route)))

    def route_of(self, index: int) -> Optional[Route]:
        return next((r for r in self.routes if r.start <= index <= r.end), None)

    def _begin(self, module: nn.Module, args) -> None:
        """A new forward (not a checkpointed block's recomputation): fresh selections."""
        self.active = module.training and torch.is_grad_enabled() and bool(self.routes)
        self.states = {}

    def _before(self, index: int, route: Route):
        def hook(block: nn.Module, args: Tuple, kwargs: Dict):
            if not self.active:
                return None
            kwargs = {**dict(zip(self.names, args)), **kwargs}  # checkpointing passes them positionally
            state = self.states.get(route.start)
            if index == route.start:
                if state is None:
                    hidden = kwargs["hidden_states"]
                    keep = kept_positions(hidden.shape[1], route.ratio, self.force_keep, hidden.device)
                    extra = kwargs.get("joint_attention_kwargs") or {}
                    state = RouteState(keep, hidden, kwargs["image_rotary_emb"], extra.get("attention_mask"),
                                       kwargs["encoder_hidden_states"].shape[1])
                    self.states[route.start] = state
                kwargs["hidden_states"] = kwargs["hidden_states"][:, state.keep]
            kwargs["image_rotary_emb"] = state.rope
            if state.mask is not None:
                kwargs["joint_attention_kwargs"] = {**kwargs["joint_attention_kwargs"], "attention_mask": state.mask}
            return (), kwargs

        return hook

    def _after(self, route: Route):
        def hook(block: nn.Module, args, output):
            if not self.active:
                return None
            text, routed = output
            state = self.states[route.start]
            return text, state.full.index_copy(1, state.keep, routed.to(state.full.dtype))

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
