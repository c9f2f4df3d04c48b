"""Run configuration: an OmegaConf structured schema, validated before any model is built.

A config selects components only by their registered names; it never imports a module path.
Every error names the key path, the bad value and the allowed values (or a did-you-mean).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from marble.errors import ConfigError


@dataclass
class ComponentConfig:
    name: str = MISSING
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    name: str = MISSING
    weight: float = 1.0
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptSource:
    """A text file (one prompt per line) or a JSONL file (``prompt`` field + metadata), or
    inline ``texts``. ``rewards``: the rewards that apply to this source (None = all)."""

    path: Optional[str] = None
    texts: Optional[List[str]] = None
    weight: float = 1.0
    rewards: Optional[List[str]] = None


@dataclass
class OldUpdateConfig:
    """eta = min(rate * max(step - delay, 0), max) (ALGORITHM.md 1.8)."""

    rate: float = 0.001
    max: float = 0.5
    delay: int = 0


@dataclass
class StageConfig:
    """From iteration ``start`` on, train only on ``rewards`` (DiffusionNFT's multi-stage recipe)."""

    start: int = 0
    rewards: List[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    iterations: int = 100
    seed: int = 0
    prompts_per_iteration: int = 48  # groups per iteration
    group_size: int = 24  # images per prompt (G)
    num_steps: int = 10  # sampler steps
    sampler: str = "euler"  # euler | dpm2
    guidance_scale: float = 1.0  # 1.0 = CFG-free
    timesteps_per_sample: Optional[int] = None  # T; None = every sampler timestep
    micro_batch: int = 8
    optimizer_steps: int = 1  # optimizer steps per iteration
    beta: float = 1.0  # NFT strength (0.1 for multi-reward in the paper)
    a_max: float = 5.0
    kl_coef: float = 1e-4
    lr: float = 3e-4
    weight_decay: float = 1e-4
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    adv_std: str = "global"  # global | group
    # The (t, eps) each sample trains on (ALGORITHM.md 1.5): "sample" draws them per sample (the
    # papers); "group" shares one draw across a prompt's group (common random numbers: within a
    # group the advantages sum to zero, so the part of the gradient that the draw gives all the
    # group's images alike cancels; benchmarks/gradient_noise.py measures the effect).
    loss_noise: str = "sample"  # sample | group
    old_update: OldUpdateConfig = field(default_factory=OldUpdateConfig)
    stages: List[StageConfig] = field(default_factory=list)
    save_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: only at the end when eval_prompts are given
    eval_prompts_count: int = 8  # fixed held-out prompts per evaluation
    eval_images_per_prompt: int = 1  # images per eval prompt (fixed noise): more = a less noisy eval mean
    overlap_rewards: str = "auto"  # score block i while block i+1 samples: auto (on with CUDA) | true | false
    tensorboard: bool = True
    progress: bool = True


@dataclass
class RunConfig:
    output_dir: str = "runs/run"
    backbone: ComponentConfig = field(default_factory=ComponentConfig)
    rewards: List[RewardConfig] = field(default_factory=list)
    eval_rewards: List[RewardConfig] = field(default_factory=list)
    balancer: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="marble"))
    prompts: List[PromptSource] = field(default_factory=list)
    eval_prompts: List[PromptSource] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: Optional[str] = None


CHOICES = {"train.sampler": ("euler", "dpm2"), "train.adv_std": ("global", "group"),
           "train.loss_noise": ("sample", "group"),
           "train.overlap_rewards": ("auto", "true", "false")}


# ------------------------------------------------------------------------ helpers
def _fields_of(node_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(node_type)]


def _schema_at(path: list[str], root: type = RunConfig) -> type | None:
    """The dataclass type at a dotted path of the schema (None if not a dataclass)."""
    t: Any = root
    for part in path:
        if part.isdigit() or (part.startswith("[") and part.endswith("]")):
            continue
        if not dataclasses.is_dataclass(t):
            return None
        f = {f.name: f for f in dataclasses.fields(t)}.get(part)
        if f is None:
            return None
        ft = f.type if not isinstance(f.type, str) else eval(f.type, globals())  # noqa: S307 - our own annotations
        origin = getattr(ft, "__origin__", None)
        if origin in (list, List):
            ft = ft.__args__[0]
        elif origin is not None and type(None) in getattr(ft, "__args__", ()):
            ft = next(a for a in ft.__args__ if a is not type(None))
        t = ft
    return t if dataclasses.is_dataclass(t) else None


