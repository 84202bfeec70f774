"""Client similarity matrices: HFLDD's soft-label KL divergence (Eq. 4) and the cosine
similarity of model updates (CFL, IFCA-style and DisUE clustering)."""

from __future__ import annotations

import numpy as np
import torch

from fldistill.errors import ConfigError


def _check_soft(soft: torch.Tensor | np.ndarray) -> torch.Tensor:
    soft = torch.as_tensor(soft).detach().cpu()
    if soft.dim() != 3:
        raise ConfigError(
            f"soft labels must have shape (N clients, G samples, C classes), got {tuple(soft.shape)}"
        )
    if min(soft.shape) == 0:
        raise ConfigError(f"soft labels must be non-empty, got shape {tuple(soft.shape)}")
    if not soft.is_floating_point():
        soft = soft.to(torch.float64)
    if not bool(torch.isfinite(soft).all()):
        raise ConfigError("soft labels contain NaN or inf; check the clients' local models")
    return soft


def kl_matrix(
    soft: torch.Tensor | np.ndarray,
    eps: float = 1e-12,
    max_block_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Pairwise mean KL divergence between the clients' soft labels (Eq. 4).

    Parameters
    ----------
    soft : torch.Tensor or np.ndarray
        Shape ``(N, G, C)``: softmax outputs of ``N`` client models on the same
        ``G`` public samples over ``C`` classes.
    eps : float
        Probabilities are clamped to ``[eps, 1]`` before use, so a hard zero
        does not make the divergence infinite.
    max_block_bytes : int
        Size of one float64 block of flattened rows; rows are processed in
        chunks that fit, so peak extra memory is about three blocks plus the
        ``(N, N)`` result whatever ``N`` is.

    Returns
    -------
    torch.Tensor
        float64, shape ``(N, N)``, ``M[i, j] = KL(S_i || S_j)
        = (1/G) sum_k sum_c S_ik^c log(S_ik^c / S_jk^c)``.  Not symmetric;
        the diagonal is exactly zero and entries are clamped at zero.

    Notes
    -----
    Expanding the log ratio gives
    ``M_ij = (1/G) [ sum S_i log S_i - <S_i, log S_j> ]``, so the whole matrix
    is one row-norm term minus one matmul of the flattened ``(N, G*C)``
    tensors: O(N^2 G C) flops in BLAS instead of a Python double loop.
    """
    soft = _check_soft(soft)
    n, g, c = soft.shape
    flat = soft.reshape(n, g * c)
    d = g * c
    # float64: the result is a difference of two large sums (up to G*log(1/eps)),
    # float32 would cancel away the small divergences between similar clients.
    rows = max(1, int(max_block_bytes // (8 * d)))

    def block(lo: int) -> torch.Tensor:
        return flat[lo : lo + rows].to(torch.float64).clamp_(eps, 1.0)

    out = torch.empty((n, n), dtype=torch.float64)
    for ilo in range(0, n, rows):
        p = block(ilo)
        log_p = p.log()
        neg_entropy = torch.linalg.vecdot(p, log_p)
        for jlo in range(0, n, rows):
            # The diagonal block reuses log_p; with N*G*C*8 <= max_block_bytes
            # there is a single block and nothing is converted twice.
            log_q = log_p if jlo == ilo else block(jlo).log_()
            out[ilo : ilo + rows, jlo : jlo + rows] = neg_entropy[:, None] - p @ log_q.T
    out /= g
    # Clamping at eps leaves rows summing to slightly more than 1, and the
    # subtraction leaves rounding residue: neither may produce KL < 0.
    out.clamp_(min=0.0)
    out.fill_diagonal_(0.0)
    return out


def kl_matrix_reference(soft: torch.Tensor | np.ndarray, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 4 by a plain double loop over client pairs; slow, for tests only.

    Parameters
    ----------
    soft : torch.Tensor or np.ndarray
        Shape ``(N, G, C)`` soft labels.
    eps : float
        Same clamping as :func:`kl_matrix`.

    Returns
    -------
    torch.Tensor
        float64, shape ``(N, N)``.
    """
    s = _check_soft(soft).to(torch.float64).clamp(eps, 1.0)
    n, g, _ = s.shape
    out = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            out[i, j] = (s[i] * (s[i] / s[j]).log()).sum() / g
    return out


def cosine_matrix(updates: torch.Tensor | np.ndarray, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise cosine similarity of flattened client updates.

    Parameters
    ----------
    updates : torch.Tensor or np.ndarray
        Shape ``(N, D)``: one flattened update (or model) per client.
    eps : float
        Floor of the norms, so an all-zero update has similarity 0 to everything.

    Returns
    -------
    torch.Tensor
        float64 ``(N, N)`` with ``S[i, j] = <u_i, u_j> / (|u_i| |u_j|)``, in ``[-1, 1]``.
    """
    u = torch.as_tensor(updates).detach().to(torch.float64)
    if u.ndim != 2 or u.shape[0] == 0:
        raise ConfigError(f"updates must have shape (N clients, D values), got {tuple(u.shape)}")
    if not torch.isfinite(u).all():
        raise ConfigError("updates contain NaN or inf; check local training")
    un = u / u.norm(dim=1, keepdim=True).clamp_min(eps)
    return (un @ un.T).clamp_(-1.0, 1.0)
