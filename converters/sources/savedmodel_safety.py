"""A SavedModel is checked op by op against an allow-list before TensorFlow loads it.

``saved_model.pb`` is parsed with TensorFlow's protobuf classes only (no graph
is imported, no function is traced or run). Every node of every meta graph,
of every function in the function library (the bodies of ``tf.function``\\ s,
resource initializers, ``__saved_model_init_op``) must be an op type on
:data:`ALLOWED_OPS`: the ops TFLite's converter turns into builtin kernels, plus
the variable, resource, control-flow and lookup-table ops a real model needs.
Ops that print to files, read or write files, save checkpoints, write summaries,
save or load datasets or call Python are not on it.

The one exception is the checkpoint code TensorFlow writes into every
SavedModel: the functions named by the meta graph's ``saver_def`` (and only
those, if no other graph node or function calls them) may also hold
:data:`SAVER_OPS` (``SaveV2``, ``RestoreV2``, ``MergeV2Checkpoints`` ...), whose
path operands must come from the function's arguments, never from a constant.
TensorFlow's loader restores variables from ``variables/`` with its own ops and
never runs these functions while loading.

Assets listed in the SavedModel must be plain files inside ``assets/``.
"""

from __future__ import annotations

import os

from edgeship.errors import ModelFormatError, UnsafeModelError

from .keras_safety import UNSAFE_HINT, path_problem

ALLOWED_OPS = frozenset("""
Const Placeholder PlaceholderWithDefault Identity IdentityN NoOp StopGradient PreventGradient Snapshot EnsureShape
CheckNumerics CheckNumericsV2 Assert
Abs Add AddV2 AddN Sub Mul Div RealDiv DivNoNan MulNoNan FloorDiv FloorMod Mod TruncateDiv TruncateMod Pow Sqrt
Rsqrt Square SquaredDifference Exp Expm1 Log Log1p Neg Sign Sin Cos Tan Atan Atan2 Asin Acos Tanh Sigmoid Relu
Relu6 Elu Selu LeakyRelu Gelu Erf Erfc Softplus Softsign Softmax LogSoftmax Maximum Minimum Round Rint Floor Ceil
Reciprocal Inv ClipByValue IsFinite IsNan IsInf Select SelectV2 Cast Equal NotEqual Less LessEqual Greater
GreaterEqual LogicalAnd LogicalOr LogicalNot BitwiseAnd BitwiseOr BitwiseXor Invert LeftShift RightShift
ZerosLike OnesLike Fill Range LinSpace Cumsum Cumprod
Sum Mean Max Min Prod Any All ArgMax ArgMin EuclideanNorm
Conv Conv2D Conv3D Conv2DBackpropInput Conv3DBackpropInputV2 DepthwiseConv2dNative MatMul BatchMatMul BatchMatMulV2
BatchMatMulV3 Einsum BiasAdd FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 MaxPool MaxPoolV2 MaxPool3D AvgPool
AvgPool3D LRN TopKV2 DepthToSpace SpaceToDepth SpaceToBatchND BatchToSpaceND ResizeBilinear ResizeNearestNeighbor
ResizeBicubic CropAndResize MirrorPad Pad PadV2 L2Loss
Reshape Squeeze ExpandDims Transpose ConjugateTranspose ConcatV2 Concat Pack Unpack Split SplitV Slice StridedSlice
Tile Gather GatherV2 GatherNd ResourceGather ScatterNd TensorScatterUpdate TensorScatterAdd Shape ShapeN Size Rank
BroadcastTo BroadcastArgs BroadcastGradientArgs Where ReverseV2 ReverseSequence OneHot MatrixDiag MatrixDiagV2
MatrixDiagV3 MatrixDiagPartV3 MatrixSetDiag MatrixSetDiagV3 MatrixBandPart Unique Bucketize Roll SegmentSum
UnsortedSegmentSum UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd
FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel FakeQuantWithMinMaxArgs QuantizeAndDequantizeV2
QuantizeAndDequantizeV3 QuantizeAndDequantizeV4
RandomUniform RandomStandardNormal StatelessRandomUniformV2 StatelessRandomNormalV2 StatelessRandomGetKeyCounter
StatelessRandomUniform StatelessRandomNormal
VarHandleOp ReadVariableOp AssignVariableOp AssignAddVariableOp AssignSubVariableOp VarIsInitializedOp
DestroyResourceOp DisableCopyOnRead VariableV2 Variable Assign
StatefulPartitionedCall PartitionedCall If StatelessIf While StatelessWhile Case StatelessCase Switch Merge Enter
Exit NextIteration LoopCond ControlTrigger
TensorListReserve TensorListSetItem TensorListGetItem TensorListStack TensorListFromTensor TensorListLength
TensorListElementShape TensorListPushBack TensorListPopBack TensorListResize TensorListConcatV2
HashTableV2 MutableHashTableV2 LookupTableFindV2 LookupTableImportV2 LookupTableSizeV2 LookupTableInsertV2
Bitcast InvertPermutation ConcatOffset DynamicStitch ParallelDynamicStitch EmptyTensorList TensorListSplit
TensorListGather TensorListScatterIntoExistingList
CudnnRNN CudnnRNNV2 CudnnRNNV3 CudnnRNNBackprop CudnnRNNBackpropV2 CudnnRNNBackpropV3 CudnnRNNParamsSize
CudnnRNNParamsToCanonical CudnnRNNParamsToCanonicalV2 CudnnRNNCanonicalToParams CudnnRNNCanonicalToParamsV2
RngReadAndSkip RngSkip StatelessRandomUniformFullIntV2 StatelessRandomUniformIntV2 StatelessTruncatedNormalV2
StatelessRandomUniformInt StatelessTruncatedNormal StatefulUniformFullInt StatefulUniform StatefulUniformInt
StatefulStandardNormalV2 StatefulTruncatedNormal TruncatedNormal RandomUniformInt RandomShuffle
ReluGrad Relu6Grad EluGrad SeluGrad LeakyReluGrad SigmoidGrad TanhGrad SoftplusGrad SoftsignGrad RsqrtGrad
SqrtGrad ReciprocalGrad BiasAddGrad Conv2DBackpropFilter Conv3DBackpropFilterV2 DepthwiseConv2dNativeBackpropInput
DepthwiseConv2dNativeBackpropFilter MaxPoolGrad MaxPoolGradV2 MaxPool3DGrad AvgPoolGrad AvgPool3DGrad
FusedBatchNormGrad FusedBatchNormGradV2 FusedBatchNormGradV3 ResizeBilinearGrad ResizeNearestNeighborGrad
SoftmaxCrossEntropyWithLogits SparseSoftmaxCrossEntropyWithLogits StridedSliceGrad LRNGrad MirrorPadGrad
""".split())

# Named first in an error: ops known to touch files, print or run code.
FILE_OPS = frozenset({
    "PrintV2", "Print", "WriteFile", "ReadFile", "MatchingFiles", "SaveV2", "RestoreV2", "MergeV2Checkpoints",
    "Save", "SaveSlices", "Restore", "RestoreSlice", "InitializeTableFromTextFileV2", "InitializeTableFromTextFile",
    "CreateSummaryFileWriter", "WriteScalarSummary", "WriteSummary", "WriteImageSummary", "WriteHistogramSummary",
    "WriteAudioSummary", "WriteRawProtoSummary", "SaveDataset", "SaveDatasetV2", "LoadDataset", "PyFunc",
    "PyFuncStateless", "EagerPyFunc", "ImmutableConst", "DeleteFile", "WholeFileReaderV2", "TFRecordDataset",
    "TextLineDataset", "FixedLengthRecordDataset", "DebugIdentityV2", "DebugIdentityV3",
})
# Only in the functions the saver_def names (TensorFlow's own checkpoint code).
SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin",
                       "StaticRegexFullMatch", "Select", "Pack"})
# Classes TensorFlow revives from an object's ``registered_name`` (its own, the ones real models hold).
REGISTERED_CLASSES = frozenset({"tf.StaticHashTable", "tf.TrackableConstant"})
# Inputs of these saver ops that name files: operand index -> meaning.
_PATH_OPERANDS = {"SaveV2": (0,), "RestoreV2": (0,), "MergeV2Checkpoints": (0, 1), "ShardedFilename": (0,)}


def _func_refs(node) -> list:
    """Names of the functions a NodeDef calls through its attributes (``f``, ``body``, ``then_branch`` ...)."""
    out = []
    for attr in node.attr.values():
        if attr.HasField("func"):
            out.append(attr.func.name)
        if attr.HasField("list"):
            out.extend(f.name for f in attr.list.func)
    return out


def _saver_functions(mg, functions: dict) -> set:
    sd = mg.saver_def
    roots = {t.split(":")[0].lstrip("^") for t in (sd.save_tensor_name, sd.restore_op_name) if t}
    root_fns: set = set()
    callers: dict = {}
    for n in mg.graph_def.node:
        for ref in _func_refs(n):
            callers.setdefault(ref, set()).add(("graph", n.name))
            if n.name in roots:
                root_fns.add(ref)
    for fname, fdef in functions.items():
        for n in fdef.node_def:
            for ref in _func_refs(n):
                callers.setdefault(ref, set()).add((fname, n.name))
    saver = set()
    todo = list(root_fns)
    while todo:
        f = todo.pop()
        if f in saver or f not in functions:
            continue
        saver.add(f)
        for n in functions[f].node_def:
            todo.extend(_func_refs(n))
    # a saver function that anything else calls is held to the normal list
    for f in list(saver):
        for caller, node in callers.get(f, ()):
            if caller == "graph" and node not in roots or caller != "graph" and caller not in saver:
                saver.discard(f)
    return saver


def _check_saver_function(fdef, path: str) -> None:
    nodes = {n.name: n for n in fdef.node_def}
    for n in fdef.node_def:
        if n.op == "Const" and n.attr["dtype"].type == 7:  # DT_STRING
            for s in n.attr["value"].tensor.string_val:
                text = s.decode("utf-8", "replace")
                why = path_problem(text, inside_allowed=True)
                if why:
                    raise UnsafeModelError(
                        f"refusing to load SavedModel {path}: constant {n.name!r} in checkpoint function "
                        f"{fdef.signature.name!r} is {why} ({text[:80]!r}); {UNSAFE_HINT}")
        for i in _PATH_OPERANDS.get(n.op, ()):
            if i >= len(n.input):
                continue
            src = n.input[i].split(":")[0]
            seen = 0
            while src in nodes and nodes[src].op == "Identity" and nodes[src].input and seen < 64:
                src, seen = nodes[src].input[0].split(":")[0], seen + 1
            if src in nodes and nodes[src].op == "Const":
                raise UnsafeModelError(
                    f"refusing to load SavedModel {path}: {n.op} node {n.name!r} in checkpoint function "
                    f"{fdef.signature.name!r} takes its file path from constant {src!r}, not from the "
                    f"checkpoint path TensorFlow passes in; {UNSAFE_HINT}")


def check_saved_model(path: str) -> None:
    """Refuse a SavedModel holding an op that is not on :data:`ALLOWED_OPS`, naming the op and where it is.

    Raises:
        ModelFormatError: the protobuf cannot be parsed.
        UnsafeModelError: an op outside the allow-list (graph, function library or initializer), a
            checkpoint op outside TensorFlow's checkpoint functions, or an asset outside ``assets/``.
    """
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    _check_tree(path)  # first: a FIFO named saved_model.pb must not block the read below
    pb = os.path.join(path, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as fh:
            sm.ParseFromString(fh.read())
    except Exception as exc:  # protobuf raises DecodeError (not a stable import path)
        raise ModelFormatError(f"{pb} is not a valid SavedModel protobuf: {exc}") from None
    for mg in sm.meta_graphs:
        functions = {f.signature.name: f for f in mg.graph_def.library.function}
        saver = _saver_functions(mg, functions)
        places = [("the graph", mg.graph_def.node, False)]
        places += [(f"function {name!r}", f.node_def, name in saver) for name, f in functions.items()]
        refused: dict = {}
        for where, nodes, is_saver in places:
            for n in nodes:
                if n.op in ALLOWED_OPS or (is_saver and n.op in SAVER_OPS):
                    continue
                role = " (an initializer)" if "init" in where.lower() else ""
                refused.setdefault(n.op, f"node {n.name!r} in {where}{role}")
        if refused:
            first = sorted(refused, key=lambda op: (op not in FILE_OPS, op))
            listed = "; ".join(f"op {op} ({refused[op]})" for op in first[:4])
            more = f" and {len(first) - 4} more op types" if len(first) > 4 else ""
            raise UnsafeModelError(
                f"refusing to load SavedModel {path}: {listed}{more} not on edgeship's SavedModel op allow-list "
                f"(tensor math, variables, control flow); such ops can read, write or print to files or run code "
                f"while loading; {UNSAFE_HINT}")
        for name in saver:
            _check_saver_function(functions[name], path)
        _check_assets(mg, path)
        for i, obj in enumerate(mg.object_graph_def.nodes):
            if obj.registered_name and obj.registered_name not in REGISTERED_CLASSES:
                raise UnsafeModelError(
                    f"refusing to load SavedModel {path}: object {i} names registered class "
                    f"{obj.registered_name!r}, which is not on the allow-list {sorted(REGISTERED_CLASSES)}; "
                    f"{UNSAFE_HINT}")


def _check_tree(path: str) -> None:
    """Every entry of the SavedModel folder is a regular file or folder that stays inside it."""
    from edgeship.safeio import tree_files  # noqa: PLC0415

    try:
        tree_files(path, error=UnsafeModelError, what="SavedModel")
    except UnsafeModelError as exc:
        raise UnsafeModelError(f"refusing to load {exc}; a SavedModel folder must hold its own regular files "
                               "(copy them in instead of linking), and --allow-unsafe does not change that") from None


def _check_assets(mg, path: str) -> None:
    from tensorflow.core.protobuf import meta_graph_pb2  # noqa: PLC0415

    files = [a.filename for a in mg.asset_file_def]
    coll = mg.collection_def.get("saved_model_assets")
    if coll is not None:
        for raw in coll.any_list.value:
            a = meta_graph_pb2.AssetFileDef()
            if raw.Unpack(a):
                files.append(a.filename)
    root = os.path.realpath(os.path.join(path, "assets"))
    for name in files:
        why = path_problem(name, inside_allowed=True)
        full = os.path.realpath(os.path.join(root, name))
        if why is None and not (full.startswith(root + os.sep) or full == root):
            why = "a path that resolves outside the SavedModel's assets/ folder"
        if why is None and os.path.lexists(os.path.join(root, name)) and not os.path.isfile(full):
            why = "not a regular file"
        if why:
            raise UnsafeModelError(
                f"refusing to load SavedModel {path}: asset {name!r} is {why}; {UNSAFE_HINT}")
