"""``edgeship run``: a bundle or model file on images or ``.npy``/``.npz`` batches, task-aware.

The task (``--task``, else the manifest's ``task``/``decoder``, else the output
shapes of a bare file) decides what is printed for each input:

- classification: the top ``--top-k`` classes (``Model.classify``);
- detection: one line per box, label, score and ``[xmin, ymin, xmax, ymax]`` in
  the image's pixels (``Model.detect``, ``--threshold``/``--iou``);
- segmentation (and a dense one-channel map, e.g. a text detector's
  probability map): the mask's size and the classes present with the fraction
  of pixels each covers (``Model.segment``); ``--save-masks DIR`` writes one PNG
  per input, pixel value = class id, at the image's size;
- other: the raw outputs.

A model whose input height/width are dynamic runs each image at its own size
(see :mod:`edgeship.runtime.tasks.common`); ``input_size`` says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ..errors import InputError, UsageError
from ..vocab import Task
from .common import (add_accel_arguments, emit_json, int_at_least, load_kwargs, require_path, stdout_to_stderr,
                     unit_interval)

TASKS = ("auto", Task.CLASSIFICATION.value, Task.DETECTION.value, Task.SEGMENTATION.value, Task.OTHER.value)
ALIASES = {"classify": Task.CLASSIFICATION.value, "detect": Task.DETECTION.value,
           "segment": Task.SEGMENTATION.value}


def task_arg(text: str) -> str:
    """``--task``: auto, classification, detection, segmentation or other (classify/detect/segment too)."""
    t = ALIASES.get(text.strip().lower(), text.strip().lower())
    if t not in TASKS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task; expected one of {', '.join(TASKS)}")
    return t


def read_inputs(paths: Sequence[str]) -> list:
    """``(name, kind, data)`` for each INPUT: images go through the task, arrays through ``run``.

    Raises:
        InputError: a path that does not exist or an unreadable array file.
    """
    from ..calibration import default_max_bytes  # noqa: PLC0415
    from ..safeio import load_npy, load_npz  # noqa: PLC0415

    items = []
    for p in paths:
        require_path(p, "input")
        if p.lower().endswith(".npy"):  # headers checked against a memory budget first, never unpickled
            items.append((p, "array", load_npy(p, error=InputError, flag="EDGESHIP_CALIB_MAX_BYTES",
                                               max_bytes=default_max_bytes())))
        elif p.lower().endswith(".npz"):
            arr = load_npz(p, ("x",), error=InputError, required=("x",), flag="EDGESHIP_CALIB_MAX_BYTES",
                           max_bytes=default_max_bytes())["x"]
            items.append((p, "array", arr))
        else:
            items.append((p, "image", p))
    return items


# ---------------------------------------------------------------------------- the task


def guess_task(model) -> tuple[str, str]:
    """(task, how it is known): :func:`edgeship.runtime.tasks.common.infer_task`, which streams use too."""
    from edgeship.runtime.tasks.common import infer_task  # noqa: PLC0415

    return infer_task(model)


# ---------------------------------------------------------------------------- results


def _classes(vec, top_k: int, labels) -> list:
    from edgeship.runtime import get_classes  # noqa: PLC0415

    return [{"id": c.id, "score": float(c.score), "label": c.label} for c in get_classes(vec, top_k=top_k, labels=labels)]


def _mask_entry(seg, masks_dir: str | None, name: str, used: set) -> dict:
    h, w = seg.mask.shape[:2]
    entry = {"size": [int(w), int(h)],
             "classes": [{"id": c.id, "label": c.label, "fraction": float(c.score)} for c in seg.classes],
             "file": None}
    if masks_dir is not None:
        from edgeship.runtime.pngio import write_png  # noqa: PLC0415

        stem = os.path.splitext(os.path.basename(name))[0].replace("[", "-").replace("]", "") or "mask"
        file, k = f"{stem}.png", 1
        while file in used:
            file, k = f"{stem}-{k}.png", k + 1
        used.add(file)
        entry["file"] = write_png(os.path.join(masks_dir, file), seg.mask)
    return entry


def _image_result(model, name: str, path: str, task: str, args, used: set) -> dict:
    from edgeship.preprocess import read_image  # noqa: PLC0415
    from edgeship.runtime.tasks.common import preprocess_spec  # noqa: PLC0415

    image = read_image(path)
    entry = {"input": name, "task": task, "image_size": [int(image.shape[1]), int(image.shape[0])]}
    if task == Task.DETECTION.value:
        dets = model.detect(image, args.threshold, iou=args.iou, max_detections=args.max_detections)
        entry["detections"] = [{"id": d.id, "label": d.label, "score": float(d.score),
                                "box": [round(float(v), 1) for v in d.bbox]} for d in dets]
    elif task == Task.SEGMENTATION.value:
        entry["mask"] = _mask_entry(model.segment(image), args.save_masks, name, used)
    else:
        outputs = model.predict(image)
        first = next(iter(outputs.values()))
        if task == Task.CLASSIFICATION.value and len(outputs) == 1 and first[0].size > 1:
            entry["classes"] = _classes(first[0].reshape(-1), args.top_k, model.labels)
        else:
            entry["task"] = Task.OTHER.value
            entry["outputs"] = {k: v[0].tolist() for k, v in outputs.items()}
    try:
        h, w = preprocess_spec(model, image).size
        entry["input_size"] = [int(w), int(h)]
    except InputError:  # not an image input with a spec: predict() said so already
        pass
    return entry


def _array_results(model, name: str, data, task: str, args, used: set) -> list:
    import numpy as np  # noqa: PLC0415

    from edgeship.runtime.tasks import get_segmentation  # noqa: PLC0415

    batch = model.run(data)
    first = next(iter(batch.values()))
    n = first.shape[0] if first.ndim > 1 else 1
    results = []
    for i in range(n):
        entry = {"input": name if n == 1 else f"{name}[{i}]"}
        vec = np.asarray(first[i] if first.ndim > 1 else first).reshape(-1)
        if task == Task.SEGMENTATION.value:
            s = np.asarray(first[i])
            if s.ndim == 3 and s.shape[0] < s.shape[-1] and s.shape[0] <= 512:
                s = np.moveaxis(s, 0, -1)  # (C, H, W) -> (H, W, C)
            entry.update(task=task, mask=_mask_entry(get_segmentation(s, labels=model.labels), args.save_masks,
                                                     entry["input"], used))
        elif task == Task.CLASSIFICATION.value and vec.size > 1 and len(model.outputs) == 1:
            entry.update(task=task, classes=_classes(vec, args.top_k, model.labels))
        else:
            entry.update(task=Task.OTHER.value,
                         outputs={k: np.asarray(v[i] if v.ndim > 1 else v).tolist() for k, v in batch.items()})
        results.append(entry)
    return results


def _results(model, items, task: str, args) -> list:
    used: set = set()
    results = []
    for name, kind, data in items:
        if kind == "image":
            results.append(_image_result(model, name, data, task, args, used))
        else:
            results.extend(_array_results(model, name, data, task, args, used))
    return results


def _masks_dir(path: str | None) -> str | None:
    if path is None:
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--save-masks {path!r} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(path))
    require_path(parent, "--save-masks parent folder")
    os.makedirs(path, exist_ok=True)
    return path


def _line(r: dict) -> str:
    size = f" (ran at {r['input_size'][0]}x{r['input_size'][1]})" if "input_size" in r else ""
    if "classes" in r:
        return f"{r['input']}: " + ", ".join(f"{c['label'] or c['id']} {c['score']:.3f}" for c in r["classes"])
    if "detections" in r:
        lines = [f"{r['input']}: {len(r['detections'])} detection{'s' * (len(r['detections']) != 1)}{size}"]
        lines += [f"  {d['label'] or d['id']} {d['score']:.3f} [{', '.join(f'{v:.1f}' for v in d['box'])}]"
                  for d in r["detections"]]
        return "\n".join(lines)
    if "mask" in r:
        m = r["mask"]
        present = ", ".join(f"{c['label'] or c['id']} {100 * c['fraction']:.1f}%" for c in m["classes"][:10])
        more = f", +{len(m['classes']) - 10} more" if len(m["classes"]) > 10 else ""
        saved = f" -> {m['file']}" if m["file"] else ""
        return f"{r['input']}: mask {m['size'][0]}x{m['size'][1]}{size}: {present}{more}{saved}"
    return f"{r['input']}: {json.dumps(r['outputs'])[:200]}"


def _preprocess(model, text: str):
    """``--preprocess`` over the model's own spec (the manifest's, else the default for its input): keys
    not given keep the model's values (size, layout, gray)."""
    from ..preprocess import PreprocessSpec  # noqa: PLC0415
    from edgeship.runtime.tasks.common import per_image, preprocess_spec  # noqa: PLC0415

    base = None if per_image(model) else preprocess_spec(model)  # a dynamic-size model has no size of its own
    return PreprocessSpec.parse(text, default=base)


