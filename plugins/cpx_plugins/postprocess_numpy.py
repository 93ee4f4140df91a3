"""Post-processing of class-id masks with numpy alone: small connected components and holes.

This file is copied verbatim into a submission's ``solution/`` folder, where ``run.py`` calls
its functions by the names in ``model.json``; so it imports numpy and the standard library
only. cpx itself runs the same functions with ``scipy.ndimage.label`` as the component
labeller (``cpx_plugins.postprocess``); :func:`label4` gives the same components (a test holds
them to it), so the submission reproduces cpx's masks exactly.

Connectivity is 4 (pixels sharing an edge), scipy's default 2-D structure. Every rule here
depends only on which pixels form a component, never on the order components are numbered in.
"""

import numpy as np

# the largest class id + 1 a mask may hold (uint8 masks)
ID_LIMIT = 256


def label4(binary):
    """4-connected components of an H x W boolean array: ``(labels, count)`` with ``labels`` an
    int32 H x W array (0 outside, 1..count inside, numbered in raster order of first pixel), the
    same as ``scipy.ndimage.label(binary)``.

    Each row's runs of True pixels are the nodes; runs of consecutive rows that share a column
    are joined with a union-find, so the Python work grows with the number of runs, not pixels.
    """
    b = np.asarray(binary, dtype=bool)
    h, w = b.shape
    labels = np.zeros((h, w), dtype=np.int32)
    if not b.any():
        return labels, 0
    edges = np.diff(np.pad(b, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive ends, in the same (row, column) order
    first = np.searchsorted(rows, np.arange(h + 1)).tolist()
    s, e = starts.tolist(), ends.tolist()
    parent = list(range(len(s)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(h - 1):
        i, i_end, j, j_end = first[r], first[r + 1], first[r + 1], first[r + 2]
        while i < i_end and j < j_end:  # overlapping intervals of two sorted, disjoint lists
            if s[i] < e[j] and s[j] < e[i]:
                a, c = find(i), find(j)
                if a != c:
                    parent[max(a, c)] = min(a, c)
            if e[i] < e[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(len(s))])
    # runs are in raster order, so numbering roots by first appearance is scipy's numbering
    _, first_seen, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first_seen), dtype=np.int32)
    rank[np.argsort(first_seen)] = np.arange(1, len(first_seen) + 1, dtype=np.int32)
    ids = rank[inverse]
    lengths = ends - starts
    offsets = np.cumsum(lengths) - lengths
    pixels = np.repeat(rows * w + starts - offsets, lengths) + np.arange(int(lengths.sum()))
    labels.flat[pixels] = np.repeat(ids, lengths)
    return labels, len(first_seen)


def _classes(mask, classes):
    present = np.unique(mask).tolist()
    wanted = [c for c in present if c != 0] if classes is None else [c for c in present if c in set(classes)]
    return wanted


def refill(mask, removed):
    """``mask`` with the ``removed`` pixels relabelled from their surroundings: repeatedly, every
    removed pixel with a kept 4-neighbour takes the most common label among its kept neighbours
    (the smallest id on a tie), until none is left."""
    out = np.array(mask, copy=True)
    unknown = np.array(removed, dtype=bool, copy=True)
    while unknown.any():
        known = np.where(unknown, -1, out.astype(np.int16))
        padded = np.pad(known, 1, constant_values=-1)
        neighbours = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        frontier = unknown & (neighbours >= 0).any(axis=0)
        if not frontier.any():
            break  # nothing kept anywhere near: leave the rest as it was
        cand = neighbours[:, frontier]  # 4 x n
        votes = ((cand[:, None, :] == cand[None, :, :]) & (cand[None, :, :] >= 0)).sum(axis=1)
        key = np.where(cand >= 0, votes * ID_LIMIT * 4 - cand, -ID_LIMIT * 8)
        out[frontier] = cand[key.argmax(axis=0), np.arange(cand.shape[1])].astype(out.dtype)
        unknown[frontier] = False
    return out


def remove_small_components(mask, min_share=1e-4, classes=None, label=None):
    """``mask`` (H x W class ids) without the small connected components of each class: a
    component covering less than ``min_share`` of the image is relabelled from its surroundings
    (:func:`refill`), unless it is as large as its class's largest component (a class is never
    erased). ``classes``: the class ids to clean (default: every class but 0, the background).
    ``label``: the component labeller (default :func:`label4`)."""
    label = label or label4
    mask = np.asarray(mask)
    limit = min_share * mask.size
    removed = np.zeros(mask.shape, dtype=bool)
    for c in _classes(mask, classes):  # every class judged on the input, so the order does not matter
        labels, count = label(mask == c)
        if count <= 1:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        small = np.flatnonzero((sizes < limit) & (sizes < sizes.max())) + 1
        if small.size:
            removed |= np.isin(labels, small)
    return refill(mask, removed) if removed.any() else np.array(mask, copy=True)


def fill_holes(mask, max_share=1e-4, classes=None, label=None):
    """``mask`` (H x W class ids) with the holes of each class filled: a connected region of
    other labels enclosed by the class (not touching the image border) and covering at most
    ``max_share`` of the image takes the class's id. Classes go in increasing id order, each on
    the result of the last. ``classes`` and ``label`` as in :func:`remove_small_components`."""
    label = label or label4
    out = np.array(mask, copy=True)
    limit = max_share * out.size
    for c in _classes(out, classes):
        labels, count = label(out != c)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        holes = np.flatnonzero(sizes <= limit)
        holes = holes[(holes > 0) & ~np.isin(holes, border)]
        if holes.size:
            out[np.isin(labels, holes)] = c
    return out
