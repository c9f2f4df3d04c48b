"""The training loop: DiffusionNFT online RL with per-reward advantages and a balancer.

One iteration, top to bottom (ALGORITHM.md section 1):

1. draw P prompts, repeat each G times (a group per prompt);
2. roll out with the *old* adapter (deterministic flow ODE) and score every image with every
   reward (per-sample score + mask), chunk by chunk;
3. one advantage normalizer per reward (Eq. 3) -> optimality probabilities r_k (1.4);
4. for each optimizer step (a chunk of the samples): T timesteps x micro-batches of the NFT loss
   (Eq. 2) - one backward of the balancer's mix (amortized, Proposition 1), or K per-reward
   backward passes when the balancer refreshes (Eqs. 4-8) - then grad clip and AdamW;
5. soft-update the old adapter (1.8); log diagnostics (section 3); checkpoint; evaluate.

Data parallel (marble/distributed.py): each rank rolls out and scores its block of the global
micro-batches, scores are gathered so every rank normalizes the whole batch, each rank trains on
its own samples of every optimizer step, and gradients are summed across ranks before the
balancer (refresh steps) or the optimizer (amortized steps). Single-process, every collective is
the identity.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from marble.advantages import AdvantageNormalizer
from marble.checkpoint import atomic_write_text, latest_checkpoint, list_checkpoints, write_checkpoint
from marble.config import RunConfig, to_yaml, validate_components
from marble.distributed import Distributed, mix_seed, shard
from marble.errors import MarbleError, RewardError
from marble.host import get_host
from marble.nft import kl_loss, nft_branch_losses, optimality_probability
from marble.prompts import PromptSampler, load_sources


@dataclass
class TrainBatch:
    """The training data of one optimizer step (ALGORITHM.md 1.5)."""

    latents: torch.Tensor  # x0 [N, ...]
    cond: dict  # batch-first tensors [N, ...]
    r: torch.Tensor  # optimality probabilities [N, K] (float64)
    valid: torch.Tensor  # [N, K] bool: reward k applies to sample i
    t_index: torch.Tensor  # [N, T] indices into ``timesteps``
    timesteps: torch.Tensor  # the sampler's times [S]
    noise_seed: int  # fresh eps per (timestep, micro-batch), drawn from this seed
    # Data parallel: the global index of each sample (eps then comes from (noise_seed, index,
    # timestep slot), independent of how samples are split into ranks and micro-batches; with
    # train.loss_noise=group the index of its prompt group, so a group shares eps), and the
    # valid counts n_k / sample count of the whole optimizer step over all ranks (None: this batch).
    sample_ids: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    size: int | None = None


def _select(cond: dict, idx) -> dict:
    return {k: v[idx] for k, v in cond.items()}


def flat(tensors: list[torch.Tensor | None], like: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, like)])


def draw_loss_noise(mode: str, groups: torch.Tensor, S: int, T: int,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ALGORITHM.md 1.5: each sample's T training timesteps (indices into the sampler's S, shuffled)
    and the id its eps is seeded by (TrainBatch.sample_ids). train.loss_noise "sample": one draw
    per sample; "group": one draw per prompt group, shared by its images (common random numbers)."""
    if mode == "group":
        per_group = torch.stack([torch.randperm(S, generator=gen)[:T] for _ in range(int(groups.max()) + 1)])
        return per_group[groups], groups
    n = groups.shape[0]
    return torch.stack([torch.randperm(S, generator=gen)[:T] for _ in range(n)]), torch.arange(n)


def old_update_eta(step: int, rate: float, maximum: float, delay: int = 0) -> float:
    """ALGORITHM.md 1.8: eta = min(rate * (step - delay), max), 0 before ``delay``."""
    return min(rate * max(step - delay, 0), maximum)