def cmd_run(args) -> int:
    from edgeship import runtime  # noqa: PLC0415

    from ..isolate import probe_if_bare  # noqa: PLC0415

    require_path(args.path, "model")
    items = read_inputs(args.inputs)
    with stdout_to_stderr(args.json) as out:
        probe_if_bare(args.path)  # an untrusted bare model file is opened in a child first
        with runtime.load(args.path, artifact=args.artifact, threads=args.threads, **load_kwargs(args)) as model:
            if args.task == "auto":
                task, why = guess_task(model)
            else:
                task, why = args.task, "--task"
            if args.save_masks is not None and task != Task.SEGMENTATION.value:
                raise UsageError(f"--save-masks writes segmentation masks, but this model's task is {task} "
                                 f"(from {why}); pass --task segmentation if its output is a per-pixel map")
            args.save_masks = _masks_dir(args.save_masks)
            if args.preprocess is not None:
                model.preprocessing = _preprocess(model, args.preprocess)
            results = _results(model, items, task, args)
            info = model.info.to_dict()
        if args.json:
            emit_json(out, {"model": os.path.abspath(args.path), "task": task, "task_from": why, "backend": info,
                            "results": results})
            return 0
        for r in results:
            print(_line(r))
        print(f"(task {task}, from {why}; ran on {info['backend']}"
              f"{' + ' + info['delegate'] if info.get('delegate') else ''})", file=sys.stderr)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("run", help="run a bundle or model file on images or .npy batches (classes, boxes or masks)")
    r.add_argument("path", help="bundle folder or .tflite/.onnx file")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, .npy batches or .npz files with x")
    r.add_argument("--task", type=task_arg, default="auto",
                   help="auto (default: the manifest's task, else read from the output shapes), classification, "
                        "detection, segmentation or other")
    r.add_argument("--top-k", type=int_at_least(1), default=5, help="classes shown per input (default 5)")
    r.add_argument("--threshold", type=unit_interval, default=0.5, help="detection: minimum score (default 0.5)")
    r.add_argument("--iou", type=unit_interval, default=0.45, help="detection: NMS IoU threshold (default 0.45)")
    r.add_argument("--max-detections", type=int_at_least(1), default=100,
                   help="detection: most boxes per image (default 100)")
    r.add_argument("--save-masks", metavar="DIR",
                   help="segmentation: write one PNG mask per input into DIR (pixel value = class id, image size)")
    r.add_argument("--preprocess", metavar="SPEC",
                   help="image inputs: how images become the model's input, e.g. size=256x256,resize=letterbox,"
                        "color=rgb,scale=1/255 (keys not given keep the manifest's, or for a bare .tflite/.onnx "
                        "file the default: stretch to the input size, RGB, pixel / 255)")
    r.add_argument("--artifact", help="artifact file name or format (tflite, onnx); default: the best for this device")
    r.add_argument("--threads", type=int_at_least(1), help="inference threads (default: the runtime's, min(4, cores))")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: text)")
    add_accel_arguments(r)
    r.set_defaults(func=cmd_run)
    return r