def _translate(exc: Exception, prefix: str = "", schema: type = RunConfig) -> ConfigError:
    """Turn an OmegaConf validation error into a ConfigError naming key, value, allowed."""
    rel = getattr(exc, "full_key", None) or ""  # relative to ``schema``
    key = f"{prefix}.{rel}" if prefix and rel else (prefix or rel)
    msg = str(exc).split("\n")[0]
    if isinstance(exc, oc_errors.ConfigKeyError) or "not in struct" in msg or "Key '" in msg and "not in" in msg:
        bad = rel.rsplit(".", 1)[-1]
        parent = rel.rsplit(".", 1)[0] if "." in rel else ""
        ptype = _schema_at([p for p in parent.replace("[", ".").replace("]", "").split(".") if p], schema)
        allowed = _fields_of(ptype) if ptype is not None else []
        hint = difflib.get_close_matches(bad, allowed, n=1)
        text = f"unknown key {bad!r}"
        if hint:
            text += f"; did you mean {hint[0]!r}?"
        if allowed:
            text += f" Allowed keys here: {', '.join(allowed)}."
        return ConfigError(text, key=key)
    if isinstance(exc, oc_errors.MissingMandatoryValue):
        if key == "backbone.name":
            return ConfigError("no backbone given; set backbone.name (see 'marble backbones')", key=key)
        return ConfigError("a value is required here but none was given", key=key)
    value = getattr(exc, "value", None)
    return ConfigError(f"bad value {value!r}: {msg}", key=key)


def structured_args(spec: Any, args: Any, key: str) -> Any:
    """Validate a component's ``args`` mapping against its spec's args dataclass."""
    if isinstance(args, (DictConfig, ListConfig)):
        args = OmegaConf.to_container(args, resolve=True)
    args = dict(args or {})
    if spec.args is None:
        return args
    try:
        schema = OmegaConf.structured(spec.args)
        merged = OmegaConf.merge(schema, args)
        return OmegaConf.to_object(merged)
    except (oc_errors.OmegaConfBaseException, ValueError, TypeError) as exc:
        err = _translate(exc, prefix=key, schema=spec.args)
        raise ConfigError(f"{err.args[0].split(': ', 1)[-1]} (component '{spec.name}')", key=err.key) from None


def _resolve_path(path: str, config_dir: str | None) -> str:
    path = os.path.expanduser(os.path.expandvars(path))
    if os.path.isabs(path) or os.path.exists(path) or config_dir is None:
        return path
    alt = os.path.join(config_dir, path)
    return alt if os.path.exists(alt) else path


# ------------------------------------------------------------------------ loading
def load_config(path: str | None, overrides: list[str] | None = None, *, data: dict | None = None) -> RunConfig:
    """Read a YAML file (or ``data``), apply ``key=value`` overrides, validate the schema.

    Relative prompt/resume paths resolve against the working directory, then the config's folder.
    """
    try:
        if path is not None:
            if not os.path.isfile(path):
                raise ConfigError(f"config file not found: {path}")
            raw = OmegaConf.load(path)
        else:
            raw = OmegaConf.create(data or {})
    except ConfigError:
        raise
    except Exception as exc:  # YAML syntax error
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (output_dir, backbone, rewards, ...)")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key=value (for example train.iterations=10)")
    try:
        cli = OmegaConf.from_dotlist(list(overrides or []))
    except Exception as exc:
        raise ConfigError(f"bad override: {exc}") from None
    schema = OmegaConf.structured(RunConfig)
    try:
        plain = OmegaConf.merge(raw, cli)
    except Exception as exc:
        raise ConfigError(f"bad override: {exc}") from None
    _check_list_items(plain)
    try:
        merged = OmegaConf.merge(schema, plain)
        OmegaConf.resolve(merged)
        cfg: RunConfig = OmegaConf.to_object(merged)
    except (oc_errors.OmegaConfBaseException, ValueError, TypeError) as exc:
        raise _translate(exc) from None
    _check(cfg, os.path.dirname(os.path.abspath(path)) if path else None)
    return cfg


_LIST_SECTIONS = {"rewards": RewardConfig, "eval_rewards": RewardConfig, "prompts": PromptSource,
                  "eval_prompts": PromptSource, "train.stages": StageConfig}


def _check_list_items(plain: DictConfig) -> None:
    """Validate list items one by one: OmegaConf's own errors lose the list index."""
    for section, item_type in _LIST_SECTIONS.items():
        node = OmegaConf.select(plain, section, default=None)
        if node is None:
            continue
        if not isinstance(node, ListConfig):
            raise ConfigError(f"must be a list, got {OmegaConf.to_container(node) if isinstance(node, DictConfig) else node!r}",
                              key=section)
        for i, item in enumerate(node):
            if not isinstance(item, DictConfig):
                raise ConfigError(f"each entry must be a mapping, got {item!r}", key=f"{section}[{i}]")
            try:
                OmegaConf.merge(OmegaConf.structured(item_type), item)
            except (oc_errors.OmegaConfBaseException, ValueError, TypeError) as exc:
                raise _translate(exc, prefix=f"{section}[{i}]", schema=item_type) from None


