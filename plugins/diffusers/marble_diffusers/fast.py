"""The GPU fast path of the diffusers backbones: regional compilation and switchable LoRA.

* **Regional compilation.** Only the repeated transformer blocks are compiled (``torch.compile``
  on each block module), not the whole model. Blocks of one kind share their compiled code, so
  the warm-up costs a handful of block compiles instead of one huge whole-model graph.
* **Adapter switches without recompilation.** peft picks the active adapter with Python state
  (``active_adapter`` strings, ``disable_adapters`` flags), which ``torch.compile`` guards on:
  every switch between the trained, old and reference adapters would be a guard failure and a
  new compile. ``LoRASwitch`` gives each peft LoRA ``Linear`` a forward that reads its active
  ``(A, B, gate)`` from one attribute instead; a switch only rebinds that attribute to other
  tensors of the same shape and dtype. The reference (adapters off) uses a zero gate, so it
  runs the same graph as the old adapter: ``base(x) + 0 * lora(x) == base(x)`` exactly.
* **bf16 compute with fp32 master LoRA weights.** The LoRA weights stay fp32 (the optimizer
  updates them in fp32); the forward casts them to the compute dtype of the layer, so the LoRA
  matmuls run in bf16 and their gradients reach the fp32 masters through the cast. (peft's own
  forward casts the *activations* to fp32 instead: fp32 matmuls and two extra activation copies
  per projection.)

Nothing here changes what is computed in fp32/fp64 models: there the switchable forward
equals peft's ``result + lora_B(lora_A(x)) * scaling`` operation for operation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: compile settings recognised by the ``compile`` backbone argument
COMPILE_CHOICES = ("auto", "true", "false")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def resolve_compile(value: Any, device: torch.device) -> bool:
    """``compile`` argument -> bool. "auto": on when the model runs on CUDA, off on the CPU."""
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key == "auto":
        return torch.device(device).type == "cuda"
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)} (or a boolean), got {value!r}")


# ---------------------------------------------------------------------------- switchable LoRA
class _SwitchableLoRAForward:
    """Mixed into a peft LoRA ``Linear`` class by :class:`LoRASwitch` (never used alone)."""

    def forward(self, x, *args, **kwargs):  # noqa: D401 - replaces peft's forward
        result = self.base_layer(x, *args, **kwargs)
        a, b, gate = self._marble_lora
        dt = result.dtype
        h = F.linear(F.linear(x.to(dt), a.to(dt)), b.to(dt))
        return result + h * gate


_FAST_CLASSES: dict[type, type] = {}


def _frozen_alias(p: torch.Tensor) -> torch.nn.Parameter:
    """A Parameter sharing ``p``'s storage without requiring grad (guards like the old adapter's)."""
    return torch.nn.Parameter(p.detach(), requires_grad=False)


def _fast_class(cls: type) -> type:
    if issubclass(cls, _SwitchableLoRAForward):
        return cls
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(f"Switchable{cls.__name__}", (_SwitchableLoRAForward, cls), {})
    return _FAST_CLASSES[cls]


class LoRASwitch:
    """Select the trained / old / reference LoRA of every layer by rebinding tensors.

    ``layers``: peft LoRA ``Linear`` modules holding the two adapters ``names["trained"]`` and
    ``names["old"]`` (plain LoRA: no dropout, no bias, no DoRA or other variant). Their classes
    are swapped for a subclass whose forward reads ``layer._marble_lora = (A, B, gate)``; peft's
    own state (active adapter, enabled flag) is no longer consulted by the forward.
    """

    def __init__(self, layers: list, names: dict[str, str], dtype: torch.dtype, device: torch.device):
        if not layers:
            raise ValueError("no LoRA layers to switch")
        self.layers = list(layers)
        self._gates: dict[float, torch.Tensor] = {}
        off = torch.zeros((), dtype=dtype, device=device)
        # "trained_nograd": detached views of the trained tensors (same storage), so the trained
        # adapter under no_grad (evaluation) matches the old adapter's guards and reuses its graph.
        self._sets: dict[str, list[tuple]] = {"trained": [], "trained_nograd": [], "old": [], "reference": []}
        for layer in self.layers:
            self._check(layer, names)
            tr, old = names["trained"], names["old"]
            s_tr, s_old = float(layer.scaling[tr]), float(layer.scaling[old])
            a_tr, b_tr = layer.lora_A[tr].weight, layer.lora_B[tr].weight
            a_old, b_old = layer.lora_A[old].weight, layer.lora_B[old].weight
            self._sets["trained"].append((a_tr, b_tr, self._gate(s_tr, dtype, device)))
            self._sets["trained_nograd"].append((_frozen_alias(a_tr), _frozen_alias(b_tr), self._gate(s_tr, dtype, device)))
            self._sets["old"].append((a_old, b_old, self._gate(s_old, dtype, device)))
            # same tensors and shapes as "old", zero gate: the same compiled graph, exact base output
            self._sets["reference"].append((a_old, b_old, off))
        for layer in self.layers:
            layer.__class__ = _fast_class(type(layer))
        self.active: str | None = None
        self.select("trained")

    def _gate(self, value: float, dtype, device) -> torch.Tensor:
        if value not in self._gates:
            self._gates[value] = torch.tensor(value, dtype=dtype, device=device)
        return self._gates[value]

    @staticmethod
    def _check(layer, names: dict[str, str]) -> None:
        for which, name in names.items():
            if name not in getattr(layer, "lora_A", {}):
                raise ValueError(f"layer {type(layer).__name__} has no LoRA adapter {name!r} ({which})")
            if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
                raise ValueError("the switchable LoRA forward supports lora_dropout = 0 only")
            if layer.lora_B[name].bias is not None:
                raise ValueError("the switchable LoRA forward supports LoRA without bias only")
            if name in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(name, False):
                raise ValueError("the switchable LoRA forward supports plain LoRA only (no DoRA or other variants)")
        if getattr(layer, "merged_adapters", None):
            raise ValueError("the switchable LoRA forward needs unmerged adapters")

    def select(self, which: str, grad_enabled: bool = True) -> str:
        """Make ``which`` ("trained", "old" or "reference") the adapter every layer computes;
        ``grad_enabled`` False selects the trained weights detached. Returns the set's key."""
        if which == "trained" and not grad_enabled:
            which = "trained_nograd"
        if which == self.active:
            return which
        sets = self._sets[which]
        for layer, sel in zip(self.layers, sets):
            layer.__dict__["_marble_lora"] = sel
        self.active = which
        return which


