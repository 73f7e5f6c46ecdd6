"""Run a sweep: conversions as Ray tasks across the cluster, then timing on one node, then the report.

Phases:

1. **convert** — one Ray task per trial not yet recorded, ``num_cpus=cpus_per_trial``
   (TensorFlow's threads bounded to them), at most as many in flight as the cluster
   has CPUs for; the model and data travel in Ray's object store (no shared file
   system needed) and the bundle comes back as bytes. A typed error, a crashed worker
   or a timeout becomes a failed record with its reason; the sweep goes on.
2. **time** — every converted trial's artifacts timed on *one* node (the driver's, or
   ``[timing] node``), one trial at a time, each engine in a fresh process, after the
   conversions so nothing else competes for that machine; the record names the node.
3. **report** — Pareto front and recommendation per target (:mod:`.pareto`), the
   table and ``sweep.html`` (:mod:`.report`), and ``ship`` copies the recommended bundles.

``ray.init()`` starts a local Ray when no address is given (``address`` or
``RAY_ADDRESS`` joins a cluster); a Ray already initialized by the caller is used as is
and left running. Every record is written as soon as its trial finishes, so Ctrl-C
leaves all finished trials, and a re-run does only what is missing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from edgeship.errors import InputError, SweepClusterError, require

from . import pareto, report, work
from .live import Live
from .spec import SweepSpec
from .store import Store
from .trials import Trial, expand

__all__ = ["SweepResult", "run_sweep"]


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did and found.

    Attributes:
        folder: the sweep folder (records, bundles, sweep.json/md/html).
        records: every trial's record, in spec order.
        counts: ``trials``, ``skipped`` (recorded before), ``converted``, ``timed``, ``failed`` (this run).
        summary: candidates, Pareto fronts and the recommendation per target (``sweep.json``).
        html: path of ``sweep.html``.
        shipped: ``{target: bundle folder}`` written by ``ship``.
        wall_s: seconds this run took.
        phases: seconds of this run's phases (``ray_start``, ``convert``, ``timing``, ``ray_stop``, ``report``).
    """

    folder: str
    records: tuple
    counts: dict
    summary: dict
    html: str
    shipped: dict
    wall_s: float
    phases: dict = None

    def table(self) -> str:
        return report.table(self.summary)


# ---------------------------------------------------------------------------- what a task runs


def _where() -> dict:
    import ray  # noqa: PLC0415

    return {"node": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname()}


def convert_task(payload: bytes, files: dict, trial: dict, cpus: int) -> dict:
    """The Ray task of one conversion: :func:`.work.convert_trial` plus where it ran."""
    return {**work.convert_trial(payload, files, trial, cpus), **_where()}


def timing_task(bundle_tar: bytes, timing: dict, timeout: float) -> dict:
    """The Ray task that times one trial's bundle: :func:`.work.time_bundle` plus where it ran."""
    t0 = time.perf_counter()
    out = work.time_bundle(bundle_tar, timing, timeout=timeout)
    return {**out, **_where(), "seconds": time.perf_counter() - t0}


def _local_where() -> dict:
    return {"node": "local", "node_ip": "127.0.0.1", "hostname": socket.gethostname()}


# ---------------------------------------------------------------------------- inputs of a task


def _payload(spec: SweepSpec, model) -> tuple[bytes, dict]:
    d = spec.data
    names = {"model": model.path, "calib": d.calib, "eval": d.eval, "train": d.train,
             "labels": d.labels if isinstance(d.labels, str) else None}
    files = {k: (f"{k}/{os.path.basename(p.rstrip(os.sep))}" if p else None) for k, p in names.items()}
    return work.pack({files[k]: p for k, p in names.items() if p}), files


def _trial_dict(spec: SweepSpec, t: Trial) -> dict:
    labels = spec.data.labels
    return {"id": t.id, "settings": [list(kv) for kv in t.settings], "allow_unsafe": t.allow_unsafe,
            "preprocess": spec.data.preprocess, "labels": list(labels) if isinstance(labels, tuple) else None}


def _timing_dict(spec: SweepSpec) -> dict:
    tm = spec.timing
    return {"engines": list(tm.engines), "runs": tm.runs, "warmup": tm.warmup, "threads": tm.threads}


def _base_record(t: Trial) -> dict:
    return {"id": t.id, "label": t.label(), "model": t.model, "source_sha256": t.source_sha256,
            "settings": t.options}


