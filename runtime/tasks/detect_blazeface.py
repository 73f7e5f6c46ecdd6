"""BlazeFace-style raw anchors with keypoints (MediaPipe's face detector): the SSD anchors
MediaPipe builds for it and the decoder of its regressors and score logits. Re-exported by
:mod:`.detect`; numpy only."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import InputError

__all__ = ["blazeface_anchors", "decode_blazeface"]


def _squeeze_batch(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[0] if a.ndim >= 2 and a.shape[0] == 1 else a


def blazeface_anchors(size: int = 128, strides: Sequence[int] = (8, 16, 16, 16)) -> np.ndarray:
    """MediaPipe's SSD anchors for BlazeFace (short range: 128 px, strides 8,16,16,16 -> 896).

    Returns ``[A,2]`` anchor centres (x, y) normalised; anchor sizes are fixed to 1
    (``fixed_anchor_size``), as in MediaPipe's face detection graph.
    """
    out = []
    i = 0
    while i < len(strides):
        same = [s for s in strides[i:] if s == strides[i]]
        n = 2 * len(same)  # two aspect-ratio-1 anchors per layer sharing this stride
        cells = int(np.ceil(size / strides[i]))
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(centres, n, axis=0))
        i += len(same)
    return np.concatenate(out).astype(np.float32)


def decode_blazeface(regressors: np.ndarray, scores: np.ndarray, *, anchors: np.ndarray | None = None,
                     input_size: tuple[int, int] = (128, 128), keypoints: int = 6):
    """BlazeFace: ``[1,A,4+2K]`` (dx, dy, w, h, then K keypoint offsets, in input pixels
    relative to the anchor centre) and ``[1,A,1]`` score logits.

    Returns (boxes xyxy normalised, scores, ids, keypoints ``[A,K,2]`` normalised).
    """
    reg = _squeeze_batch(regressors).astype(np.float32).reshape(-1, 4 + 2 * keypoints)
    logit = np.clip(_squeeze_batch(scores).astype(np.float32).reshape(-1), -50.0, 50.0)
    anc = blazeface_anchors(input_size[0]) if anchors is None else np.asarray(anchors, np.float32)[:, :2]
    if anc.shape[0] != reg.shape[0]:
        raise InputError(f"BlazeFace decoding: {reg.shape[0]} regressors but {anc.shape[0]} anchors")
    h, w = input_size
    scale = np.asarray([w, h], np.float32)
    centre = reg[:, :2] / scale + anc
    half = reg[:, 2:4] / scale / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    kps = reg[:, 4:].reshape(-1, keypoints, 2) / scale + anc[:, None, :]
    return boxes, 1.0 / (1.0 + np.exp(-logit)), np.zeros(len(reg), np.int64), kps
