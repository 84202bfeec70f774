"""Personalised evaluation timing: the batched ``personal_eval`` against the per-client loop.

Two shapes of work, on mnist1d (its default model) with ``--clients`` clients:

- ``global``: one model for every client (FedAvg): one pass over all local test samples;
- ``local``: one model per client (local training): one small forward per client;
- ``ifca``: 4 cluster models; the time includes IFCA's assignment pass (every client's
  loss under every model on its training data, pooled), which decides who uses which.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/personal_eval.py --clients 100 1000

Prints one line per (clients, shape): seconds of ``personal_eval`` (best of ``--repeat``),
of ``personal_eval_reference``, and whether their per-client accuracies are equal.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fldistill.data.federation import build_federation
from fldistill.engine.evaluation import PersonalEval, personal_eval, personal_eval_reference
from fldistill.engine.selection import pooled_model_losses
from fldistill.engine.training import get_state
from fldistill.models import build_model, default_model_for


def _best(fn: Callable[..., PersonalEval], repeat: int, *args: Any) -> tuple[float, PersonalEval]:
    """Best wall time of ``repeat`` calls of ``fn(*args)``, and its result."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--dataset-size", type=int, default=None, help="mnist1d samples (default 20000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for n in args.clients:
        fed = build_federation("mnist1d", "iid", n, args.seed, dataset_size=args.dataset_size)
        torch.manual_seed(args.seed)
        model = build_model(default_model_for("mnist1d"), fed.input_shape, fed.n_classes)
        base = get_state(model)
        # Distinct, deterministic per-client models: the initial one, perturbed per client.
        g = torch.Generator().manual_seed(args.seed)
        locals_ = [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]
        shapes = {"global": ([base], np.zeros(n, np.int64)), "local": (locals_, np.arange(n, dtype=np.int64))}
        samples = sum(len(ix) for ix in fed.client_test)
        clusters = locals_[:4]

        def ifca_eval(mdl: torch.nn.Module, sts: list, _: np.ndarray, f: Any, b: int) -> PersonalEval:
            who = pooled_model_losses(mdl, sts, f.x, f.y, f.client_train, b).argmin(1).numpy()
            return personal_eval(mdl, sts, who, f, b)

        t_ifca, _ = _best(ifca_eval, args.repeat, model, clusters, np.zeros(n, np.int64), fed, 4096)
        print(f"N={n:5d} ifca   models=    4  assignment pass + personal_eval {t_ifca:7.3f} s")
        for shape, (states, assign) in shapes.items():
            t_fast, fast = _best(personal_eval, args.repeat, model, states, assign, fed, 4096)
            t_ref, ref = _best(personal_eval_reference, 1, model, states, assign, fed, 4096)
            same = np.array_equal(fast.client_accuracy, ref.client_accuracy, equal_nan=True)
            print(
                f"N={n:5d} {shape:6s} models={len(states):5d} test samples={samples:6d}  "
                f"personal_eval {t_fast:7.3f} s   per-client loop {t_ref:7.3f} s   equal accuracies: {same}"
            )


if __name__ == "__main__":
    main()
