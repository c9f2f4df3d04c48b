"""MARBLE: per-reward gradients harmonized by a min-norm QP over the simplex.

ALGORITHM.md 2.2 (Eqs. 4-8, 12) for the refresh step, 2.3 (Proposition 1) for the amortized
steps in between.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from marble.balancers.base import Balancer


def _cosines(grads: torch.Tensor, direction: torch.Tensor, norms: torch.Tensor) -> list[float]:
    dn = float(direction.norm())
    out = []
    for k in range(grads.shape[0]):
        if norms[k] <= 0 or dn <= 0:
            out.append(float("nan"))
        else:
            out.append(float(grads[k] @ direction) / (float(norms[k]) * dn))
    return out


class Marble(Balancer):
    """Refresh every ``refresh_every`` optimizer steps with K backward passes; one pass between."""

    def __init__(self, args):
        super().__init__(args)
        self.refresh_every = int(getattr(args, "refresh_every", 1))
        self.rho = float(args.rho)
        if not 0.0 <= self.rho < 1.0:
            from marble.errors import ConfigError

            raise ConfigError(f"bad value {self.rho!r}: rho must be in [0, 1)", key="balancer.args.rho")
        if self.refresh_every < 1:
            from marble.errors import ConfigError

            raise ConfigError(f"bad value {self.refresh_every!r}: must be >= 1", key="balancer.args.refresh_every")
        self.ema = str(getattr(args, "ema", "alpha"))
        if self.ema not in ("alpha", "gram", "gradient"):
            from marble.errors import ConfigError

            raise ConfigError(f"bad value {self.ema!r}: must be 'alpha', 'gram' or 'gradient'", key="balancer.args.ema")
        self._qp = None
        self.gram_bar = None  # ema="gram": running average of the normalized Gram (ALGORITHM.md 2.4)
        self.grad_bar = None  # ema="gradient": running average of each reward's gradient [K, D], float32
        self.alpha_bar: list[float] = []
        self.norms: list[float] = []  # ||g_k|| cached at the last refresh
        self.mean_norm: float = 0.0
        self.refreshes = 0
        self.conflicts = {"marble": 0, "weighted_sum": 0}

    def setup(self, reward_names, reward_weights) -> None:
        super().setup(reward_names, reward_weights)
        self.alpha_bar = [1.0 / self.k] * self.k  # Eq. 12: abar initialised uniform
        self.norms = [0.0] * self.k

    # -------------------------------------------------------------- schedule
    def wants_gradients(self, step: int) -> bool:
        return step % self.refresh_every == 0 or not any(n > 0 for n in self.norms)

    def _applied_alpha(self, step: int) -> list[float]:
        after = getattr(self.args, "uniform_after", None)
        if after is not None and step >= after:
            return [1.0 / self.k] * self.k
        return self.alpha_bar

    def mix_weights(self, step: int) -> list[float]:
        """ALGORITHM.md 2.3: the QP ran on normalized gradients, so the weights that reproduce
        s * sum_k abar_k u_k with raw per-reward losses are w_k = abar_k * s / ||g_k||."""
        alpha = self._applied_alpha(step)
        return [a * self.mean_norm / n if n > 0 else 0.0 for a, n in zip(alpha, self.norms)]

    # -------------------------------------------------------------- refresh
    def _solve(self, gram):
        from marble.qp import SimplexQP

        k = gram.shape[0]
        if self._qp is None or self._qp_k != k:
            self._qp = SimplexQP(k, solver=getattr(self.args, "solver", None))
            self._qp_k = k
        return self._qp.solve(gram)

    def combine(self, grads: torch.Tensor, step: int):
        from marble.qp import gram_of

        g = grads.detach().to(torch.float64)
        norms_t, gram = gram_of(g)  # Eq. 5: Gram of u_k = g_k / ||g_k||
        norms = [float(x) for x in norms_t]
        active = [i for i, n in enumerate(norms) if n > 0 and math.isfinite(n)]
        # The norms that normalize each reward: this refresh's ||g_k|| (the paper), or with
        # ema="gradient" the norm of the running average m_k, whose batch noise has averaged out.
        scale = norms
        alpha = [0.0] * self.k
        if self.ema == "gram" and active:
            gram = self._average_gram(gram, active)
        elif self.ema == "gradient" and active:
            m = self._average_gradients(g, active)
            m_norms, gram = gram_of(m)  # the QP sees the averaged directions
            scale = [float(x) for x in m_norms]
            active = [i for i in active if scale[i] > 0]
        if active:
            sub = gram[active][:, active]
            a = self._solve(sub)  # Eq. 6: min ||sum a_k u_k||^2 over the simplex
            for j, i in enumerate(active):
                alpha[i] = float(a[j])
            s = sum(scale[i] for i in active) / len(active)
        else:  # every reward constant over the batch: nothing to follow
            alpha = [1.0 / self.k] * self.k
            s = 0.0
        # A reward with no gradient at this refresh (no valid sample in the step: a mask, or no
        # advantage signal) was not observed: if an earlier refresh saw it, it keeps its cached norm
        # and coefficient until a refresh sees it again, and the rewards seen now share the rest of
        # the simplex. (Zeroing it would drop it from the amortized steps, where it may have samples.)
        carried = [i for i in range(self.k) if i not in active and self.norms[i] > 0]
        if active:
            mass = 1.0 - sum(self.alpha_bar[i] for i in carried)
            target = [a * mass for a in alpha]
            for i in carried:
                target[i] = self.alpha_bar[i]
            if self.ema in ("gram", "gradient"):  # the average already smooths: the QP's answer is the coefficient
                self.alpha_bar = target
            else:  # Eq. 12: EMA of the coefficients
                self.alpha_bar = [self.rho * b + (1 - self.rho) * a for b, a in zip(self.alpha_bar, target)]
        scale = list(scale)
        for i in carried:
            scale[i] = self.norms[i]
        known = [n for n in scale if n > 0]
        self.norms = scale
        self.mean_norm = sum(known) / len(known) if known else 0.0  # s of the amortized weights
        applied = self._refresh_alpha(alpha, step)
        # Eq. 7: d = (sum_k alpha_k u_k) * mean_k ||g_k||, u_k = g_k / ||g_k|| (ema="gradient": / ||m_k||).
        u = torch.zeros_like(g)
        for i in active:
            u[i] = g[i] / scale[i]
        coef = torch.tensor(applied, dtype=torch.float64, device=g.device)
        direction = (coef @ u) * s if active else torch.zeros(g.shape[1], dtype=torch.float64, device=g.device)
        diag = self._diagnostics(g, norms_t, direction, alpha)
        if self.ema == "gradient":
            for name, n in zip(self.names, scale):
                diag[f"grad_norm_avg/{name}"] = float(n)  # ||m_k||: what reward k was divided by
        return direction.to(grads.dtype), diag

    def _average_gradients(self, g: torch.Tensor, active: list[int]) -> torch.Tensor:
        """ema="gradient": m_k = rho m_k + (1 - rho) g_k for the rewards active now (first time: g_k).

        Why: a refresh's g_k is signal plus batch noise, and ||g_k|| counts both. Dividing by it
        shrinks the expected step of a noisier reward next to a less noisy one, so in expectation
        the QP's "equal progress" favours the less noisy reward. In m_k the noise averages out, so
        ||m_k|| tracks the signal.
        The QP runs on the m_k; the step applies this refresh's g_k divided by ||m_k||, and the
        amortized weights are abar_k * s / ||m_k|| (Proposition 1 holds as before)."""
        if self.grad_bar is None or self.grad_bar.shape != g.shape:
            self.grad_bar = torch.zeros(g.shape, dtype=torch.float32, device=g.device)
            self._grad_seen = [False] * g.shape[0]
        for i in active:
            if self._grad_seen[i]:
                self.grad_bar[i].mul_(self.rho).add_(g[i].to(torch.float32), alpha=1 - self.rho)
            else:
                self.grad_bar[i].copy_(g[i])
                self._grad_seen[i] = True
        return self.grad_bar.to(torch.float64)

    def _average_gram(self, gram, active: list[int]):
        """ema="gram": M_bar = rho M_bar + (1 - rho) M over the entries of the rewards active now
        (a pair's first time active: M itself). The QP then runs on M_bar: the noise of one
        refresh's Gram is averaged before the solve instead of after it. Returned as a copy of M
        with M_bar's entries."""
        gram = np.asarray(gram, dtype=np.float64)
        if self.gram_bar is None:
            self.gram_bar = np.full_like(gram, np.nan)  # nan: a pair not seen active yet
        for i in active:
            for j in active:
                old = self.gram_bar[i, j]
                self.gram_bar[i, j] = gram[i, j] if np.isnan(old) else self.rho * old + (1 - self.rho) * gram[i, j]
        ix = np.ix_(active, active)
        out = gram.copy()
        out[ix] = self.gram_bar[ix]
        return out

    def _refresh_alpha(self, alpha, step):
        """The refresh step applies the fresh alpha* (ALGORITHM.md 2.4)."""
        after = getattr(self.args, "uniform_after", None)
        if after is not None and step >= after:
            return [1.0 / self.k] * self.k
        return alpha

    def _diagnostics(self, g, norms_t, direction, alpha) -> dict:
        self.refreshes += 1
        d_ws = g.mean(dim=0)  # the weighted-sum direction of the same per-reward gradients
        cos_m = _cosines(g, direction, norms_t)
        cos_w = _cosines(g, d_ws, norms_t)
        out: dict = {}
        for kind, cos in (("marble", cos_m), ("weighted_sum", cos_w)):
            finite = [c for c in cos if math.isfinite(c)]
            mn = min(finite) if finite else float("nan")
            if finite and mn < 0:
                self.conflicts[kind] += 1
            out[f"cos/{kind}/min"] = mn
            out[f"conflict_rate/{kind}"] = self.conflicts[kind] / self.refreshes
            for name, c in zip(self.names, cos):
                out[f"cos/{kind}/{name}"] = c
        for name, a, b, n in zip(self.names, alpha, self.alpha_bar, norms_t):
            out[f"alpha/{name}"] = a
            out[f"alpha_bar/{name}"] = b
            out[f"grad_norm/{name}"] = float(n)
        return out

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"alpha_bar": list(self.alpha_bar), "norms": list(self.norms), "mean_norm": self.mean_norm,
                "refreshes": self.refreshes, "conflicts": dict(self.conflicts),
                "gram_bar": None if self.gram_bar is None else [[None if np.isnan(x) else float(x) for x in r] for r in self.gram_bar],
                "grad_bar": None if self.grad_bar is None else (self.grad_bar.clone(), list(self._grad_seen))}

    def load_state_dict(self, state: dict) -> None:
        self.alpha_bar = [float(x) for x in state["alpha_bar"]]
        self.norms = [float(x) for x in state["norms"]]
        self.mean_norm = float(state["mean_norm"])
        self.refreshes = int(state["refreshes"])
        self.conflicts = dict(state["conflicts"])
        mb = state.get("grad_bar")
        if mb is None:
            self.grad_bar = None
        else:
            self.grad_bar, self._grad_seen = mb[0].clone(), list(mb[1])
        gb = state.get("gram_bar")
        if gb is None:
            self.gram_bar = None
        else:
            self.gram_bar = np.array([[np.nan if x is None else x for x in r] for r in gb], dtype=np.float64)


class MarbleFull(Marble):
    """Full refresh (K backward passes + QP) at every optimizer step; no amortization."""

    def __init__(self, args):
        super().__init__(args)
        self.refresh_every = 1

    def _refresh_alpha(self, alpha, step):
        return self.alpha_bar if getattr(self.args, "use_ema", False) else alpha
