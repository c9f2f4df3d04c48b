"""The simplex QP of the MARBLE balancer (arXiv 2605.06507 Eqs. 5-6; ALGORITHM.md 2.2 step 3).

Given the normalized per-reward gradients u_k = g_k / ||g_k|| (Eq. 5), MARBLE finds

    alpha* = argmin_{alpha >= 0, sum_k alpha_k = 1} || sum_k alpha_k u_k ||^2
           = argmin over the simplex of alpha^T M alpha,   M_ij = <u_i, u_j>      (Eq. 6)

(the min-norm point of the convex hull of the u_k, as in MGDA).  The update direction is
then ``d = (sum_k alpha*_k u_k) * mean_k ||g_k||`` (Eq. 7), formed by the balancer.

:class:`SimplexQP` solves it with cvxpy as a DPP-parametrized problem compiled once per K,
after trace-normalizing M (solvers return wrong weights on tiny unscaled Gram matrices,
docs/OFFLINE.md), with solver fallbacks, a projected-gradient fallback written here, a
KKT certificate on every answer, and an active-set polish.

Optimality certificate used throughout: for f(a) = a^T M a on the simplex, with g = M a and
lambda = a^T M a, the KKT conditions are g_i >= lambda for all i with equality where a_i > 0;
``lambda - min_i g_i`` is half the Frank-Wolfe gap and bounds f(a) - f* from above by twice it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["min_norm_2", "SimplexQP", "gram_of", "simplex_kkt_gap", "project_to_simplex"]

#: Ridge added to the trace-normalized Gram matrix (trace = K) before solving.
RIDGE = 1e-10
#: Accepted KKT gap (lambda - min_i (M a)_i) on the trace-normalized problem.
KKT_TOL = 1e-7
#: Default order in which cvxpy solvers are tried.
DEFAULT_SOLVERS = ("CLARABEL", "OSQP", "SCS")


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _as_gram(gram: np.ndarray, k: int | None = None) -> np.ndarray:
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"gram must be a square matrix, got shape {g.shape}")
    if k is not None and g.shape[0] != k:
        raise ValueError(f"gram must be {k}x{k}, got {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("gram contains NaN or inf")
    return 0.5 * (g + g.T)


def simplex_kkt_gap(gram: np.ndarray, alpha: np.ndarray) -> float:
    """``alpha^T G alpha - min_i (G alpha)_i`` (>= 0 up to rounding; 0 at the minimizer)."""
    g = np.asarray(gram, dtype=np.float64) @ alpha
    return float(alpha @ g - g.min())


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {a >= 0, sum a = 1} (sort-based, Held/Wolfe/Crowder)."""
    v = np.asarray(v, dtype=np.float64)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / idx > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def _clean(alpha: np.ndarray) -> np.ndarray:
    """Clip tiny negatives / non-finite entries and renormalize onto the simplex."""
    a = np.where(np.isfinite(alpha), alpha, 0.0)
    a = np.maximum(a, 0.0)
    s = a.sum()
    if s <= 0:
        return np.full(a.size, 1.0 / a.size)
    return a / s


def _feasible(alpha: Any, k: int, tol: float = 1e-5) -> bool:
    if alpha is None:
        return False
    a = np.asarray(alpha, dtype=np.float64).reshape(-1)
    return a.size == k and bool(np.all(np.isfinite(a))) and a.min() >= -tol and abs(a.sum() - 1) <= tol


def _kkt_on_support(gram: np.ndarray, support: np.ndarray) -> np.ndarray | None:
    """Solve G_SS a_S = lambda 1, 1^T a_S = 1 (least squares if singular); None on failure."""
    k = gram.shape[0]
    s = support.size
    kkt = np.zeros((s + 1, s + 1))
    kkt[:s, :s] = gram[np.ix_(support, support)]
    kkt[:s, s] = -1.0
    kkt[s, :s] = 1.0
    rhs = np.zeros(s + 1)
    rhs[s] = 1.0
    try:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    except np.linalg.LinAlgError:
        return None
    cand = np.zeros(k)
    cand[support] = sol[:s]
    if not np.all(np.isfinite(cand)) or abs(cand.sum() - 1.0) > 1e-9:
        return None
    return cand