def _check(cfg: RunConfig, config_dir: str | None) -> None:
    """Semantic checks that the schema cannot express."""
    cfg.train.overlap_rewards = str(cfg.train.overlap_rewards).lower()  # YAML true/false arrive as bools
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"bad value {value!r}; allowed: {', '.join(allowed)}", key=key)
    if cfg.backbone.name in (None, "", MISSING):
        raise ConfigError("no backbone given; set backbone.name (see 'marble backbones')", key="backbone.name")
    if not cfg.rewards:
        raise ConfigError("no rewards given; add at least one {name, weight, args} (see 'marble rewards')", key="rewards")
    names = [r.name for r in cfg.rewards]
    for i, r in enumerate(cfg.rewards):
        if names.count(r.name) > 1:
            raise ConfigError(f"reward {r.name!r} is listed twice", key=f"rewards[{i}].name")
        if r.weight < 0:
            raise ConfigError(f"bad value {r.weight!r}: weights must be >= 0", key=f"rewards[{i}].weight")
    t = cfg.train
    positive = ("iterations", "prompts_per_iteration", "group_size", "num_steps", "micro_batch", "optimizer_steps",
                "eval_images_per_prompt")
    for name in positive:
        if getattr(t, name) < 1:
            raise ConfigError(f"bad value {getattr(t, name)!r}: must be >= 1", key=f"train.{name}")
    if t.optimizer_steps > t.prompts_per_iteration * t.group_size:
        raise ConfigError(f"bad value {t.optimizer_steps!r}: more optimizer steps than samples per iteration "
                          f"({t.prompts_per_iteration} x {t.group_size})", key="train.optimizer_steps")
    if t.loss_noise == "group" and t.optimizer_steps > t.prompts_per_iteration:
        raise ConfigError(f"train.loss_noise=group keeps each prompt group in one optimizer step, so "
                          f"train.optimizer_steps ({t.optimizer_steps}) must be <= train.prompts_per_iteration "
                          f"({t.prompts_per_iteration})", key="train.optimizer_steps")
    if t.timesteps_per_sample is not None and not 1 <= t.timesteps_per_sample <= t.num_steps:
        raise ConfigError(f"bad value {t.timesteps_per_sample!r}: must be in 1..train.num_steps ({t.num_steps})",
                          key="train.timesteps_per_sample")
    if t.beta <= 0:
        raise ConfigError(f"bad value {t.beta!r}: must be > 0", key="train.beta")
    if t.a_max <= 0:
        raise ConfigError(f"bad value {t.a_max!r}: must be > 0", key="train.a_max")
    if len(t.adam_betas) != 2:
        raise ConfigError(f"bad value {t.adam_betas!r}: two numbers", key="train.adam_betas")
    if not cfg.prompts:
        raise ConfigError("no prompt sources given; add {path: FILE} or {texts: [...]}", key="prompts")
    for section in ("prompts", "eval_prompts"):
        for i, src in enumerate(getattr(cfg, section)):
            k = f"{section}[{i}]"
            if (src.path is None) == (src.texts is None):
                raise ConfigError("give exactly one of 'path' or 'texts'", key=k)
            if src.path is not None:
                src.path = _resolve_path(src.path, config_dir)
            if src.weight <= 0:
                raise ConfigError(f"bad value {src.weight!r}: must be > 0", key=f"{k}.weight")
            for j, rn in enumerate(src.rewards or []):
                if rn not in names and rn not in [r.name for r in cfg.eval_rewards]:
                    hint = difflib.get_close_matches(rn, names, n=1)
                    raise ConfigError(
                        f"reward {rn!r} is not among the configured rewards ({', '.join(names)})"
                        + (f"; did you mean {hint[0]!r}?" if hint else ""), key=f"{k}.rewards[{j}]")
    for i, st in enumerate(t.stages):
        for j, rn in enumerate(st.rewards):
            if rn not in names:
                raise ConfigError(f"reward {rn!r} is not among the configured rewards ({', '.join(names)})",
                                  key=f"train.stages[{i}].rewards[{j}]")
    if cfg.resume:
        cfg.resume = _resolve_path(cfg.resume, config_dir)


def validate_components(cfg: RunConfig, host=None) -> dict[str, Any]:
    """Check every component name and its args against the installed plugins.

    Returns ``{"backbone": args, "rewards": [args...], "eval_rewards": [...], "balancer": args}``
    with args validated into each spec's dataclass. Builds nothing."""
    from marble.host import get_host

    host = host or get_host()
    out: dict[str, Any] = {}
    comp = host.get("backbone", cfg.backbone.name, key="backbone.name")
    out["backbone"] = structured_args(comp.spec, cfg.backbone.args, "backbone.args")
    for section in ("rewards", "eval_rewards"):
        out[section] = []
        for i, r in enumerate(getattr(cfg, section)):
            comp = host.get("reward", r.name, key=f"{section}[{i}].name")
            out[section].append(structured_args(comp.spec, r.args, f"{section}[{i}].args"))
    comp = host.get("balancer", cfg.balancer.name, key="balancer.name")
    out["balancer"] = structured_args(comp.spec, cfg.balancer.args, "balancer.args")
    return out


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
