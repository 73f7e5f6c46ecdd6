"""Timing helpers shared by the benchmark scripts: interleaved rounds and the bare LiteRT loop."""

from __future__ import annotations

import time

import numpy as np


def stats(seconds: list) -> dict:
    """p50/p90/mean/std/min in milliseconds of a list of durations in seconds."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()),
            "std": float(a.std()), "min": float(a.min()), "runs": int(a.size)}


def interleaved(fns: dict, *, runs: int, warmup: int = 10, rounds: int | None = None, desc: str | None = None) -> dict:
    """Time each zero-argument callable ``runs`` times, alternating them in rounds (order reversed every
    other round), so that a busy moment of the machine lands on all of them alike."""
    from edgeship.progress import progress  # noqa: PLC0415

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds = max(1, min(rounds or 20, runs // 5 or 1))
    per_round = max(1, runs // rounds)
    names = list(fns)
    times: dict = {n: [] for n in names}
    perf = time.perf_counter
    it = progress(range(rounds), total=rounds, desc=desc) if desc else range(rounds)
    for r in it:
        for n in names if r % 2 == 0 else names[::-1]:
            fn, t = fns[n], times[n]
            for _ in range(per_round):
                t0 = perf()
                fn()
                t.append(perf() - t0)
    return {n: stats(t) for n, t in times.items()}


class BareLiteRT:
    """What a user writes without edgeship: the interpreter loop with hand-made (de)quantization."""

    def __init__(self, path: str, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

        self.it = Interpreter(model_path=path, num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]

    def quantized_input(self, x: np.ndarray) -> np.ndarray:
        inp = self.inp
        if inp["dtype"] not in (np.int8, np.uint8):
            return x.astype(inp["dtype"])
        scale, zp = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        return np.clip(np.round(x / scale + zp), info.min, info.max).astype(inp["dtype"])

    def run(self, x: np.ndarray) -> np.ndarray:
        inp, out, it = self.inp, self.out, self.it
        it.set_tensor(inp["index"], self.quantized_input(x) if inp["dtype"] in (np.int8, np.uint8) else x)
        it.invoke()
        y = it.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            scale, zp = out["quantization"]
            y = (y.astype(np.float32) - zp) * np.float32(scale)
        return y

    def invoke_only(self, q: np.ndarray) -> np.ndarray:
        """The floor: an already-quantized input, raw output, no (de)quantization."""
        self.it.set_tensor(self.inp["index"], q)
        self.it.invoke()
        return self.it.get_tensor(self.out["index"])