# ---------------------------------------------------------------------------- regional compile
def repeated_blocks(model: torch.nn.Module, attrs: tuple[str, ...]) -> list[torch.nn.Module]:
    """The blocks in the ``ModuleList`` attributes ``attrs`` of ``model`` (those that exist)."""
    out = []
    for name in attrs:
        blocks = getattr(model, name, None)
        if blocks is not None:
            out.extend(blocks)
    return out


def raise_recompile_limit(minimum: int = 64) -> None:
    """Each block kind x grad mode x batch shape is one cache entry of the block's code: the
    default limit (8) would silently fall back to eager on a large model. Never lowers it."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < minimum:
            setattr(cfg, name, minimum)
            break


def allow_retained_backward() -> None:
    """MARBLE's refresh step backpropagates K times through one graph (``retain_graph=True``).
    A compiled backward with donated buffers (inductor's default) refuses that, so buffer
    donation is turned off (a little more backward memory)."""
    import torch._functorch.config as functorch_config

    if getattr(functorch_config, "donated_buffer", False):
        functorch_config.donated_buffer = False


#: torch.compile options of the blocks. ``dynamic=False``: static shapes, one graph per batch
#: size (the trainer uses one micro-batch size throughout), the best kernels. Tests may set
#: "backend" (e.g. "aot_eager": the same capture, guards and autograd, no code generation).
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": False}


def compile_blocks(blocks: list[torch.nn.Module], **options: Any) -> int:
    """``torch.compile`` each block module in place (``nn.Module.compile``) with
    ``COMPILE_OPTIONS`` updated by ``options``. Returns the number of blocks."""
    options = {**COMPILE_OPTIONS, **options}
    raise_recompile_limit()
    allow_retained_backward()
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def compile_counters() -> dict[str, int]:
    """Process-wide torch.compile counters: compiled frames, unique graphs, graph breaks."""
    from torch._dynamo.utils import counters

    return {
        "frames": int(counters["frames"].get("ok", 0)),
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }
