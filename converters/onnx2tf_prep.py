"""Around onnx2tf's failures on real exports (issue 12): what it cannot convert is found
before it runs, rewritten where a rewrite is exact, retried once on a cleaned graph, and
otherwise reported in one line that names the node and op and what to try.

- :func:`unsupported_nodes`: nodes whose op onnx2tf has no converter for (its
  ``onnx2tf.ops`` modules), or of a custom domain; refused before onnx2tf spends minutes.
- :func:`rewrite_known_ops`: exact rewrites into ops onnx2tf has: ``CastLike`` ->
  ``Cast`` (to the type of its second input), ``Swish`` -> ``x * Sigmoid(alpha * x)``.
- :func:`clean_graph`: ONNX shape inference, then onnxslim when it is installed, else
  onnx-graphsurgeon's constant folding and dead-node clean-up (onnx2tf's own onnxsim
  step stays off: it runs a subprocess).
- :func:`failed_node`: the node onnx2tf failed on (it attaches ``onnx_op_name`` to its
  exception and logs ``onnx_op_name: ...``), with its op type from the graph.
"""

from __future__ import annotations

import re

__all__ = ["onnx2tf_ops", "nhwc_inputs", "unsupported_nodes", "rewrite_known_ops", "clean_graph", "failed_node", "reason_of",
           "log_reason"]

_DOMAINS = ("", "ai.onnx")


def onnx2tf_ops() -> set:
    """The ONNX op types installed onnx2tf has a converter for."""
    import pkgutil  # noqa: PLC0415

    import onnx2tf.ops  # noqa: PLC0415

    return {m.name for m in pkgutil.iter_modules(onnx2tf.ops.__path__) if not m.name.startswith("_")}


def unsupported_nodes(model, ops: set | None = None) -> list:
    """``[(node name, op type, domain)]`` of the main graph's nodes onnx2tf cannot convert."""
    ops = onnx2tf_ops() if ops is None else ops
    return [(n.name or (n.output[0] if n.output else "?"), n.op_type, n.domain) for n in model.graph.node
            if n.domain not in _DOMAINS or n.op_type not in ops]


def _elem_types(model) -> dict:
    import onnx  # noqa: PLC0415

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help, not a requirement
        inferred = model
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types.setdefault(n.output[0], a.t.data_type)
    return types


def rewrite_known_ops(model) -> list:
    """Rewrite, in place, ops onnx2tf lacks into exact equivalents; notes of what was done."""
    from onnx import helper  # noqa: PLC0415

    g = model.graph
    todo = [n for n in g.node if n.domain in _DOMAINS and n.op_type in ("CastLike", "Swish")]
    if not todo:
        return []
    types = _elem_types(model) if any(n.op_type == "CastLike" for n in todo) else {}
    out, done = [], {}
    for node in g.node:
        if node not in todo:
            out.append(node)
            continue
        name = node.name or node.output[0]
        if node.op_type == "CastLike":
            to = types.get(node.input[1])
            if not to:
                out.append(node)  # the target type is unknown: left for the unsupported-op check
                continue
            out.append(helper.make_node("Cast", [node.input[0]], list(node.output), name=name, to=int(to)))
        else:  # Swish(x; alpha) = x * sigmoid(alpha * x)
            alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
            x, y = node.input[0], node.output[0]
            k = f"{name}/alpha"
            g.initializer.append(helper.make_tensor(k, 1, [], [alpha]))  # float32 scalar
            out += [helper.make_node("Mul", [x, k], [f"{name}/ax"], name=f"{name}/mul_alpha"),
                    helper.make_node("Sigmoid", [f"{name}/ax"], [f"{name}/sig"], name=f"{name}/sigmoid"),
                    helper.make_node("Mul", [x, f"{name}/sig"], [y], name=name)]
        done[node.op_type] = done.get(node.op_type, 0) + 1
    del g.node[:]
    g.node.extend(out)
    return [f"onnx2tf has no {op}: {k} node(s) rewritten into {'Cast' if op == 'CastLike' else 'Mul(x, Sigmoid(alpha*x))'}"
            for op, k in done.items()]


def clean_graph(src: str, dst: str) -> list:
    """Write a cleaned copy of ``src`` to ``dst``; notes of what ran."""
    import onnx  # noqa: PLC0415

    model = onnx.load(src)
    notes = []
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        notes.append("ONNX shape inference")
    except Exception:  # noqa: BLE001 - keep the graph as it is
        pass
    try:
        import onnxslim  # noqa: PLC0415

        model = onnxslim.slim(model)
        notes.append("onnxslim")
    except ImportError:
        import onnx_graphsurgeon as gs  # noqa: PLC0415 - a dependency of onnx2tf

        graph = gs.import_onnx(model)
        graph.fold_constants().cleanup().toposort()
        model = gs.export_onnx(graph)
        notes.append("onnx-graphsurgeon constant folding and clean-up (onnxslim is not installed)")
    onnx.save(model, dst)
    return notes


def failed_node(exc: BaseException, model, log: str = "") -> tuple:
    """(node name, op type) onnx2tf failed on, each None when it cannot be told."""
    name = getattr(exc, "onnx_op_name", None)
    if not name:
        found = re.findall(r"(?:onnx_op_name:|Error occurred at ONNX operation:)\s*(\S+)", log)
        name = found[-1] if found else None
    op = None
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("onnx2tf.ops."):
        op = exc.name.rsplit(".", 1)[1]
    if name:
        by_name = {n.name: n for n in model.graph.node}
        candidates = [name, re.sub(r"^wa/", "/", name), "/" + name.lstrip("/")]
        node = next((by_name[c] for c in candidates if c in by_name), None)
        if node is None:  # onnx2tf sanitises names (':' and leading '/'): compare what is left
            key = re.sub(r"[^0-9A-Za-z]", "", re.sub(r"^wa/", "/", name))
            node = next((n for n in model.graph.node if re.sub(r"[^0-9A-Za-z]", "", n.name) == key), None)
        if node is not None:
            name, op = node.name, op or node.op_type
    return name, op


def reason_of(exc: BaseException, limit: int = 160) -> str:
    """The informative last line of an exception (TensorFlow's "in user code:" traces end in it)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("File ", "in user code", "Call arguments", "•"))
             and not ln.endswith(":")] or lines
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


_BOILERPLATE = ("The trace log is below", "input_onnx_file_path", "onnx_op_name", "Read this and deal with it",
                "Alternatively, if the input OP", "If the input OP of ONNX", "Also, for models that include")


def log_reason(log: str, limit: int = 160) -> str | None:
    """onnx2tf's own error line (before its generic advice), from its log; None if there is none."""
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        if "ERROR:" in line:
            text = line.split("ERROR:", 1)[1].strip()
            if text and not text.startswith(_BOILERPLATE):
                return text if len(text) <= limit else text[: limit - 3] + "..."
    return None


def nhwc_inputs(model) -> list:
    """Names of the graph's 4-D inputs whose last dimension is 1 or 3 channels and whose
    second is not (NHWC, as tf2onnx writes Keras and TFLite models): onnx2tf assumes NCHW
    and would turn ``[1, 257, 257, 3]`` into ``[1, 257, 3, 257]`` unless told to keep them."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3):
            out.append(vi.name)
    return out