def _polish_active_set(gram: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Refine a near-optimal alpha by solving the KKT system on its support exactly.

    Candidate supports are {i: alpha_i > tau max(alpha)} for a few thresholds tau; on a
    support S the equality-constrained problem G_SS a_S = lambda 1, 1^T a_S = 1 is solved
    (minimum-norm least squares if G_SS is singular), dropping the most negative entry and
    re-solving while the solution leaves the simplex.  The candidate with the smallest KKT
    gap is kept if it is not worse than the input.
    """
    best, best_gap = alpha, simplex_kkt_gap(gram, alpha)
    amax = alpha.max()
    seen: set[tuple[int, ...]] = set()
    for tau in (1e-9, 1e-6, 1e-4, 1e-2):
        support = np.nonzero(alpha > tau * amax)[0]
        while support.size > 0:
            key = tuple(support.tolist())
            if key in seen:
                break
            seen.add(key)
            cand = _kkt_on_support(gram, support)
            if cand is None:
                break
            neg = cand[support] < -1e-13
            if not neg.any():
                cand = _clean(cand)
                gap = simplex_kkt_gap(gram, cand)
                if gap < best_gap:
                    best, best_gap = cand, gap
                break
            support = np.delete(support, int(np.argmin(cand[support])))
    return best


def _projected_gradient(
    gram: np.ndarray, x0: np.ndarray | None = None, tol: float = 1e-9, max_iter: int = 20_000
) -> np.ndarray:
    """Accelerated projected gradient (FISTA with adaptive restart) on the simplex.

    Fallback of last resort; step 1/L with L = 2 lambda_max(G).  Stops when the KKT gap
    (half the Frank-Wolfe gap) of the iterate is below ``tol``.
    """
    k = gram.shape[0]
    lmax = float(np.linalg.eigvalsh(gram)[-1])
    if lmax <= 0:
        return np.full(k, 1.0 / k)
    step = 1.0 / (2.0 * lmax)
    x = project_to_simplex(x0) if x0 is not None else np.full(k, 1.0 / k)
    y, tk = x.copy(), 1.0
    for _ in range(max_iter):
        gx = gram @ x
        if x @ gx - gx.min() <= tol:
            break
        x_new = project_to_simplex(y - step * 2.0 * (gram @ y))
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * tk * tk))
        if (x_new - x) @ (y - x_new) > 0:  # gradient-based restart (O'Donoghue & Candes)
            y, tk = x_new.copy(), 1.0
        else:
            y = x_new + ((tk - 1.0) / t_new) * (x_new - x)
            tk = t_new
        x = x_new
    return x


# ------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------
def min_norm_2(gram: np.ndarray) -> np.ndarray:
    """Closed-form minimizer for K = 2 (MGDA line search between two points).

    ``alpha_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1)``, ``alpha_2 = 1 - alpha_1``.
    If the denominator ``||u1 - u2||^2`` vanishes (identical vectors, or both zero) every
    alpha is optimal and (1/2, 1/2) is returned.
    """
    g = _as_gram(gram, 2)
    g11, g22, g12 = g[0, 0], g[1, 1], g[0, 1]
    denom = g11 + g22 - 2.0 * g12
    scale = max(abs(g11), abs(g22), abs(g12))
    if not denom > 1e-14 * scale or scale == 0.0:
        return np.array([0.5, 0.5])
    a1 = float(np.clip((g22 - g12) / denom, 0.0, 1.0))
    return np.array([a1, 1.0 - a1])


class SimplexQP:
    """min alpha^T G alpha over the probability simplex, compiled once per K (Eq. 6).

    Args:
        k: number of rewards K (>= 1).
        solver: first cvxpy solver to try (e.g. ``"CLARABEL"``, ``"OSQP"``, ``"SCS"``);
            None means CLARABEL.  The others in :data:`DEFAULT_SOLVERS` are tried next,
            then a projected-gradient method written here.
        use_closed_form: for K = 2 use :func:`min_norm_2` instead of cvxpy.
        kkt_tol: accepted KKT gap on the trace-normalized problem.

    Attributes:
        last_solve_seconds: wall time of the last :meth:`solve`.
        last_method: what produced the last answer (``"closed_form"``, a solver name,
            ``"projected_gradient"``, ``"trivial"``, ``"zero_gram"``).
        last_kkt_gap: KKT gap of the last answer on the normalized problem.
        fallbacks: number of solves that needed a fallback.
    """

    def __init__(
        self,
        k: int,
        solver: str | None = None,
        *,
        use_closed_form: bool = True,
        kkt_tol: float = KKT_TOL,
    ) -> None:
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = int(k)
        self.solver = solver.upper() if solver else None
        self.use_closed_form = use_closed_form
        self.kkt_tol = float(kkt_tol)
        order = [self.solver] if self.solver else []
        order += [s for s in DEFAULT_SOLVERS if s not in order]
        self._solver_order = order
        self._cp: Any = None
        self._factor: Any = None  # cvxpy Parameter (K x K)
        self._alpha: Any = None  # cvxpy Variable (K)
        self._problems: dict[str, Any] = {}
        self._available: set[str] | None = None
        self.last_solve_seconds: float = 0.0
        self.last_method: str = ""
        self.last_kkt_gap: float = 0.0
        self.last_errors: list[str] = []
        self.fallbacks: int = 0
        self.n_solves: int = 0

    # -------------------------------------------------------------------- cvxpy problem
    def _build(self) -> None:
        import cvxpy as cp  # lazy: importing cvxpy costs ~1 s

        self._cp = cp
        self._available = set(cp.installed_solvers())
        if self.solver and self.solver not in self._available:
            raise ValueError(
                f"cvxpy solver {self.solver!r} is not installed; available: {sorted(self._available)}"
            )
        self._factor = cp.Parameter((self.k, self.k), name="L")
        self._alpha = cp.Variable(self.k, name="alpha")

    def _problem(self, solver: str) -> Any:
        prob = self._problems.get(solver)
        if prob is None:
            cp = self._cp
            # DPP: the parameter L (G = L L^T) multiplies the variable; one compilation per
            # solver, later solves only refill the parameter.
            prob = cp.Problem(
                cp.Minimize(cp.sum_squares(self._factor.T @ self._alpha)),
                [self._alpha >= 0, cp.sum(self._alpha) == 1],
            )
            assert prob.is_dpp()
            self._problems[solver] = prob
        return prob

    def _solve_cvxpy(self, solver: str, factor: np.ndarray) -> np.ndarray | None:
        prob = self._problem(solver)
        self._factor.value = factor
        kwargs: dict[str, Any] = {}
        if solver == "OSQP":
            kwargs.update(eps_abs=1e-9, eps_rel=1e-9, max_iter=20_000)  # cvxpy polishes
        elif solver == "SCS":
            kwargs.update(eps_abs=1e-9, eps_rel=1e-9, max_iters=20_000)
        try:
            prob.solve(solver=solver, warm_start=True, **kwargs)
        except Exception as e:  # cvxpy.SolverError and solver-specific failures
            self.last_errors.append(f"{solver}: {type(e).__name__}: {e}")
            return None
        if prob.status not in ("optimal", "optimal_inaccurate"):
            self.last_errors.append(f"{solver}: status {prob.status}")
            return None
        a = self._alpha.value
        if not _feasible(a, self.k):
            self.last_errors.append(f"{solver}: infeasible output {a!r}")
            return None
        return np.asarray(a, dtype=np.float64).reshape(-1)

    # -------------------------------------------------------------------- solve
    def solve(self, gram: np.ndarray) -> np.ndarray:
        """Return alpha (shape [K], float64, alpha >= 0, sum 1) minimizing alpha^T G alpha.

        ``gram`` is symmetrized, trace-normalized (G <- G K / trace G) and regularized by
        1e-10 I before solving, so the answer does not depend on the overall scale of G.
        """
        t0 = time.perf_counter()
        try:
            return self._solve(gram)
        finally:
            self.last_solve_seconds = time.perf_counter() - t0
            self.n_solves += 1

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        k = self.k
        g = _as_gram(gram, k)
        self.last_errors = []
        self.last_kkt_gap = 0.0
        if k == 1:
            self.last_method = "trivial"
            return np.ones(1)
        tr = float(np.trace(g))
        if not tr > 0.0 or np.max(np.abs(g)) == 0.0:
            # All-zero (or invalid, non-PSD with trace <= 0) Gram: nothing to balance.
            self.last_method = "zero_gram"
            return np.full(k, 1.0 / k)
        # Trace-normalize (ALGORITHM.md 2.2 step 3; OFFLINE.md) and regularize.
        gs = g * (k / tr) + RIDGE * np.eye(k)
        # Robust PSD factor G = L L^T for PSD-but-singular G: eigendecomposition with the
        # (rounding-level) negative eigenvalues clipped.  Plain Cholesky fails here.
        w, v = np.linalg.eigh(gs)
        w = np.clip(w, 0.0, None)
        factor = v * np.sqrt(w)
        gp = factor @ factor.T  # the PSD matrix actually solved

        if k == 2 and self.use_closed_form:
            alpha = min_norm_2(gp)
            self.last_method = "closed_form"
            self.last_kkt_gap = simplex_kkt_gap(gp, alpha)
            return alpha

        if self._cp is None:
            self._build()
        best: tuple[float, np.ndarray, str] | None = None
        for i, solver in enumerate(self._solver_order):
            if solver not in self._available:
                continue
            a = self._solve_cvxpy(solver, factor)
            if a is None:
                continue
            a = _polish_active_set(gp, _clean(a))
            gap = simplex_kkt_gap(gp, a)
            if best is None or gap < best[0]:
                best = (gap, a, solver)
            if gap <= self.kkt_tol:
                if i > 0:
                    self.fallbacks += 1
                self.last_method, self.last_kkt_gap = solver, gap
                return a
            self.last_errors.append(f"{solver}: KKT gap {gap:.3g} > {self.kkt_tol:.3g}")

        # Last resort: projected gradient written here, warm-started from the best answer,
        # polished on its support (which makes it exact once the support is identified).
        self.fallbacks += 1
        a = best[1] if best is not None else None
        for tol in (1e-5, 1e-7, 1e-9, 1e-11):
            a = _projected_gradient(gp, a, tol=tol)
            a = _polish_active_set(gp, _clean(a))
            gap = simplex_kkt_gap(gp, a)
            if gap <= self.kkt_tol:
                break
        if best is not None and best[0] < gap:
            gap, a, name = best
            self.last_method = name + "(inaccurate)"
        else:
            self.last_method = "projected_gradient"
        self.last_kkt_gap = gap
        return a


def gram_of(grads: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
    """Norms of the K per-reward gradients and the Gram matrix of their normalized versions.

    Args:
        grads: [K, D] tensor (any float dtype, any device), row k = flattened g_k.

    Returns:
        ``(norms, gram)``: numpy float64 arrays of shapes [K] and [K, K], with
        ``norms_k = ||g_k||`` and ``gram_ij = <u_i, u_j>``, ``u_k = g_k / ||g_k||`` (Eq. 5),
        all computed in float64.  A zero-norm row gives norm 0 and a zero row/column.
    """
    import torch

    if grads.ndim != 2:
        raise ValueError(f"grads must have shape [K, D], got {tuple(grads.shape)}")
    g = grads.detach().to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise ValueError("grads contain NaN or inf")
    norms = torch.linalg.vector_norm(g, dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    u = g / safe[:, None]
    gram = u @ u.T
    gram = 0.5 * (gram + gram.T)
    return norms.cpu().numpy(), gram.cpu().numpy()
