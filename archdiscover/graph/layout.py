"""Where the channels of a tensor sit: the algebra of *channel grids* (numpy only).

A tensor's channels are a *grid*: the tensor dims that carry channel slots (``axes``, in
increasing order) and one slot id per grid entry, stored flat in C order over those dims.
Usually the grid is one dim (the channels of ``(N, C, H, W)``, or the features of a
channels-last ``(N, S, C)``). A reshape that splits the channel dim, e.g. ``(N, S, C) ->
(N, S, H, D)`` for attention heads or ``(N, C, H, W) -> (N, g, C / g, H, W)`` for a channel
shuffle, makes it a grid over several dims; permutes move it; a reshape that merges the
channel dim with others (``flatten``) repeats each slot over the merged positions.

Every function here maps a layout through one operation and returns the new axes with a
*gather* array: ``gather[i]`` is the flat input grid position of output grid entry ``i``,
so ``slots_out = slots_in[gather]`` and the constness of the output channels is the input's
gathered the same way. ``None`` means the operation cannot be followed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "Layout",
    "blocks",
    "grid_shape",
    "index",
    "permute",
    "reshape",
]

#: ``(axes, gather)``: the output grid dims and, per output grid entry, its input entry
Layout = tuple[tuple[int, ...], np.ndarray]


def grid_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """The sizes of the grid dims ``axes`` of a tensor of ``shape``."""
    return tuple(int(shape[a]) for a in axes)


def blocks(
    in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[list[int], list[int]]] | None:
    """The smallest runs of input and output dims with equal products (a reshape maps each
    run onto the other and nothing across runs); dims of size 1 join a neighbouring run."""
    n_in, n_out = len(in_shape), len(out_shape)
    out: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < n_in and j < n_out:
        a, b = [i], [j]
        pi, pj = int(in_shape[i]), int(out_shape[j])
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= n_in:
                    return None
                pi *= int(in_shape[i])
                a.append(i)
                i += 1
            else:
                if j >= n_out:
                    return None
                pj *= int(out_shape[j])
                b.append(j)
                j += 1
        out.append((a, b))
    while i < n_in:  # trailing size-1 dims
        if int(in_shape[i]) != 1 or not out:
            return None
        out[-1][0].append(i)
        i += 1
    while j < n_out:
        if int(out_shape[j]) != 1 or not out:
            return None
        out[-1][1].append(j)
        j += 1
    return out


def reshape(
    in_shape: Sequence[int], out_shape: Sequence[int], axes: Sequence[int]
) -> Layout | None:
    """The channel grid after reshaping ``in_shape`` to ``out_shape``.

    Each run of dims (:func:`blocks`) that holds grid dims is followed entry by entry: the
    output dims of the run along which the input grid position varies become grid dims (a
    split of the channel dim gives several, a merge with spatial dims gives one dim whose
    slots repeat). Returns None if the products do not match.
    """
    runs = blocks(in_shape, out_shape)
    if runs is None:
        return None
    axes = tuple(axes)
    sizes = grid_shape(in_shape, axes)
    out_axes: list[int] = []
    gather = np.zeros((), dtype=np.int64)
    for run_in, run_out in runs:
        mine = [a for a in axes if a in run_in]
        if not mine:
            continue
        sub_sizes = [int(in_shape[a]) for a in mine]
        # the flat position of each input entry of this run within the run's part of the grid
        stride = math.prod(sizes[axes.index(mine[-1]) + 1 :])
        sub = np.arange(math.prod(sub_sizes), dtype=np.int64).reshape(sub_sizes) * stride
        view = [int(in_shape[k]) if k in mine else 1 for k in run_in]
        full = np.broadcast_to(sub.reshape(view), [int(in_shape[k]) for k in run_in])
        arr = full.reshape([int(out_shape[k]) for k in run_out])
        keep = []
        for t in range(arr.ndim):
            first = arr.take([0], axis=t)
            if arr.shape[t] > 1 and not np.array_equal(arr, np.broadcast_to(first, arr.shape)):
                keep.append(t)
        index = tuple(slice(None) if t in keep else 0 for t in range(arr.ndim))
        part = np.ascontiguousarray(arr[index])
        out_axes.extend(run_out[t] for t in keep)
        gather = np.add.outer(gather, part)
    return tuple(out_axes), np.ascontiguousarray(gather).reshape(-1)


def permute(perm: Sequence[int], axes: Sequence[int], sizes: Sequence[int]) -> Layout:
    """The channel grid after ``x.permute(perm)`` (output dim ``i`` is input dim ``perm[i]``)."""
    perm = [int(p) for p in perm]
    where = [perm.index(a) for a in axes]
    order = np.argsort(where, kind="stable")
    n = math.prod(sizes)
    gather = np.arange(n, dtype=np.int64).reshape(tuple(sizes)).transpose(order).reshape(-1)
    return tuple(sorted(where)), gather


def index(
    shape: Sequence[int], axes: Sequence[int], idx: Sequence[Any]
) -> tuple[Layout, list[int], list[tuple[int, slice]]] | None:
    """The channel grid after basic indexing ``x[idx]``.

    ``idx`` holds, per indexed dim, an int, a ``slice`` (bounds as plain ints or None),
    ``None`` (new dim), ``Ellipsis`` or the string ``"tensor"`` (an index tensor of one
    dim, allowed on dims that are not grid dims only; it keeps the dim's place). Returns the
    layout, the grid dims indexed by an int (the caller couples the grid along them: a
    literal index must stay valid) and ``(grid dim, slice)`` for grid dims cut by a slice.
    """
    idx = list(idx)
    if sum(1 for i in idx if i is Ellipsis) > 1:
        return None
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if n_real > len(shape):
        return None
    if Ellipsis in idx:
        at = idx.index(Ellipsis)
        idx = idx[:at] + [slice(None)] * (len(shape) - n_real) + idx[at + 1 :]
    idx += [slice(None)] * (len(shape) - sum(1 for i in idx if i is not None))
    if sum(1 for i in idx if isinstance(i, str)) > 1:
        return None
    axes = tuple(axes)
    sizes = grid_shape(shape, axes)
    sel: list[Any] = []
    ints: list[int] = []
    cuts: list[tuple[int, slice]] = []
    out_axes: list[int] = []
    d = o = 0  # input dim, output dim
    for i in idx:
        if i is None:
            o += 1
            continue
        g = axes.index(d) if d in axes else None
        if isinstance(i, str):  # an index tensor: only on dims without channels
            if g is not None:
                return None
            d, o = d + 1, o + 1
            continue
        if isinstance(i, int):
            if g is not None:
                sel.append(i % sizes[g])
                ints.append(g)
            d += 1
            continue
        if not isinstance(i, slice):
            return None
        if g is not None:
            rng = range(*i.indices(sizes[g]))
            sel.append(np.asarray(rng, dtype=np.int64))
            if len(rng) != sizes[g]:
                cuts.append((g, i))
            out_axes.append(o)
        d, o = d + 1, o + 1
    grid = np.arange(math.prod(sizes), dtype=np.int64).reshape(sizes)
    for g in range(len(axes) - 1, -1, -1):  # one dim at a time, from the last
        grid = np.take(grid, sel[g], axis=g)
    return (tuple(out_axes), grid.reshape(-1)), ints, cuts