# ---------------------------------------------------------------------------- Ray


def _ray_error(ray, exc: BaseException) -> dict:
    ex = ray.exceptions
    crash = tuple(getattr(ex, n) for n in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError",
                                           "LocalRayletDiedError") if hasattr(ex, n))
    if isinstance(exc, crash):
        text = str(exc).strip().splitlines()
        return {"kind": "crash", "type": type(exc).__name__,
                "reason": "the worker process died while running the trial" + (f": {text[0]}" if text else "")}
    if isinstance(exc, ex.TaskCancelledError):
        return {"kind": "cancelled", "type": type(exc).__name__, "reason": "cancelled"}
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return {"kind": "internal", "type": type(cause).__name__, "reason": text[-1] if text else type(cause).__name__}


class _Ray:
    """A connection to Ray for one sweep: started here (local) or joined (an address / RAY_ADDRESS)."""

    def __init__(self, address: str | None, spec: SweepSpec):
        self.ray = ray = require("ray", "sweep", "to run a sweep on Ray")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.started = False
        if not ray.is_initialized():
            addr = address or os.environ.get("RAY_ADDRESS") or None
            kw = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
            try:
                ray.init(address=addr, **kw)
            except ConnectionError as exc:
                where = f"--address {address}" if address else f"RAY_ADDRESS={addr}"
                raise SweepClusterError(f"cannot join the Ray cluster at {addr} ({where}): {exc}; on a node of "
                                        "the cluster, --address auto finds it") from None
            self.started = True
        self.spec = spec
        try:
            self._check()
        except BaseException:
            self.close()  # a Ray started here does not outlive a refused sweep
            raise

    def _check(self) -> None:
        ray, spec = self.ray, self.spec
        cpus = ray.cluster_resources().get("CPU", 1)
        biggest = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if spec.cpus_per_trial > biggest:
            raise InputError(f"[sweep] cpus_per_trial {spec.cpus_per_trial} is more than any node of this Ray "
                             f"cluster has (at most {biggest:g} CPUs): no trial could ever start")
        self.capacity = max(1, int(cpus // spec.cpus_per_trial))
        self.convert_fn = ray.remote(convert_task).options(num_cpus=spec.cpus_per_trial, max_retries=0)
        self.timing_node = self._timing_node(spec.timing.node)
        node_cpus = self.timing_node.get("Resources", {}).get("CPU", 0)
        if spec.timing.threads > node_cpus:
            raise InputError(f"[timing] threads {spec.timing.threads} is more than the timing node has "
                             f"({node_cpus:g} CPUs): lower it or choose another [timing] node")

    def _timing_node(self, wanted: str) -> dict:
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        if wanted:
            for n in alive:
                if wanted in (n["NodeID"], n.get("NodeManagerAddress"), n.get("NodeManagerHostname")):
                    return n
            known = ", ".join(f"{n['NodeID'][:12]} ({n.get('NodeManagerAddress')})" for n in alive)
            raise InputError(f"[timing] node {wanted!r} is not a live node of this Ray cluster; nodes: {known}")
        me = self.ray.get_runtime_context().get_node_id()
        return next((n for n in alive if n["NodeID"] == me), alive[0])

    def timing_fn(self):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: PLC0415

        strategy = NodeAffinitySchedulingStrategy(node_id=self.timing_node["NodeID"], soft=False)
        return self.ray.remote(timing_task).options(num_cpus=self.spec.timing.threads, max_retries=0,
                                                    scheduling_strategy=strategy)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


# ---------------------------------------------------------------------------- the two phases


class _Run:
    def __init__(self, spec: SweepSpec, store: Store, live: Live, counts: dict):
        self.spec, self.store, self.live, self.counts = spec, store, live, counts

    def converted(self, t: Trial, out: dict) -> None:
        rec = _base_record(t)
        where = {k: out.get(k) for k in ("node", "node_ip", "hostname")}
        if out.get("ok"):
            self.store.put_bundle(t.id, out["bundle_tar"])
            rec.update(status="converted", conversion={**where, "seconds": round(out["seconds"], 3),
                                                       "artifacts": out["artifacts"], "warnings": out["warnings"],
                                                       "bundle": f"bundles/{t.id}"})
            self.counts["converted"] += 1
            self.store.save(rec)
            self.live.line(f"converted {t.id} {t.label()} on {where['hostname']} ({out['seconds']:.1f} s)")
            return
        self.failed(t, "convert", {"kind": "error", **out["error"]}, where)

    def failed(self, t: Trial, stage: str, error: dict, where: dict | None = None, prev: dict | None = None) -> None:
        rec = {**(prev or _base_record(t)), "status": "failed", "failed_stage": stage, "error": error}
        if where and stage == "convert":
            rec["conversion"] = where
        self.store.save(rec)
        self.counts["failed"] += 1
        self.live.finished(False, f"FAILED {t.id} {t.label()} ({stage}, {error['kind']}): {error['reason']}")

    def timed(self, t: Trial, rec: dict, out: dict) -> None:
        rows = out["rows"]
        rec = {**rec, "status": "done", "timing": {k: out.get(k) for k in ("node", "node_ip", "hostname")}
               | {"seconds": round(out.get("seconds", 0.0), 3), "rows": rows}}
        self.store.save(rec)
        self.counts["timed"] += 1
        lat = ", ".join(f"{r['artifact']} on {r['engine']}: " + (f"p50 {r['p50_ms']:.3f} ms" if "p50_ms" in r
                                                                 else f"skipped ({r['skipped']})") for r in rows)
        arts = rec["conversion"]["artifacts"]
        acc = ", ".join(f"{a['file']} acc {100 * a['accuracy']:.2f}%" for a in arts if a.get("accuracy") is not None)
        self.live.finished(True, f"done {t.id} {t.label()}: {acc}; {lat}")


def _convert_ray(r: _Ray, run: _Run, todo: list, payloads: dict) -> None:
    ray, spec = r.ray, run.spec
    refs = {m: ray.put(p) for m, (p, _files) in payloads.items()}
    pending, inflight = list(todo), {}
    try:
        while pending or inflight:
            while pending and len(inflight) < r.capacity:
                t = pending.pop(0)
                ref = r.convert_fn.remote(refs[t.model], payloads[t.model][1], _trial_dict(spec, t),
                                          spec.cpus_per_trial)
                inflight[ref] = (t, time.monotonic())
            run.live.set_running(len(inflight))
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                t, _t0 = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    run.failed(t, "convert", _ray_error(ray, exc))
                    continue
                run.converted(t, out)
            now = time.monotonic()
            for ref, (t, t0) in list(inflight.items()):
                if now - t0 > spec.timeout_s:
                    ray.cancel(ref, force=True)
                    del inflight[ref]
                    run.failed(t, "convert", {"kind": "timeout", "type": "Timeout",
                                              "reason": f"timed out after {spec.timeout_s:g} s ([sweep] timeout_s)"})
    finally:
        for ref in inflight:  # Ctrl-C or an error of ours: stop what runs, keep what finished
            ray.cancel(ref, force=True)
        run.live.set_running(0)


def _time_ray(r: _Ray, run: _Run, todo: list) -> None:
    ray, spec = r.ray, run.spec
    fn = r.timing_fn()
    node = r.timing_node
    run.live.line(f"timing {len(todo)} trial(s) on node {node['NodeID'][:12]} ({node.get('NodeManagerAddress')}), "
                  "one at a time, each engine in a fresh process")
    for t in todo:
        rec = run.store.load(t.id)
        ref = fn.remote(work.pack({"bundle": run.store.bundle_path(t.id)}), _timing_dict(spec), spec.timeout_s)
        run.live.set_running(1)
        try:
            ready, _ = ray.wait([ref], timeout=spec.timeout_s + 60)
            if not ready:
                ray.cancel(ref, force=True)
                run.failed(t, "timing", {"kind": "timeout", "type": "Timeout",
                                         "reason": f"timing took more than {spec.timeout_s:g} s"}, prev=rec)
                continue
            out = ray.get(ref)
        except ray.exceptions.RayError as exc:
            run.failed(t, "timing", _ray_error(ray, exc), prev=rec)
            continue
        except BaseException:
            ray.cancel(ref, force=True)
            raise
        finally:
            run.live.set_running(0)
        run.timed(t, rec, out)


def _serial(run: _Run, conv: list, payloads: dict, timing_todo: list) -> None:
    spec = run.spec
    for t in conv:
        run.live.set_running(1)
        try:
            out = work.convert_trial(payloads[t.model][0], payloads[t.model][1], _trial_dict(spec, t),
                                     spec.cpus_per_trial)
        except Exception as exc:  # noqa: BLE001 - a bug in one trial is that trial's result, as on Ray
            run.failed(t, "convert", {"kind": "internal", "type": type(exc).__name__, "reason": str(exc)})
            continue
        run.converted(t, {**out, **_local_where()})
        if out.get("ok"):
            timing_todo.append(t)
    for t in timing_todo:
        rec = run.store.load(t.id)
        t0 = time.perf_counter()
        try:
            out = work.time_bundle(work.pack({"bundle": run.store.bundle_path(t.id)}), _timing_dict(spec),
                                   timeout=spec.timeout_s)
        except Exception as exc:  # noqa: BLE001
            run.failed(t, "timing", {"kind": "internal", "type": type(exc).__name__, "reason": str(exc)}, prev=rec)
            continue
        run.timed(t, rec, {**out, **_local_where(), "seconds": time.perf_counter() - t0})
    run.live.set_running(0)


# ---------------------------------------------------------------------------- the sweep


def run_sweep(spec: SweepSpec, *, address: str | None = None, ship: str | None = None, retry_failed: bool = False,
              serial: bool = False) -> SweepResult:
    """Run the trials of ``spec`` not yet recorded in its folder; report on all of them.

    Args:
        spec: a checked :class:`~.spec.SweepSpec` (see :func:`~.spec.load_spec`).
        address: a Ray cluster (``ray://HOST:10001``, ``HOST:6379`` or ``auto``); default
            ``RAY_ADDRESS``, else a local Ray started for this sweep (and stopped after it).
        ship: write the recommended bundle of each target to ``ship/<target>``.
        retry_failed: run failed trials again (default: a failure is a result, kept).
        serial: no Ray: every trial one after the other in this process (the reference loop).

    Raises:
        MissingDependencyError: Ray is not installed (``pip install "edgeship[sweep]"``).
        SweepClusterError: the Ray cluster at ``address`` / ``RAY_ADDRESS`` cannot be joined.
        InputError: the sweep or ship folder cannot be used, or ``[timing] node`` is not in the cluster.
    """
    t_start = time.perf_counter()
    store = Store(spec.output)
    trials = expand(spec)
    recs = {t.id: store.load(t.id) for t in trials}
    conv, timing = [], []
    for t in trials:
        rec = recs[t.id]
        status = rec and rec.get("status")
        if rec is None or (status == "converted" and not store.has_bundle(t.id)) or \
                (retry_failed and status == "failed" and rec.get("failed_stage") == "convert"):
            conv.append(t)
        elif status == "converted" or (retry_failed and status == "failed"):
            timing.append(t)
    counts = {"trials": len(trials), "skipped": len(trials) - len(conv) - len(timing), "converted": 0, "timed": 0,
              "failed": 0}
    live = Live(len(conv) + len(timing), desc=f"sweep {spec.name}")
    run = _Run(spec, store, live, counts)
    phases: dict = {}
    clock = time.perf_counter
    try:
        if conv or timing:
            payloads = {m.name: _payload(spec, m) for m in spec.models if any(t.model == m.name for t in conv)}
            if serial:
                t0 = clock()
                _serial(run, conv, payloads, timing)
                phases["serial"] = clock() - t0
            else:
                t0 = clock()
                r = _Ray(address, spec)
                phases["ray_start"] = clock() - t0
                try:
                    live.line(f"sweep {spec.name}: {len(conv)} conversion(s), {len(timing)} timing(s) to do, "
                              f"{counts['skipped']} recorded before; Ray: {r.capacity} trial(s) at a time")
                    t0 = clock()
                    _convert_ray(r, run, conv, payloads)
                    phases["convert"] = clock() - t0
                    t0 = clock()
                    _time_ray(r, run, timing + [t for t in conv if (store.load(t.id) or {}).get("status")
                                                == "converted"])
                    phases["timing"] = clock() - t0
                finally:
                    t0 = clock()
                    r.close()
                    phases["ray_stop"] = clock() - t0
    finally:
        live.close()
    t0 = clock()
    records = tuple(store.load(t.id) for t in trials)
    summary = pareto.summarize([r for r in records if r], spec)
    summary["counts"] = counts
    html = report.write(store, summary, spec)
    shipped = report.ship(store, summary, ship) if ship else {}
    phases["report"] = clock() - t0
    return SweepResult(folder=store.root, records=records, counts=counts, summary=summary, html=html,
                       shipped=shipped, wall_s=time.perf_counter() - t_start,
                       phases={k: round(v, 3) for k, v in phases.items()})
