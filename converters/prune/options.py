"""Pruning options: where the zeros go (``parse_structure``, ``parse_block``), how many
(``target_sparsity``), and the checks of a pruned kernel (``check_n_m``, ``check_blocks``)."""

from __future__ import annotations

import numpy as np

from edgeship.errors import PruneOptionError

__all__ = ["PRUNABLE", "N_M_LAYERS", "ELEMENTWISE", "DEFAULT_DENSE_BLOCK", "PruneOptionError", "is_elementwise",
           "parse_block", "parse_structure", "target_sparsity", "check_blocks", "check_n_m"]

# tf_keras layer class -> (prunable weight attribute, axis of the input channels)
PRUNABLE = {
    "Conv1D": ("kernel", 1),
    "Conv2D": ("kernel", 2),
    "Conv3D": ("kernel", 3),
    "Dense": ("kernel", 0),
    "SeparableConv1D": ("pointwise_kernel", 1),
    "SeparableConv2D": ("pointwise_kernel", 2),
    "Conv2DTranspose": ("kernel", 3),
}


# tfmot's N:M masks group weights along the input channels of rank-2 and rank-4 kernels.
N_M_LAYERS = ("Conv2D", "SeparableConv2D", "Dense")



# -- options ------------------------------------------------------------------------


ELEMENTWISE = ("elementwise", "unstructured")

# Default granularity (``structure=None``): Dense kernels in aligned blocks of 4
# consecutive input weights, everything else elementwise. See the module docstring.
DEFAULT_DENSE_BLOCK = 4


def is_elementwise(structure) -> bool:
    return isinstance(structure, str) and structure.strip().lower() in ELEMENTWISE


def parse_block(structure) -> int | None:
    """``"1x4"`` -> 4: blocks of K consecutive input-channel weights pruned together.

    Raises:
        PruneOptionError: K outside 2..64.
    """
    if not isinstance(structure, str) or "x" not in structure.lower():
        return None
    try:
        one, k_text = structure.lower().split("x")
        if one.strip() != "1":
            raise ValueError
        k = int(k_text)
    except ValueError:
        raise PruneOptionError(f"block structure {structure!r} is not 1xK (e.g. '1x4')") from None
    if not (2 <= k <= 64):
        raise PruneOptionError(f"block structure {structure!r} needs 2 <= K <= 64")
    return k


def check_blocks(kernel, k: int, axis: int) -> bool:
    """True when the zeros of ``kernel`` come in whole aligned blocks of ``k`` along ``axis``."""
    a = np.moveaxis(np.asarray(kernel), axis, -1)
    c = a.shape[-1] - a.shape[-1] % k
    zeros = (a[..., :c] == 0).reshape(-1, k).sum(axis=1)
    return bool(np.all((zeros == 0) | (zeros == k)))


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``: at most N nonzeros in every M consecutive weights.

    Raises:
        PruneOptionError: not of the form N:M with 0 < N < M.
    """
    if structure is None or structure == "":
        return None
    if isinstance(structure, str) and (is_elementwise(structure) or parse_block(structure) is not None):
        return None  # not N:M: elementwise or 1xK blocks (parse_block validates K)
    if isinstance(structure, (tuple, list)) and len(structure) == 2:
        n, m = structure
    else:
        try:
            n_text, m_text = str(structure).split(":")
            n, m = int(n_text), int(m_text)
        except ValueError:
            raise PruneOptionError(f"pruning structure {structure!r} is not N:M (e.g. '2:4')") from None
    if not (0 < n < m):
        raise PruneOptionError(f"pruning structure {structure!r} needs 0 < N < M (e.g. '2:4')")
    return int(n), int(m)


def target_sparsity(sparsity, nm) -> float:
    if nm is not None:
        implied = 1.0 - nm[0] / nm[1]
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-6:
            raise PruneOptionError(
                f"sparsity {sparsity} contradicts structure {nm[0]}:{nm[1]}, which means sparsity {implied:g}; "
                "pass one of them"
            )
        return implied
    if sparsity is None:
        raise PruneOptionError("pass sparsity (0 < sparsity < 1) or a structure such as '2:4'")
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise PruneOptionError(f"sparsity {sparsity!r} is not a number between 0 and 1") from None
    if not (0.0 < s < 1.0):
        raise PruneOptionError(f"sparsity {sparsity!r} must be between 0 and 1 (exclusive), e.g. 0.5")
    return s


def check_n_m(kernel, n: int, m: int, axis: int) -> bool:
    """True when every group of ``m`` consecutive weights along ``axis`` (the input
    channels; a trailing partial group counts as a group) has at most ``n`` nonzeros."""
    a = np.moveaxis(np.asarray(kernel), axis, -1)
    c = a.shape[-1]
    pad = (-c) % m
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
    groups = a.reshape(-1, m)
    return bool(np.all(np.count_nonzero(groups, axis=1) <= n))