class Trainer:
    """Build with a validated ``RunConfig``; ``train()`` runs the loop.

    ``backbone`` and ``rewards`` may be passed in (tests, notebooks); otherwise they are built
    from the config through the plugin host."""

    def __init__(self, cfg: RunConfig, *, backbone=None, rewards: list | None = None, eval_rewards: list | None = None,
                 dist: Distributed | None = None):
        self.cfg = cfg
        t = cfg.train
        host = get_host()
        args = validate_components(cfg, host)
        self.components = self._component_versions(host)
        # Under accelerate launch / torchrun: join the process group (marble/distributed.py).
        self.dist = dist if dist is not None else Distributed.from_env()
        torch.manual_seed(t.seed)
        if backbone is None:
            spec = host.get("backbone", cfg.backbone.name).spec
            backbone = self.dist.first_on_each_node(lambda: spec.build(args["backbone"]), "the backbone build")
        self.backbone = backbone
        self.device = backbone.device
        self._check_device()
        self.reward_names = [r.name for r in cfg.rewards]
        self.reward_weights = [float(r.weight) for r in cfg.rewards]
        if rewards is None:
            rewards = [host.get("reward", r.name).spec.build(a) for r, a in zip(cfg.rewards, args["rewards"])]
        if eval_rewards is None:
            eval_rewards = [host.get("reward", r.name).spec.build(a) for r, a in zip(cfg.eval_rewards, args["eval_rewards"])]
        self.rewards, self.eval_rewards = rewards, eval_rewards
        self.eval_names = [r.name for r in cfg.eval_rewards]
        comp = host.get("balancer", cfg.balancer.name)
        self.balancer = comp.spec.build(args["balancer"])
        self.balancer.setup(self.reward_names, self.reward_weights)
        # Eq. 3: one normalizer per reward, or one for the raw weighted sum (ALGORITHM.md 2.1).
        norm_names = ["weighted_sum"] if self.balancer.raw_mix else self.reward_names
        self.normalizers = {n: AdvantageNormalizer(std=t.adv_std) for n in norm_names}
        self.params = list(backbone.trainable_parameters())
        if not self.params:
            raise MarbleError(f"backbone '{cfg.backbone.name}' has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay,
                                           fused=self.device.type == "cuda" and self.params[0].dtype == torch.float32,
                                           betas=tuple(t.adam_betas), eps=t.adam_eps)
        self.sources = load_sources(cfg.prompts, "prompts")
        self.sampler = PromptSampler(self.sources, t.seed)
        eval_sources = load_sources(cfg.eval_prompts, "eval_prompts") if cfg.eval_prompts else self.sources
        self.eval_prompts = PromptSampler(eval_sources, t.seed).fixed(t.eval_prompts_count)
        self.step = 0
        self.iteration = 0
        self.run_dir = cfg.output_dir
        self._writer = None

    def _check_device(self) -> None:
        d = self.dist
        if not d.enabled:
            return
        if self.device.type == "cuda" and self.device.index not in (None, torch.cuda.current_device()):
            raise MarbleError(
                f"rank {d.rank} runs its backbone on {self.device}, but this process owns "
                f"cuda:{torch.cuda.current_device()}; set backbone.args.device: auto under a distributed launch")
        t = self.cfg.train
        n = t.prompts_per_iteration * t.group_size
        blocks = math.ceil(n / t.micro_batch)
        if blocks < d.world_size:
            raise MarbleError(
                f"{d.world_size} processes but only {blocks} rollout micro-batches per iteration "
                f"(prompts_per_iteration {t.prompts_per_iteration} x group_size {t.group_size} / micro_batch "
                f"{t.micro_batch}); every process needs one - raise train.prompts_per_iteration or lower "
                f"train.micro_batch")

    # ------------------------------------------------------------------ run folder
    def _component_versions(self, host) -> list[dict]:
        used = [("backbone", self.cfg.backbone.name), ("balancer", self.cfg.balancer.name)]
        used += [("reward", r.name) for r in self.cfg.rewards + self.cfg.eval_rewards]
        out = []
        for kind, name in used:
            c = host.get(kind, name)
            out.append({"kind": kind, "name": name, "plugin": c.plugin.name,
                        "distribution": c.plugin.distribution, "version": c.plugin.version})
        return out

    def _prepare_run_dir(self) -> int:
        """Every rank loads the checkpoint on resume; only the main process writes."""
        cfg = self.cfg
        if cfg.resume:
            self.run_dir = cfg.resume
            start = self._load(latest_checkpoint(cfg.resume))
        else:
            if list_checkpoints(self.run_dir):
                raise MarbleError(
                    f"output_dir {self.run_dir} already holds a run with checkpoints; resume it with "
                    f"resume={self.run_dir}, or choose another output_dir")
            start = 0
        if not self.dist.is_main:
            return start
        os.makedirs(self.run_dir, exist_ok=True)
        atomic_write_text(os.path.join(self.run_dir, "config.yaml"), to_yaml(cfg))
        import marble

        atomic_write_text(os.path.join(self.run_dir, "plugins.json"), json.dumps({
            "marble-rl": marble.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "backbone_versions": self.backbone.versions(), "components": self.components}, indent=2))
        self._trim_metrics(start if cfg.resume else -1)  # a fresh run starts a fresh log
        return start

    def _trim_metrics(self, start: int) -> None:
        """On resume, drop metric lines of iterations that will be redone."""
        path = os.path.join(self.run_dir, "metrics.jsonl")
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("iteration", 0) <= start]
        atomic_write_text(path, "".join(keep))

    def _log(self, metrics: dict) -> None:
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.cfg.train.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(os.path.join(self.run_dir, "tb"))
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "iteration" and math.isfinite(v):
                    self._writer.add_scalar(k, v, metrics["iteration"])

    # ------------------------------------------------------------------ checkpoints
    def _save(self, iteration: int) -> str:
        def fill(tmp: str) -> None:
            self.backbone.save_lora(os.path.join(tmp, "lora"))
            torch.save({
                "iteration": iteration, "step": self.step,
                "trained": self.backbone.adapter_state("trained"), "old": self.backbone.adapter_state("old"),
                "optimizer": self.optimizer.state_dict(), "balancer": self.balancer.state_dict(),
                "normalizers": {k: v.state_dict() for k, v in self.normalizers.items()},
                "torch_rng": torch.get_rng_state(),
            }, os.path.join(tmp, "state.pt"))

        return write_checkpoint(self.run_dir, iteration, fill)

    def _load(self, path: str) -> int:
        state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=False)
        self.backbone.load_adapter_state("trained", state["trained"])
        self.backbone.load_adapter_state("old", state["old"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        for k, v in state["normalizers"].items():
            if k in self.normalizers:
                self.normalizers[k].load_state_dict(v)
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        return int(state["iteration"])

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """The loop. Evaluation, logs, the progress bar and checkpoints belong to the main process;
        the phases that do not communicate run under ``dist.guard`` so that an error on one rank
        stops every rank with that error named."""
        t = self.cfg.train
        main = self.dist.is_main
        with self.dist.recording_failures():
            with self.dist.guard("the run folder set-up"):
                start = self._prepare_run_dir()
            self._sync_weights()
            from tqdm.auto import tqdm

            last: dict = {}
            with self.dist.guard("the first evaluation"):
                if main and start == 0 and self._eval_enabled():
                    self._log(self.evaluate(0))
            bar = tqdm(range(start, t.iterations), initial=start, total=t.iterations, desc="marble",
                       disable=not (t.progress and main), dynamic_ncols=True)
            for it in bar:
                self.iteration = it
                last = self.train_iteration(it)
                done = it + 1
                with self.dist.guard(f"the evaluation, log or checkpoint of iteration {done}"):
                    if main:
                        if self._eval_enabled() and (done == t.iterations or (t.eval_every and done % t.eval_every == 0)):
                            last.update(self.evaluate(done))
                        self._log(last)
                        bar.set_postfix_str(self._postfix(last))
                        if done == t.iterations or (t.save_every and done % t.save_every == 0):
                            self._save(done)
            with self.dist.guard("the LoRA export"):
                if main:
                    self._export_lora()
            if self._writer is not None:
                self._writer.close()
        return last

    def _sync_weights(self) -> None:
        """As DDP does at start: every rank takes the main process's trained and old adapters."""
        if not self.dist.enabled:
            return
        for which in ("trained", "old"):
            state = self.backbone.adapter_state(which)
            self.dist.broadcast_(list(state.values()))
            self.backbone.load_adapter_state(which, state)

    def _check_in_sync(self) -> None:
        """Verify (not assume) that the ranks' trained adapters are still bit-identical."""
        if self.dist.enabled:
            total, squares, largest = 0.0, 0.0, 0.0
            with torch.no_grad():
                for p in self.params:  # one parameter at a time (full fine-tunes are large)
                    q = p.detach().to(torch.float64)
                    total, squares = total + float(q.sum()), squares + float(q.square().sum())
                    largest = max(largest, float(q.abs().max()))
            self.dist.check_same(torch.tensor([total, squares, largest], dtype=torch.float64), f"the trained parameters after step {self.step} (sum, sum of "
                                 "squares, max abs)", "The ranks' updates diverged.")

    def _eval_enabled(self) -> bool:
        return bool(self.cfg.eval_prompts or self.cfg.eval_rewards or self.cfg.train.eval_every)

    def _postfix(self, m: dict) -> str:
        parts = []
        for n in self.reward_names:
            s = f"{n}={m.get(f'reward/{n}/mean', float('nan')):.3g}"
            if f"alpha_bar/{n}" in m:
                s += f"(a={m[f'alpha_bar/{n}']:.2f})"
            parts.append(s)
        return " ".join(parts)

    def _export_lora(self) -> None:
        final = os.path.join(self.run_dir, "lora")
        tmp = final + f".tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.backbone.save_lora(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)

    def active_rewards(self, it: int) -> list[bool]:
        """The multi-stage schedule: the last stage whose ``start`` <= it decides."""
        stages = sorted(self.cfg.train.stages, key=lambda s: s.start)
        current = None
        for st in stages:
            if st.start <= it:
                current = st
        if current is None:
            return [True] * len(self.reward_names)
        return [n in current.rewards for n in self.reward_names]

    # ------------------------------------------------------------------ 1-3: rollout and scoring
    def _score(self, reward, name: str, images, prompts, metas) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        out = reward.score(images, prompts, metas)
        scores = torch.as_tensor(getattr(out, "scores", None)).detach().to("cpu", torch.float64).reshape(-1)
        if scores.numel() != n:
            raise RewardError(f"reward '{name}' returned {scores.numel()} scores for {n} images")
        mask = getattr(out, "mask", None)
        mask = torch.ones(n, dtype=torch.bool) if mask is None else torch.as_tensor(mask).to("cpu").bool().reshape(-1)
        if mask.numel() != n:
            raise RewardError(f"reward '{name}' returned a mask of {mask.numel()} entries for {n} images")
        bad = (~torch.isfinite(scores)) & mask
        if bad.any():
            i = int(bad.nonzero()[0])
            raise RewardError(f"reward '{name}' returned a non-finite score ({float(scores[i])}) for sample {i} "
                              f"(prompt {prompts[i]!r})")
        return scores, mask

    def rollout(self, it: int):
        """Roll out and score this rank's block of the global micro-batches; gather the scores.

        Returns this rank's latents and cond (global samples ``samples``), the timesteps, and the
        group ids, scores and masks of the whole global batch (identical on every rank)."""
        t = self.cfg.train
        prompts = self.sampler.draw(t.prompts_per_iteration, it)
        texts = [p.text for p in prompts]
        G, mb = t.group_size, t.micro_batch
        index = torch.arange(len(prompts)).repeat_interleave(G)
        N, K = len(index), len(self.rewards)
        blocks = shard(math.ceil(N / mb), self.dist.world_size, self.dist.rank)
        samples = range(blocks.start * mb, min(blocks.stop * mb, N))  # this rank's global samples
        mine = index[samples.start:samples.stop]
        used = sorted(set(mine.tolist()))  # encode only this rank's prompts (embeddings are batch-independent)
        cond_p = self.backbone.encode_prompts([texts[i] for i in used])
        pos = {p: j for j, p in enumerate(used)}
        rows = torch.tensor([pos[i] for i in mine.tolist()])
        cond = {k: v[rows.to(v.device)] for k, v in cond_p.items()}
        all_texts = [texts[i] for i in mine.tolist()]
        metas = [dict(prompts[i].metadata) for i in mine.tolist()]
        latents, timesteps = [], None
        scores = torch.zeros(N, K, dtype=torch.float64)
        masks = torch.zeros(N, K, dtype=torch.float64)
        def score_block(images, sl: slice, gl: slice) -> None:
            for k, (reward, name) in enumerate(zip(self.rewards, self.reward_names)):
                s, m_ = self._score(reward, name, images, all_texts[sl], metas[sl])
                scores[gl, k], masks[gl, k] = s, m_.to(torch.float64)

        # train.overlap_rewards: score block i in a worker thread while block i+1 samples (at most
        # two blocks of images alive). Results land in fixed rows, so they do not depend on timing.
        pool = ThreadPoolExecutor(1, thread_name_prefix="marble-rewards") if self._overlap() else None
        pending = None
        with self.dist.guard(f"the rollout of iteration {it + 1}"):
            try:
                for m in blocks:
                    sl = slice(m * mb - samples.start, (m + 1) * mb - samples.start)
                    gl = slice(m * mb, min((m + 1) * mb, N))
                    # One seed per global micro-batch: an image does not depend on the number of ranks.
                    gen = torch.Generator().manual_seed(mix_seed(t.seed, 7919, it, m))
                    ro = self.backbone.sample(_select(cond, sl), num_steps=t.num_steps, generator=gen, adapter="old",
                                              guidance_scale=t.guidance_scale, sampler=t.sampler)
                    latents.append(ro.latents)
                    timesteps = ro.timesteps
                    if pending is not None:
                        pending.result()  # re-raises the reward's error, if any
                    if pool is None:
                        score_block(ro.images, sl, gl)
                    else:
                        pending = pool.submit(score_block, ro.images, sl, gl)
                if pending is not None:
                    pending.result()
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)
        # Every rank normalizes the whole batch (Eq. 3): an exact sum of the zero-padded blocks.
        scores = self.dist.all_reduce_sum(scores)
        masks = self.dist.all_reduce_sum(masks) > 0.5
        # A source's reward list and the stage schedule mask rewards out, on top of their own masks.
        for k, name in enumerate(self.reward_names):
            for i, pi in enumerate(index.tolist()):
                allowed = self.sources[prompts[pi].source].rewards
                if allowed is not None and name not in allowed:
                    masks[i, k] = False
        active = self.active_rewards(it)
        masks[:, [k for k, a in enumerate(active) if not a]] = False
        return torch.cat(latents), cond, timesteps.to(self.device), index, scores, masks, samples

    def _overlap(self) -> bool:
        mode = self.cfg.train.overlap_rewards
        return self.device.type == "cuda" if mode == "auto" else mode == "true"

    def advantages(self, scores, masks, groups) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Eq. 3 per reward (or once for the raw weighted sum), then r = 1/2 + clip(A)/(2 A_max)."""
        t = self.cfg.train
        stats: dict = {}
        if self.balancer.raw_mix:
            w = torch.tensor(self.reward_weights, dtype=torch.float64)
            mixed = (scores * masks * w).sum(1)  # ALGORITHM.md 2.1: mix raw, before normalization
            valid = masks.any(1, keepdim=True)
            adv = self.normalizers["weighted_sum"](mixed, groups, valid[:, 0]).unsqueeze(1)
            stats["reward/weighted_sum/adv_std"] = float(adv[valid].std()) if valid.sum() > 1 else 0.0
        else:
            valid = masks
            adv = torch.stack([self.normalizers[n](scores[:, k], groups, masks[:, k])
                               for k, n in enumerate(self.reward_names)], 1)
            for k, n in enumerate(self.reward_names):
                a = adv[masks[:, k], k]
                stats[f"reward/{n}/adv_std"] = float(a.std()) if a.numel() > 1 else 0.0
        r = optimality_probability(adv.to(torch.float64), t.a_max)
        return r, valid, stats

    # ------------------------------------------------------------------ 4: gradients
    def gradients(self, batch: TrainBatch, weights: list[float] | None):
        """The NFT gradients of one optimizer step, accumulated over T timesteps x micro-batches.

        ``weights`` given: ONE backward of sum_k w_k loss_k per micro-batch (Proposition 1);
        returns (flat gradient [D], flat KL gradient or None, logs).
        ``weights`` None: K backward passes; returns ([K, D] per-reward gradients, KL gradient, logs).
        loss_k = mean over reward k's valid samples and the T timesteps of l(r_k) (Eq. 2); a
        masked-out sample contributes to no reward's term. With ``batch.counts`` (data parallel)
        the means are over the whole optimizer step on all ranks: this rank's gradient is then a
        partial sum, and the sum over ranks is the single-process gradient."""
        t = self.cfg.train
        N, K = batch.r.shape
        T = batch.t_index.shape[1]
        dtype = self.params[0].dtype
        counts = (batch.valid.sum(0) if batch.counts is None else batch.counts).to(torch.float64)  # n_k
        size = N if batch.size is None else batch.size
        scale = t.a_max / t.beta  # DiffusionNFT's A_max / beta
        # Per-sample, per-reward coefficients of the two branches: m_ik r_ik / (n_k T), m_ik (1 - r_ik) / (n_k T).
        inv = torch.where(counts > 0, 1.0 / (counts.clamp(min=1) * T), torch.zeros_like(counts))
        c_pos = batch.valid * batch.r * inv
        c_neg = batch.valid * (1 - batch.r) * inv
        if weights is not None:
            w = torch.tensor(weights, dtype=torch.float64)
            c_pos, c_neg = c_pos @ w, c_neg @ w  # [N]: the amortized mix (exact, Proposition 1)
            grad = torch.zeros(sum(p.numel() for p in self.params), dtype=dtype, device=self.device)
            for p in self.params:
                p.grad = None
        else:
            grad = torch.zeros(K, sum(p.numel() for p in self.params), dtype=dtype, device=self.device)
        # zeros (not None) with a KL term, so that a rank without samples in this step still reduces it
        kl_grad = torch.zeros_like(grad[0]) if weights is None and t.kl_coef > 0 else None
        # Everything the micro-steps index lives on the model's device: no host sync inside the loop.
        dev = self.device
        r_d, valid_d, inv_d = batch.r.to(dev), batch.valid.to(dev), inv.to(dev)
        c_pos, c_neg, t_index = c_pos.to(dev), c_neg.to(dev), batch.t_index.to(dev)
        loss_acc = torch.zeros(K, dtype=torch.float64, device=dev)
        kl_acc = torch.zeros((), dtype=torch.float64, device=dev)
        gen = torch.Generator().manual_seed(batch.noise_seed)
        mb = t.micro_batch
        for j in range(T):
            for lo in range(0, N, mb):
                idx = torch.arange(lo, min(lo + mb, N))
                x0 = batch.latents[lo:lo + mb]
                eps = self._noise(batch, idx, j, gen, x0)
                tt = batch.timesteps.to(dev)[t_index[lo:lo + mb, j]].to(x0.dtype)
                tb = tt.view(-1, *([1] * (x0.dim() - 1)))
                x_t = (1 - tb) * x0 + tb * eps  # ALGORITHM.md 1.5
                cond = _select(batch.cond, slice(lo, lo + mb))
                with torch.no_grad():
                    v_old = self.backbone.velocity(x_t, tt, cond, adapter="old")
                    v_ref = self.backbone.velocity(x_t, tt, cond, adapter="reference") if t.kl_coef > 0 else None
                v = self.backbone.velocity(x_t, tt, cond, adapter="trained")
                l_pos, l_neg = nft_branch_losses(v, v_old, x_t, x0, tt, t.beta)  # Eq. 2, per sample
                lp, ln = l_pos.to(torch.float64), l_neg.to(torch.float64)
                v_mb, r_mb = valid_d[lo:lo + mb], r_d[lo:lo + mb]
                loss_acc += scale * ((v_mb * r_mb * lp.detach()[:, None]
                                      + v_mb * (1 - r_mb) * ln.detach()[:, None]).sum(0)) * inv_d
                kl = None
                if v_ref is not None:
                    kl = kl_loss(v, v_ref).to(torch.float64).sum() / (size * T)  # outside any balancing
                    kl_acc += kl.detach()
                if weights is not None:
                    loss = scale * (c_pos[lo:lo + mb] @ lp + c_neg[lo:lo + mb] @ ln)
                    if kl is not None:
                        loss = loss + t.kl_coef * kl
                    loss.backward()
                else:
                    for k in range(K):
                        if counts[k] == 0:
                            continue
                        loss_k = scale * (c_pos[lo:lo + mb, k] @ lp + c_neg[lo:lo + mb, k] @ ln)
                        g = torch.autograd.grad(loss_k, self.params, retain_graph=True, allow_unused=True)
                        grad[k] += flat(list(g), self.params)
                    if kl is not None:
                        g = torch.autograd.grad(t.kl_coef * kl, self.params, allow_unused=True)
                        kl_grad = flat(list(g), self.params) if kl_grad is None else kl_grad + flat(list(g), self.params)
        if weights is not None:
            grad = flat([p.grad for p in self.params], self.params)
        logs = {"loss": loss_acc.cpu(), "kl": float(kl_acc)}
        return grad, kl_grad, logs

    @staticmethod
    def _noise(batch: TrainBatch, idx: torch.Tensor, j: int, gen: torch.Generator, x0: torch.Tensor) -> torch.Tensor:
        """Fresh eps for timestep slot j of the samples ``idx``: one draw per micro-batch from the
        batch's stream, or (``sample_ids`` given) one seed per (sample, slot), which makes the noise
        independent of how the samples are split into ranks and micro-batches."""
        if batch.sample_ids is None:
            eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
        else:
            eps = torch.stack([torch.randn(x0.shape[1:], dtype=torch.float32, generator=gen.manual_seed(
                mix_seed(batch.noise_seed, int(batch.sample_ids[i]), j))) for i in idx.tolist()])
        return eps.to(x0.device, x0.dtype)

    def _set_grad(self, direction: torch.Tensor) -> None:
        off = 0
        for p in self.params:
            n = p.numel()
            p.grad = direction[off:off + n].view_as(p).to(p.dtype).clone()
            off += n

    def optimizer_step(self, batch: TrainBatch) -> dict:
        """Gradients (amortized or per-reward), summed over ranks, balance, clip, AdamW."""
        t = self.cfg.train
        dist = self.dist
        logs: dict = {}
        if self.balancer.wants_gradients(self.step):
            with dist.guard(f"the per-reward gradients of step {self.step}"):
                grads, kl_grad, lg = self.gradients(batch, None)
            if dist.enabled:  # ALGORITHM.md 2.2.1: all-reduce every g_k (and the KL gradient) before the QP
                both = self.dist.all_reduce_sum(torch.cat([grads, kl_grad[None]]) if kl_grad is not None else grads)
                grads, kl_grad = (both[:-1], both[-1]) if kl_grad is not None else (both, None)
            direction, diag = self.balancer.combine(grads, self.step)  # Eqs. 4-8
            alpha = [diag[f"alpha/{n}"] for n in self.reward_names if f"alpha/{n}" in diag]
            dist.check_same(torch.tensor(alpha, dtype=torch.float64), f"MARBLE's alpha at step {self.step}",
                            "The per-reward gradients were all-reduced, so the QP solver is not deterministic.")
            if kl_grad is not None:
                direction = direction + kl_grad  # Eq. 8: KL outside the balancing
            self._set_grad(direction)
            logs.update(diag)
            logs["refresh"] = 1
        else:
            with dist.guard(f"the gradient of step {self.step}"):
                grad, _, lg = self.gradients(batch, self.balancer.mix_weights(self.step))
            if dist.enabled:  # one all-reduce of the flat gradient, as DDP would do
                self._set_grad(dist.all_reduce_sum(grad))
        if dist.enabled:  # the logged loss terms were partial sums too
            lg["loss"] = dist.all_reduce_sum(lg["loss"])
            lg["kl"] = float(dist.all_reduce_sum(torch.tensor([lg["kl"]], dtype=torch.float64))[0])
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        logs["_loss"], logs["kl"] = lg["loss"], lg["kl"]
        return logs

    def train_iteration(self, it: int) -> dict:
        t = self.cfg.train
        t0 = time.perf_counter()
        latents, cond, timesteps, groups, scores, masks, samples = self.rollout(it)
        t1 = time.perf_counter()
        metrics: dict = {"iteration": it + 1}
        for k, n in enumerate(self.reward_names):
            m = masks[:, k]
            metrics[f"reward/{n}/mean"] = float(scores[m, k].mean()) if m.any() else float("nan")
            metrics[f"reward/{n}/masked_frac"] = float(1 - m.double().mean())
        r, valid, stats = self.advantages(scores, masks, groups)
        metrics.update(stats)
        # A reward with no advantage signal this iteration (constant within every group) would train
        # on r = 1/2, which is not neutral: it pulls toward v_old, and after MARBLE's gradient
        # normalization that pull would get a full share of the update. Leave it out of this
        # iteration's training (ALGORITHM.md 2.2: "a reward constant over the batch").
        silent = ~((r != 0.5) & valid).any(0)
        valid = valid & ~silent
        for k, n in enumerate(["weighted_sum"] if self.balancer.raw_mix else self.reward_names):
            metrics[f"reward/{n}/no_signal"] = float(silent[k])
        # ALGORITHM.md 1.5: per sample, T of the sampler's own timesteps, shuffled (global, every rank).
        N = groups.shape[0]
        S = timesteps.shape[0]
        T = t.timesteps_per_sample or S
        gen = torch.Generator().manual_seed(t.seed * 104729 + it)
        t_index, noise_ids = draw_loss_noise(t.loss_noise, groups, S, T, gen)
        # The optimizer steps' samples: exactly train.optimizer_steps parts (Tensor.chunk may make
        # fewer). The sample order is drawn in both modes, so each mode's random stream stays fixed.
        order = torch.randperm(N, generator=gen)
        if t.loss_noise == "group":  # keep each group in one optimizer step, so its shared draw cancels there
            parts = torch.randperm(int(groups.max()) + 1, generator=gen).tensor_split(t.optimizer_steps)
            chunks = [torch.cat([torch.nonzero(groups == g)[:, 0] for g in part.tolist()]) for part in parts]
        else:
            chunks = order.tensor_split(t.optimizer_steps)
        losses = torch.zeros(r.shape[1], dtype=torch.float64)
        kl = 0.0
        for c, chunk in enumerate(chunks):
            # This rank trains on its own samples of the step; the loss means use the step's global counts.
            idx = chunk[(chunk >= samples.start) & (chunk < samples.stop)]
            local = idx - samples.start
            batch = TrainBatch(latents[local.to(latents.device)], _select(cond, local.to(next(iter(cond.values())).device)),
                               r[idx], valid[idx], t_index[idx], timesteps,
                               noise_seed=(t.seed * 1_000_003 + it) * 131 + c,
                               sample_ids=noise_ids[idx], counts=valid[chunk].sum(0), size=len(chunk))
            logs = self.optimizer_step(batch)
            losses += logs.pop("_loss")
            kl += logs.pop("kl")
            metrics.update(logs)
        # ALGORITHM.md 1.8: old-policy soft update after the optimizer steps.
        eta = old_update_eta(self.step, t.old_update.rate, t.old_update.max, t.old_update.delay)
        self.backbone.soft_update_old(eta)
        self._check_in_sync()
        loss_names = ["weighted_sum"] if self.balancer.raw_mix else self.reward_names
        for n, v in zip(loss_names, losses.tolist()):
            metrics[f"loss/{n}"] = v / len(chunks)
        metrics["kl"] = kl / len(chunks)
        metrics["old_eta"] = eta
        metrics["step"] = self.step
        if hasattr(self.balancer, "alpha_bar"):
            for n, a in zip(self.reward_names, self.balancer.alpha_bar):
                metrics[f"alpha_bar/{n}"] = a
        metrics["time/rollout"] = t1 - t0
        metrics["time/train"] = time.perf_counter() - t1
        return metrics

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, iteration: int) -> dict:
        """Score fixed held-out prompts (``eval_images_per_prompt`` images each, fixed noise) with
        the trained adapter. Logs each reward's mean and its standard error over the images."""
        t = self.cfg.train
        prompts = self.eval_prompts
        if not prompts:
            return {"iteration": iteration}
        reps = t.eval_images_per_prompt
        texts = [p.text for p in prompts for _ in range(reps)]
        metas = [dict(p.metadata) for p in prompts for _ in range(reps)]
        cond = self.backbone.encode_prompts(texts)
        gen = torch.Generator().manual_seed(t.seed + 12345)
        images = []
        for lo in range(0, len(texts), t.micro_batch):
            ro = self.backbone.sample(_select(cond, slice(lo, lo + t.micro_batch)), num_steps=t.num_steps,
                                      generator=gen, adapter="trained", guidance_scale=t.guidance_scale,
                                      sampler=t.sampler)
            images.append(ro.images.float().cpu())
        images = torch.cat(images)
        out = {"iteration": iteration}
        for reward, name in list(zip(self.rewards, self.reward_names)) + list(zip(self.eval_rewards, self.eval_names)):
            s, m = self._score(reward, name, images, texts, metas)
            out[f"eval/{name}/mean"] = float(s[m].mean()) if m.any() else float("nan")
            n = int(m.sum())
            out[f"eval/{name}/stderr"] = float(s[m].double().std() / n ** 0.5) if n > 1 else float("nan")
        from marble.images import grid

        os.makedirs(os.path.join(self.run_dir, "images"), exist_ok=True)
        img = grid(images[::reps], texts[::reps])  # the grid shows each prompt's first image
        img.save(os.path.join(self.run_dir, "images", f"eval-{iteration:06d}.png"))
        if self.cfg.train.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(os.path.join(self.run_dir, "tb"))
            import numpy as np

            self._writer.add_image("eval/grid", np.asarray(img).transpose(2, 0, 1), iteration)
        return out
