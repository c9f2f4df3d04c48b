"""What the SD3 and FLUX backbones share: loading and checking a diffusers folder, the two LoRA
adapters, the flow-ODE samplers, the prompt-embedding cache, VAE decoding, saving the LoRA.

Conventions (ALGORITHM.md 1.5): t in [0, 1], x_t = (1 - t) x0 + t eps, the transformer predicts
v = eps - x0, so an ODE step from t to s is x_s = x_t + (s - t) v.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from collections import OrderedDict
from typing import Any

import torch

from marble.backbone import Backbone, Rollout
from marble.devices import resolve_device, resolve_dtype
from marble.errors import BackboneError
from marble_diffusers.args import TINY

ADAPTERS = ("trained", "old", "reference")
SAMPLERS = ("euler", "dpm2")
_PEFT_NAME = {"trained": "default", "old": "old"}


def shift_time(t: torch.Tensor, scheduler_config: dict, image_seq_len: int) -> torch.Tensor:
    """Apply the checkpoint scheduler's time shift to times ``t`` in [0, 1] (0 and 1 are fixed).

    Static shift s (SD3: 3.0): t' = s t / (1 + (s - 1) t).
    Dynamic (FLUX.1-dev): mu grows linearly with the image token count between
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift);
    exponential: t' = e^mu / (e^mu + (1/t - 1)), linear: t' = mu / (mu + (1/t - 1)).
    """
    cfg = scheduler_config
    if cfg.get("use_dynamic_shifting", False):
        x0, x1 = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        y0, y1 = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
        mu = y0 + (y1 - y0) * (image_seq_len - x0) / (x1 - x0)
        a = math.exp(mu) if cfg.get("time_shift_type", "exponential") == "exponential" else mu
        inner = torch.where(t > 0, 1.0 / t - 1.0, torch.full_like(t, float("inf")))
        return torch.where(t > 0, a / (a + inner), torch.zeros_like(t))
    s = float(cfg.get("shift", 1.0))
    return s * t / (1 + (s - 1) * t)


class DiffusersFlowBackbone(Backbone):
    """Base of the diffusers backbones. Subclasses set the class attributes below and implement
    ``_load_pipeline``, ``_encode_uncached``, ``_forward``, ``_noise``, ``_to_vae_latents``."""

    #: backbone name (for messages), pipeline class name expected in model_index.json
    name: str = ""
    pipeline_class: str = ""
    example_hub_id: str = ""
    other_backbones: dict = {}  # pipeline class name -> backbone that loads it
    #: the components the backbone needs from the folder (model subfolders and the rest)
    required_models: tuple = ()
    required_other: tuple = ()
    #: ModuleList attributes of the transformer holding its repeated blocks (regional compilation)
    repeated_block_lists: tuple = ("transformer_blocks", "single_transformer_blocks")

    # ------------------------------------------------------------------ construction
    def __init__(self, args: Any):
        self.args = args
        try:
            self.device = resolve_device(args.device)
            self.dtype = resolve_dtype(args.dtype, self.device)
        except (ValueError, RuntimeError) as e:
            raise BackboneError(f"backbone '{self.name}': {e}. Fix: set device/dtype to a valid value") from e
        # ODE state / returned latents: fp32 (fp64 when the model runs in fp64)
        self.state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.lora_dtype = torch.float32 if self.dtype in (torch.bfloat16, torch.float16) else self.dtype
        if args.lora_rank < 1 and not args.full_finetune:
            raise BackboneError(f"backbone '{self.name}': lora_rank must be >= 1, got {args.lora_rank}")

        self.model_path = self._resolve_model()
        # resolution is checked from the configs, before any weights load
        self.transformer_config, vae_config = self._load_component_configs(self.model_path)
        self.vae_scale_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
        self._check_resolution()
        pipe = self._load_pipeline(self.model_path)
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scheduler_config = dict(pipe.scheduler.config)

        # 1. Everything frozen, eval mode (no dropout): only the adapter trains.
        for module in self._text_encoders() + [self.vae, self.transformer]:
            module.requires_grad_(False)
            module.eval()
        self._mode: str | None = None
        if args.full_finetune:
            self._setup_full_finetune()
        else:
            self._setup_lora()
        if args.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

        # 2. Placement: transformer on the device; encoders/VAE too unless offloaded.
        self.transformer.to(self.device)
        for extra in (self._old_model, self._ref_model):
            if extra is not None:
                extra.to(self.device)
        enc_device = torch.device("cpu") if args.offload_encoders else self.device
        for module in self._text_encoders() + [self.vae]:
            module.to(enc_device)

        # 3. The fast path (fast.py): switchable LoRA + regional compilation of the blocks.
        self._switch = None
        self.compiled = self._setup_compile()

        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._pinned: dict[str, dict] = {}
        self._encoders_freed = False
        self.set_adapter("trained")

    # ------------------------------------------------------------------ model folder
    def _err(self, what: str, fix: str) -> BackboneError:
        return BackboneError(f"backbone '{self.name}': {what}. Fix: {fix}")

    def _resolve_model(self) -> str:
        model = str(self.args.model)
        if model == TINY:
            return str(self._tiny_path(self.args.tiny_seed))
        local = os.path.expanduser(model)
        if os.path.isdir(local):
            self._check_folder(local)
            return local
        looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
        if os.path.exists(local) or looks_local:
            raise self._err(
                f"model folder '{model}' does not exist (or is not a folder)",
                f"point 'model' at a diffusers {self.pipeline_class} folder (one holding model_index.json), "
                "or at a hub id such as '" + self.example_hub_id + "'",
            )
        return model  # a hub id: diffusers resolves it (cache or download)

    def _check_folder(self, path: str) -> None:
        index = os.path.join(path, "model_index.json")
        if not os.path.isfile(index):
            raise self._err(
                f"'{path}' is not a diffusers pipeline folder (no model_index.json)",
                f"use a folder written by {self.pipeline_class}.save_pretrained or downloaded with "
                f"`hf download <repo> --local-dir {path}`",
            )
        try:
            with open(index) as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise self._err(f"cannot read '{index}': {e}", "re-download the checkpoint") from e
        cls = info.get("_class_name")
        if cls != self.pipeline_class:
            other = self.other_backbones.get(cls)
            hint = f"use backbone '{other}' for it" if other else f"use a {self.pipeline_class} checkpoint"
            raise self._err(f"'{path}' holds a {cls} checkpoint, not {self.pipeline_class}", hint)
        missing = []
        for comp in self.required_models + self.required_other:
            if comp not in self._components_needed():
                continue
            entry = info.get(comp)
            sub = os.path.join(path, comp)
            if not entry or entry[0] is None or not os.path.isdir(sub):
                missing.append(f"{comp}/ (folder missing)")
                continue
            files = os.listdir(sub)
            if comp in self.required_models:
                if "config.json" not in files:
                    missing.append(f"{comp}/config.json")
                if not any(f.endswith((".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")) for f in files):
                    missing.append(f"{comp}/ weights (*.safetensors)")
                else:
                    missing += [f"{comp}/{s}" for s in _missing_shards(sub, files)]
            elif comp == "scheduler" and "scheduler_config.json" not in files:
                missing.append("scheduler/scheduler_config.json")
            elif comp.startswith("tokenizer") and not files:
                missing.append(f"{comp}/ (empty)")
        if missing:
            raise self._err(
                f"model folder '{path}' is incomplete: missing {', '.join(missing)}",
                "finish the download (`hf download <repo> --local-dir <folder>` resumes) or point 'model' at a complete folder",
            )

    def _components_needed(self) -> tuple:
        return self.required_models + self.required_other

    def _load_component_configs(self, path: str) -> tuple[dict, dict]:
        """transformer and vae configs, read before any weights load (fast resolution check)."""
        from diffusers import AutoencoderKL

        tcls = self._transformer_class()
        kw = {"revision": self.args.revision} if not os.path.isdir(path) else {}
        try:
            tcfg = tcls.load_config(path, subfolder="transformer", **kw)
            vcfg = AutoencoderKL.load_config(path, subfolder="vae", **kw)
        except Exception as e:  # hub or file errors: one actionable message
            raise self._load_error(path, e) from e
        return dict(tcfg), dict(vcfg)

    def _load_error(self, path: str, e: Exception) -> BackboneError:
        where = "local folder" if os.path.isdir(path) else "hub id"
        return self._err(
            f"could not load {self.pipeline_class} from {where} '{path}': {type(e).__name__}: {str(e).strip()[:400]}",
            "check the model id/revision and your hub access (gated models need `hf auth login` and accepting the "
            "license; without network, HF_HUB_OFFLINE=1 uses only the local cache), or download it once and set "
            "'model' to the local folder",
        )

    def _from_pretrained(self, pipeline_cls, path: str, **components):
        kw: dict[str, Any] = {_dtype_kwarg(): self.dtype}
        if not os.path.isdir(path) and self.args.revision:
            kw["revision"] = self.args.revision
        try:
            return pipeline_cls.from_pretrained(path, **kw, **components)
        except Exception as e:
            raise self._load_error(path, e) from e

    def _check_resolution(self) -> None:
        res = self.args.resolution
        mult = self.vae_scale_factor * self._latent_patch()
        if not isinstance(res, int) or res <= 0 or res % mult:
            lo = max(mult, (res // mult) * mult) if isinstance(res, int) else mult
            raise self._err(
                f"resolution {res} is not divisible by {mult} (vae_scale_factor {self.vae_scale_factor} x patch size "
                f"{self._latent_patch()})",
                f"use a multiple of {mult}, e.g. {lo} or {lo + mult}",
            )
        self._check_resolution_limit(res)

    def _check_resolution_limit(self, res: int) -> None:
        pass

    def _latent_patch(self) -> int:
        return 2

    # ------------------------------------------------------------------ adapters
    def _lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=int(self.args.lora_rank),
            lora_alpha=float(self.args.lora_alpha),
            target_modules=list(self.args.lora_targets),
            init_lora_weights=True,  # A: Kaiming-uniform, B: 0 -> the LoRA starts as the base model
        )

    def _check_lora_targets(self) -> None:
        targets = list(self.args.lora_targets)
        if not targets:
            raise self._err("lora_targets is empty", "list module-name suffixes such as 'attn.to_q'")
        linear_names = [n for n, m in self.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
        bad = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear_names)]
        if bad:
            suffixes = sorted({".".join(n.split(".")[-2:]) for n in linear_names})
            raise self._err(
                f"LoRA target(s) {bad} match no linear layer of the {type(self.transformer).__name__} in '{self.args.model}'",
                f"choose module-name suffixes that exist, e.g. {suffixes[:24]}",
            )

    def _setup_lora(self) -> None:
        self._check_lora_targets()
        self._old_model = self._ref_model = None
        config = self._lora_config()
        # Adapters are created on the CPU (the model is still there) under a fixed seed, so the
        # initialisation is the same on every device.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            torch.manual_seed(int(self.args.seed))
            self.transformer.add_adapter(config, adapter_name="default")
            self.transformer.add_adapter(copy.deepcopy(config), adapter_name="old")
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._lora_layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]
        pairs: dict[str, dict[str, torch.nn.Parameter]] = {"default": {}, "old": {}}
        for pname, p in self.transformer.named_parameters():
            for adapter in ("default", "old"):
                tag = f".{adapter}."
                if tag in pname and ".lora_" in pname:
                    p.data = p.data.to(self.lora_dtype)
                    pairs[adapter][pname.replace(tag, ".")] = p
        if list(pairs["default"]) != list(pairs["old"]) or not pairs["default"]:
            raise self._err("peft created mismatched 'default'/'old' adapters", "report this as a bug")
        self._keys = list(pairs["default"])
        self._trained = [pairs["default"][k] for k in self._keys]
        self._old = [pairs["old"][k] for k in self._keys]
        with torch.no_grad():
            for o, p in zip(self._old, self._trained):
                o.copy_(p)  # theta_old = theta at the start
        # The one place requires_grad is decided; set_adapter restores it after every switch
        # (peft's set_adapter / enable_adapters flip it as a side effect).
        self.transformer.requires_grad_(False)
        for p in self._trained:
            p.requires_grad_(True)
        self._grad_flags = [(p, p.requires_grad) for p in self.transformer.parameters()]

    def _setup_compile(self) -> bool:
        """``compile`` arg: "auto" (on with CUDA), "true", "false". On: every LoRA layer gets the
        switchable forward (adapter switches rebind tensors, no recompilation; LoRA computed in
        the model dtype from fp32 masters) and every repeated transformer block is compiled."""
        from marble_diffusers.fast import LoRASwitch, compile_blocks, repeated_blocks, resolve_compile

        try:
            on = resolve_compile(getattr(self.args, "compile", "false"), self.device)
        except ValueError as e:
            raise self._err(str(e), "set compile to auto, true or false") from e
        if not on:
            return False
        if not self.args.full_finetune:
            try:
                self._switch = LoRASwitch(self._lora_layers, dict(_PEFT_NAME), self.dtype, self.device)
            except ValueError as e:
                raise self._err(f"cannot use the compiled fast path: {e}", "set compile: false") from e
        models = [self.transformer] + [m for m in (self._old_model, self._ref_model) if m is not None]
        blocks = [b for m in models for b in repeated_blocks(m, self.repeated_block_lists)]
        if not blocks:
            raise self._err(f"found no repeated blocks ({', '.join(self.repeated_block_lists)}) to compile "
                            f"in {type(self.transformer).__name__}", "set compile: false")
        self.compiled_blocks = compile_blocks(blocks)
        return True

    def _setup_full_finetune(self) -> None:
        self._lora_layers = []
        self._old_model = copy.deepcopy(self.transformer)
        self._ref_model = copy.deepcopy(self.transformer)
        named = list(self.transformer.named_parameters())
        self._keys = [n for n, _ in named]
        self._trained = [p for _, p in named]
        self._old = list(self._old_model.parameters())
        self.transformer.requires_grad_(True)
        self._old_model.requires_grad_(False)
        self._ref_model.requires_grad_(False)
        self._grad_flags = []

    def set_adapter(self, adapter: str) -> torch.nn.Module:
        """Make ``adapter`` the active weights; returns the module to call. Never changes which
        parameters require grad."""
        if adapter not in ADAPTERS:
            raise self._err(f"unknown adapter {adapter!r}", f"use one of {list(ADAPTERS)}")
        if self.args.full_finetune:
            return {"trained": self.transformer, "old": self._old_model, "reference": self._ref_model}[adapter]
        if self._switch is not None:  # fast path: rebind tensors, peft's state is not consulted
            self._mode = self._switch.select(adapter, torch.is_grad_enabled())
            return self.transformer
        if adapter != self._mode:
            for layer in self._lora_layers:
                if adapter == "reference":
                    layer.enable_adapters(False)
                else:
                    layer.enable_adapters(True)
                    layer.set_adapter(_PEFT_NAME[adapter])
            for p, flag in self._grad_flags:
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
            self._mode = adapter
        return self.transformer

    def trainable_parameters(self) -> list:
        return list(self._trained)

    @torch.no_grad()
    def soft_update_old(self, eta: float) -> None:
        # ALGORITHM.md 1.8: theta_old <- eta * theta_old + (1 - eta) * theta
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise self._err(f"soft_update_old eta must be in [0, 1], got {eta}", "check the old-policy schedule")
        if eta == 1.0:
            return
        if eta == 0.0:
            torch._foreach_copy_(self._old, self._trained)
            return
        torch._foreach_mul_(self._old, eta)
        torch._foreach_add_(self._old, self._trained, alpha=1.0 - eta)

    def _params(self, which: str) -> list:
        if which == "trained":
            return self._trained
        if which == "old":
            return self._old
        raise self._err(f"adapter_state takes 'trained' or 'old', got {which!r}", "the reference has no state")

    def adapter_state(self, which: str) -> dict:
        return {k: p.detach().to("cpu", copy=True) for k, p in zip(self._keys, self._params(which))}

    @torch.no_grad()
    def load_adapter_state(self, which: str, state: dict) -> None:
        params = self._params(which)
        if set(state) != set(self._keys):
            missing, extra = set(self._keys) - set(state), set(state) - set(self._keys)
            raise self._err(
                f"adapter state for '{which}' does not match this model: {len(missing)} missing key(s) "
                f"{sorted(missing)[:3]}, {len(extra)} unexpected {sorted(extra)[:3]}",
                "load a state saved by the same backbone with the same lora_rank/lora_targets",
            )
        for k, p in zip(self._keys, params):
            v = state[k]
            if tuple(v.shape) != tuple(p.shape):
                raise self._err(f"adapter tensor '{k}' has shape {tuple(v.shape)}, expected {tuple(p.shape)}",
                                "load a state saved with the same lora_rank")
            p.copy_(v.to(device=p.device, dtype=p.dtype))

    def save_lora(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        if self.args.full_finetune:
            # no LoRA to save: the whole transformer, loadable with <TransformerClass>.from_pretrained(dir, subfolder="transformer")
            self.transformer.save_pretrained(os.path.join(directory, "transformer"))
            return
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.transformer, adapter_name="default")
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        metadata = self.transformer.peft_config["default"].to_dict()
        # the metadata carries lora_alpha: without it diffusers' loader assumes alpha = rank
        type(self.pipe).save_lora_weights(
            directory,
            transformer_lora_layers=state,
            transformer_lora_adapter_metadata=metadata,
        )

    def versions(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for dist in ("marble-diffusers", "diffusers", "transformers", "peft", "torch", "safetensors"):
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                pass
        out["model"] = str(self.args.model) + (f"@{self.args.revision}" if self.args.revision else "")
        return out

    # ------------------------------------------------------------------ prompts
    def _text_encoders(self) -> list:
        return [m for m in (getattr(self.pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")) if m is not None]

    @contextlib.contextmanager
    def _on_device(self, modules):
        """Run ``modules`` on the compute device, back to the CPU afterwards when offloading."""
        offload = self.args.offload_encoders and self.device.type != "cpu"
        if offload:
            for m in modules:
                m.to(self.device)
        try:
            yield
        finally:
            if offload:
                for m in modules:
                    m.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise self._err("encode_prompts takes a list of strings", "wrap a single prompt in a list")
        if len(prompts) == 0:
            raise self._err("encode_prompts got an empty list", "pass at least one prompt")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._pinned and p not in self._cache]
        if missing:
            if self._encoders_freed:
                raise self._err(
                    f"prompt {missing[0]!r} is not in the prompt cache and the text encoders were freed",
                    "pass every prompt (and '' for CFG) to cache_prompts() before freeing, or set offload_encoders: false",
                )
            with self._on_device(self._text_encoders()):
                # Fixed-shape chunks (padded with the empty prompt): a prompt's embedding must not
                # depend on which other prompts shared its batch, or a resumed run (cold cache)
                # would differ in the last bits from an uninterrupted one (warm cache).
                batch = 8
                for i in range(0, len(missing), batch):
                    chunk = missing[i : i + batch]
                    enc = self._encode_uncached(chunk + [""] * (batch - len(chunk)))
                    for j, p in enumerate(chunk):
                        self._cache[p] = {k: v[j].to("cpu", self.dtype) for k, v in enc.items()}
        rows = []
        for p in prompts:
            if p in self._pinned:
                rows.append(self._pinned[p])
            else:
                self._cache.move_to_end(p)
                rows.append(self._cache[p])
        out = {k: torch.stack([r[k] for r in rows]).to(self.device) for k in rows[0]}
        while len(self._cache) > max(int(self.args.prompt_cache_size), 0):
            self._cache.popitem(last=False)
        return out

    def cache_prompts(self, prompts: list[str], free_encoders: bool | None = None) -> None:
        """Encode ``prompts`` (and '' for CFG) once and keep them for the whole run; with
        ``offload_encoders`` (or ``free_encoders=True``) the text encoders are freed afterwards."""
        todo = list(dict.fromkeys(list(prompts) + [""]))
        for i in range(0, len(todo), 64):
            chunk = todo[i : i + 64]
            cond = self.encode_prompts(chunk)
            for j, p in enumerate(chunk):
                self._pinned[p] = {k: v[j].to("cpu") for k, v in cond.items()}
        if free_encoders if free_encoders is not None else self.args.offload_encoders:
            self.free_encoders()

    def free_encoders(self) -> None:
        """Drop the text encoders (prompts already cached keep working)."""
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(self.pipe, name, None) is not None:
                setattr(self.pipe, name, None)
        self._encoders_freed = True
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ velocity, sampling
    def velocity(self, x_t, t, cond: dict, adapter: str = "trained"):
        model = self.set_adapter(adapter)
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=self.device)
        t = (t.expand(n) if t.ndim == 0 else t).to(self.device, self.state_dtype)
        if t.shape != (n,):
            raise self._err(f"t has shape {tuple(t.shape)}, expected ({n},) or a scalar", "pass one time per sample")
        cond = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in cond.items()}
        out = self._forward(model, x_t.to(self.device, self.dtype), t, cond)
        return out.to(x_t.dtype)

    def time_grid(self, num_steps: int) -> torch.Tensor:
        """num_steps + 1 times from 1 to 0: the uniform grid under the checkpoint's time shift."""
        u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        t = shift_time(u, self.scheduler_config, self._image_seq_len())
        return t.to(self.state_dtype)

    def _guided(self, x, t: float, cond, uncond, adapter, guidance_scale):
        n = x.shape[0]
        tt = torch.full((n,), t, device=self.device, dtype=self.state_dtype)
        if uncond is None:
            return self.velocity(x, tt, cond, adapter)
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        v_u, v_c = self.velocity(torch.cat([x, x]), torch.cat([tt, tt]), both, adapter).chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    @torch.no_grad()
    def sample(self, cond: dict, *, num_steps: int, generator, adapter: str = "old",
               guidance_scale: float = 1.0, sampler: str = "euler") -> Rollout:
        if sampler not in SAMPLERS:
            raise self._err(f"unknown sampler {sampler!r}", f"use one of {list(SAMPLERS)}")
        if int(num_steps) < 1:
            raise self._err(f"num_steps must be >= 1, got {num_steps}", "use e.g. 10")
        if adapter not in ADAPTERS:
            raise self._err(f"unknown adapter {adapter!r}", f"use one of {list(ADAPTERS)}")
        n = next(iter(cond.values())).shape[0]
        uncond = None
        if guidance_scale > 1.0:
            neg = self.encode_prompts([""])
            uncond = {k: v.expand(n, *v.shape[1:]) for k, v in neg.items()}
        # the initial noise comes from the caller's generator (CPU), so a seed fixes the images
        gen_device = generator.device if generator is not None else torch.device("cpu")
        eps = torch.randn(self._noise_shape(n), generator=generator, device=gen_device, dtype=torch.float32)
        x = self._pack(eps).to(self.device, self.state_dtype)
        # The time grid stays on the CPU: the step sizes are computed there in the state dtype
        # (the same IEEE arithmetic as on the device) and passed as Python numbers, so the loop
        # never waits for the device (no host sync per ODE step).
        ts = self.time_grid(int(num_steps))
        for i in range(int(num_steps)):
            t, s = ts[i], ts[i + 1]
            v = self._guided(x, float(t), cond, uncond, adapter, guidance_scale)
            if sampler == "euler":
                x = x + float(s - t) * v  # first order
            else:
                m = 0.5 * (t + s)  # second order: explicit midpoint
                x_mid = x + float(m - t) * v
                v_mid = self._guided(x_mid, float(m), cond, uncond, adapter, guidance_scale)
                x = x + float(s - t) * v_mid
        return Rollout(latents=x, timesteps=ts[:-1].to(self.device), images=self.decode(x))

    @torch.no_grad()
    def decode(self, latents) -> torch.Tensor:
        """Clean latents -> images N x 3 x H x W in [0, 1] (VAE decode of x / scaling + shift)."""
        cfg = self.vae.config
        out = []
        bs = max(int(self.args.decode_batch_size), 1)
        with self._on_device([self.vae]):
            vae_device = next(self.vae.parameters()).device
            for i in range(0, latents.shape[0], bs):
                z = self._unpack(latents[i : i + bs])
                z = z / cfg.scaling_factor + (cfg.shift_factor or 0.0)
                img = self.vae.decode(z.to(vae_device, self.vae.dtype), return_dict=False)[0]
                out.append((img.to(self.device, self.state_dtype) / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    # hooks for packed-latent models (FLUX); identity for SD3
    def _pack(self, z):
        return z

    def _unpack(self, x):
        return x

    def _noise_shape(self, n: int) -> tuple:
        h = self.args.resolution // self.vae_scale_factor
        return (n, self.vae.config.latent_channels, h, h)

    def _image_seq_len(self) -> int:
        h = self.args.resolution // self.vae_scale_factor
        return (h // self._latent_patch()) ** 2

    # ------------------------------------------------------------------ subclass hooks
    def _tiny_path(self, seed: int):
        raise NotImplementedError

    def _transformer_class(self):
        raise NotImplementedError

    def _load_pipeline(self, path: str):
        raise NotImplementedError

    def _encode_uncached(self, prompts: list[str]) -> dict:
        raise NotImplementedError

    def _forward(self, model, x, t, cond):
        raise NotImplementedError


def _missing_shards(folder: str, files: list[str]) -> list[str]:
    """Shards named by a *.index.json that are not in the folder."""
    missing = []
    for f in files:
        if f.endswith(".index.json"):
            try:
                with open(os.path.join(folder, f)) as fh:
                    shards = set(json.load(fh).get("weight_map", {}).values())
            except (OSError, ValueError):
                return [f + " (unreadable)"]
            missing += sorted(s for s in shards if s not in files)
    return missing


def _dtype_kwarg() -> str:
    """diffusers renamed from_pretrained(torch_dtype=) to dtype=; use whichever this version wants."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"
