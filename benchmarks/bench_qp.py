"""Benchmark of the MARBLE simplex QP (marble.qp.SimplexQP), K = 2..8.

Prints, per K: the first solve (cvxpy import excluded, problem compilation included), the
median and p95 of the following solves on fresh random Gram matrices of normalized
gradients, the method that answered and the worst KKT gap.  K = 2 is shown both with the
closed form and through cvxpy.

    python benchmarks/bench_qp.py [--repeats 50] [--solver CLARABEL] [--dim 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _gram(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    u = rng.normal(size=(k, d))
    u[: k // 2] -= 0.7 * u[k // 2 :][: k // 2].mean(0)  # some conflicting directions
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u @ u.T * 1e-6  # realistic unnormalized scale of LoRA gradient inner products


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--solver", default=None, help="first cvxpy solver (default CLARABEL)")
    ap.add_argument("--dim", type=int, default=64, help="gradient dimension of the random cases")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import cvxpy  # noqa: F401  (measured separately: SimplexQP imports it lazily)

    t_import = time.perf_counter() - t0
    from marble.qp import SimplexQP

    print(f"import cvxpy: {t_import * 1e3:.0f} ms")
    print(f"{'K':>3} {'path':>12} {'first ms':>9} {'median ms':>10} {'p95 ms':>8} {'max KKT gap':>12}  method")
    rng = np.random.default_rng(args.seed)
    cases = [(2, True)] + [(k, False) for k in range(2, 9)]
    for k, closed in cases:
        qp = SimplexQP(k, args.solver, use_closed_form=closed)
        qp.solve(_gram(rng, k, args.dim))
        first = qp.last_solve_seconds
        times, gaps, methods = [], [], set()
        for _ in range(args.repeats):
            qp.solve(_gram(rng, k, args.dim))
            times.append(qp.last_solve_seconds)
            gaps.append(qp.last_kkt_gap)
            methods.add(qp.last_method)
        ts = np.array(times) * 1e3
        path = "closed form" if closed else "cvxpy"
        print(
            f"{k:>3} {path:>12} {first * 1e3:9.2f} {np.median(ts):10.3f} {np.percentile(ts, 95):8.3f}"
            f" {max(gaps):12.2e}  {','.join(sorted(methods))}"
        )


if __name__ == "__main__":
    main()
