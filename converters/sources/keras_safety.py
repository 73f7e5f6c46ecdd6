"""A Keras model config is data: every name it holds must be on an allow-list.

The scan reads the config as plain JSON and resolves every reference
(``module`` + ``class_name`` + ``registered_name``, a tf_keras ``TFOpLambda``
``function``, an activation string) the way the loader that will read the file
resolves it (Keras 3 or tf_keras), without constructing anything. The object a
reference resolves to must be one of the objects named in
:mod:`~edgeship.converters.sources.keras_allowlist`; identity is compared, so
aliases are followed and a split name (``{"module": "keras", "class_name":
"layers.Lambda"}``) is the ``Lambda`` it resolves to. Paths in the config
(vocabularies, assets) must stay inside the model. Anything else raises
:class:`~edgeship.errors.UnsafeModelError` naming the refused thing.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any, Iterator

from edgeship.errors import UnsafeModelError

from . import keras_allowlist as A

UNSAFE_HINT = ("if you trust where the file came from, pass --allow-unsafe (allow_unsafe=True), which skips "
               "these checks and lets Keras/TensorFlow load the file in unsafe mode")
# Strings that switch off Keras' own safety checks.
UNSAFE_SWITCHES = ("enable_unsafe_deserialization", "safe_mode", "unsafe_deserialization")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:(//|/|\\)")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
FLAVORS = ("keras3", "tf_keras")


def path_problem(value: str, *, inside_allowed: bool = False) -> str | None:
    """Why ``value`` may not be used as a file path in a model config, or None.

    Absolute paths, ``..``, ``~`` and URL schemes always leave the model. A
    single-file model (``inside_allowed=False``) has no folder a relative path
    could stay inside, so every path is refused there.
    """
    v = value.strip()
    if _URL.match(v) or v.lower().startswith("file:"):
        return "a URL"
    if v.startswith(("/", "\\", "~")) or _DRIVE.match(v):
        return "an absolute path"
    if ".." in re.split(r"[\\/]+", v):
        return "a path with '..'"
    if "\0" in v:
        return "a path with a NUL byte"
    if not inside_allowed:
        return "a file path (a single-file model has no folder to keep it in; it would be opened relative to "\
               "the working directory)"
    return None


class Resolver:
    """Resolve config references like ``flavor``'s loader does, and say whether they are allowed."""

    def __init__(self, flavor: str) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}")
        self.flavor = flavor
        self.legacy = False
        if flavor == "keras3":
            import keras  # noqa: F401,PLC0415
            from keras.src import api_export  # noqa: PLC0415
            from keras.src.saving import object_registration  # noqa: PLC0415

            self.symbol = api_export.get_symbol_from_name
            self._registered = object_registration.get_registered_object
            self._src_root = "keras."
        else:
            import tf_keras  # noqa: F401,PLC0415
            from tensorflow.python.util import tf_export  # noqa: PLC0415
            from tf_keras.src.saving import object_registration  # noqa: PLC0415

            self.symbol = tf_export.get_symbol_from_name
            self._registered = object_registration.get_registered_object
            self._src_root = "tf_keras."
        self.classes: dict[int, str] = {}
        self.functions: dict[int, str] = {}
        self.tf_functions: dict[int, str] = {}
        self.op_layers: set[int] = set()
        for n in A.LAYERS:
            self._allow(self.classes, f"keras.layers.{n}")
        for cat, names in A.NESTED.items():
            for n in names.split():
                self._allow(self.classes, f"keras.{cat}.{n}" if cat else f"keras.{n}")
        for n in A.ACTIVATIONS:
            self._allow(self.functions, f"keras.activations.{n}")
        for n in A.LOSS_FUNCTIONS:
            for cat in ("losses", "metrics"):
                self._allow(self.functions, f"keras.{cat}.{n}")
        if flavor == "keras3":
            from keras.src.models.functional import Functional  # noqa: PLC0415

            self.classes[id(Functional)] = "keras.Functional"
            for mod, names in A.KERAS_OPS.items():
                m = importlib.import_module(mod)
                for n in names.split():
                    obj = vars(m).get(n)
                    if obj is not None:
                        self.classes[id(obj)] = f"keras.ops {n}"
        else:
            from tf_keras.src.engine.functional import Functional  # noqa: PLC0415
            from tf_keras.src.layers.core import tf_op_layer  # noqa: PLC0415

            self.classes[id(Functional)] = "keras.Functional"
            for n in A.OP_LAYERS:
                obj = getattr(tf_op_layer, n)
                self.classes[id(obj)] = n
                self.op_layers.add(id(obj))
            for n in A.TF_FUNCTIONS:
                self._allow(self.tf_functions, n)
        self.bare = set(A.LAYERS) | set(A.MODELS) | set(A.OP_LAYERS) | {
            n for names in A.NESTED.values() for n in names.split()}
        if flavor == "keras3":
            self.bare -= set(A.OP_LAYERS)

    def _allow(self, table: dict, api_name: str) -> None:
        obj = self.symbol(api_name)
        if obj is not None:
            table[id(obj)] = api_name

    # -- resolution, mirroring keras/tf_keras serialization_lib._retrieve_class_or_fn --------

    def resolve(self, module: Any, name: str, registered_name: Any, obj_type: str) -> tuple[Any, str]:
        """``(object or None, the name it was resolved as)``; imports nothing outside Keras itself."""
        key = name if obj_type == "function" else registered_name
        if isinstance(key, str) and key:
            obj = self._registered(key)
            if obj is not None:
                return obj, f"registered object {key!r}"
        if not isinstance(module, str) or not module:
            return None, name
        if module == "keras" or module.startswith("keras.") or (
                self.flavor == "tf_keras" and (module == "tf_keras" or module.startswith("tf_keras."))):
            api_name = f"{module}.{name}"
            if self.flavor == "tf_keras" and "__internal__.legacy" in api_name:
                api_name = "compat.v1." + api_name
            obj = self.symbol(api_name)
            if obj is not None:
                return obj, api_name
        if obj_type == "function" and module == "builtins":
            for mod in ("activations", "constraints", "initializers", "losses", "metrics", "optimizers",
                        "regularizers"):
                obj = self.symbol(f"keras.{mod}.{name}")
                if obj is not None:
                    return obj, f"keras.{mod}.{name}"
            return None, f"builtins.{name}"
        if self.flavor == "tf_keras" and module.startswith("keras"):
            module = "tf_" + module
        where = f"{module}.{name}"
        if not module.startswith(self._src_root):
            return None, where  # the loader would import an arbitrary module: never allowed
        mod = sys.modules.get(module)
        if mod is None:
            # Every allowed object's module is imported by now; a module that is not is never
            # imported on behalf of a file (its import would be the file's choice of code).
            return None, where
        obj = vars(mod).get(name)
        if obj is None and self.flavor == "tf_keras":
            if isinstance(registered_name, str):
                obj = vars(mod).get(registered_name)
            if obj is None and name.count(".") == 1:
                outer, inner = name.split(".")
                obj = getattr(vars(mod).get(outer), inner, None) if vars(mod).get(outer) is not None else None
        return obj, where

    def tf_function(self, symbol: Any) -> tuple[bool, str]:
        if not isinstance(symbol, str):
            return False, repr(symbol)
        obj = self.symbol(symbol)
        return obj is not None and id(obj) in self.tf_functions, f"tf.{symbol}"


def _layer_of(node: dict, layer: str) -> str:
    cfg = node.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
        return cfg["name"]
    if isinstance(node.get("name"), str):
        return node["name"]
    return layer


def _constant_inputs(inbound: Any) -> list:
    """Values tf_keras feeds into a call as ``_CONSTANT_VALUE`` inbound entries."""
    out = []
    stack = [inbound]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            if len(n) >= 3 and n[0] == "_CONSTANT_VALUE":
                out.append(n[2])
            else:
                stack.extend(n)
        elif isinstance(n, dict):
            stack.extend(n.values())
    return out


def iter_unsafe(config: Any, flavor: str, *, folder_model: bool = False, legacy: bool = False) -> Iterator[str]:
    """Yield a description of every refused entry of a Keras model config (plain JSON).

    ``legacy``: the config is read by the legacy (``.h5``) deserialiser, which ignores
    ``module`` and looks a bare ``class_name`` up in Keras' own tables; it is resolved so.
    """
    res = Resolver(flavor)
    res.legacy = legacy
    stack = [(config, "model", "model", None)]
    while stack:
        node, path, layer, key = stack.pop()
        if isinstance(node, dict):
            yield from _check_dict(res, node, path, layer, folder_model)
            if isinstance(node.get("class_name"), str):
                layer = _layer_of(node, layer)
            for k, v in node.items():
                if isinstance(k, str) and any(s in k for s in UNSAFE_SWITCHES):
                    yield f"{layer!r} ({path}) sets {k!r}, a switch that disables safe loading"
                stack.append((v, f"{path}.{k}", layer, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                stack.append((v, f"{path}[{i}]", layer, key))
        elif isinstance(node, str):
            if any(s in node for s in UNSAFE_SWITCHES):
                yield f"{layer!r} ({path}) mentions {node!r}, a switch that disables safe loading"
            if key in A.ACTIVATION_KEYS and node not in A.ACTIVATIONS:
                yield f"layer {layer!r} ({path}) uses activation {node!r}, which is not on the activation allow-list"
            if key in A.PATH_KEYS:
                why = path_problem(node, inside_allowed=folder_model)
                if why:
                    yield (f"layer {layer!r} ({path}) names {why} as {key}: {node!r}; a model may not read files "
                           "outside itself (build the layer with the vocabulary as a list, so it is stored inside "
                           "the model)")
            elif _URL.match(node.strip()):
                yield f"layer {layer!r} ({path}) holds a URL {node!r}; a model may not fetch anything"


def _check_dict(res: Resolver, node: dict, path: str, layer: str, folder_model: bool) -> Iterator[str]:
    cls = node.get("class_name")
    if "class_name" not in node:
        if node.get("function_type") not in (None, "function"):
            yield f"layer {layer!r} stores a Python {node.get('function_type')} (code in the file)"
        return
    if not isinstance(cls, str):
        yield f"{layer!r} ({path}) has a class_name that is not a string: {cls!r}"
        return
    name = _layer_of(node, layer)
    if cls in A.VALUE_MARKERS:
        return
    module, reg = node.get("module"), node.get("registered_name")
    if reg is not None and (not isinstance(reg, str) or (reg != cls and cls != "function")):
        yield (f"{name!r} ({path}) gives registered_name {reg!r} for class {cls!r}; only Keras built-ins are "
               "allowed, never a registered custom object")
        return
    if cls == "function":
        fname = node.get("config")
        if not isinstance(fname, str):
            yield f"{name!r} ({path}) references a function that is not named by a string"
            return
        if reg is not None and reg != fname:
            yield f"{name!r} ({path}) gives registered_name {reg!r} for function {fname!r}"
            return
        obj, where = res.resolve(module, fname, reg, "function")
        if obj is None or id(obj) not in res.functions:
            yield (f"{name!r} ({path}) references function {where!r} (module {module!r}), which is not on the "
                   "allow-list of Keras activations and losses")
        return
    if res.legacy or (module is None and not any(k in node for k in ("module", "registered_name"))):
        # legacy (.h5 / Keras 2 JSON) form: the loader looks the bare name up in Keras' own tables
        ok = cls in res.bare
        where = cls
        obj = None
        if ok:
            for cat in ("layers", "", "initializers", "regularizers", "constraints", "mixed_precision",
                        "optimizers", "losses", "metrics"):
                obj = res.symbol(f"keras.{cat}.{cls}" if cat else f"keras.{cls}")
                if obj is not None:
                    break
    else:
        if "." in cls and res.flavor == "keras3" and (cls.startswith(".") or cls.endswith(".")):
            yield f"{name!r} ({path}) has a malformed class_name {cls!r}"
            return
        obj, where = res.resolve(module, cls, reg, "class")
        ok = obj is not None and id(obj) in res.classes
    if not ok:
        yield (f"layer {name!r} ({path}) names {where!r} (module {module!r}, class_name {cls!r}), which is not on "
               "edgeship's allow-list of Keras layers, ops and values")
        return
    cfg = node.get("config") if isinstance(node.get("config"), dict) else {}
    is_op_layer = obj is not None and id(obj) in res.op_layers or cls in A.OP_LAYERS
    if is_op_layer:
        ok_fn, where_fn = res.tf_function(cfg.get("function"))
        if not ok_fn:
            yield (f"layer {name!r} ({path}) is a {cls} calling {where_fn}, which is not on the allow-list of "
                   "pure TensorFlow functions")
            return
    for value in _constant_inputs(node.get("inbound_nodes")):
        if not _plain_constant(value):
            yield (f"layer {name!r} ({path}) is fed a constant {str(value)[:60]!r} that is not a plain number, "
                   "list or short name")
    if is_op_layer:
        # tf_keras runs an op layer fed only constants eagerly while rebuilding the model:
        # tf.ones([1e6, 1e6]) would allocate terabytes before anything else happens.
        big = _largest_count(node.get("inbound_nodes"))
        if big > MAX_CONSTANT_ELEMENTS:
            yield (f"layer {name!r} ({path}) is a {cls} given sizes that multiply to {big:.3g} elements "
                   f"(over {MAX_CONSTANT_ELEMENTS:.3g}); refusing to let the file allocate that at load")


MAX_CONSTANT_ELEMENTS = 1 << 28


def _largest_count(node: Any) -> float:
    """The largest product of a list of integers (a shape) or single integer anywhere in ``node``."""
    best = 0.0
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, bool):
            continue
        if isinstance(n, int):  # floats are values (a -1e9 mask), not sizes
            best = max(best, abs(float(n)))
        elif isinstance(n, dict):
            stack.extend(n.values())
        elif isinstance(n, list):
            if n and all(isinstance(v, int) and not isinstance(v, bool) for v in n):
                prod = 1.0
                for v in n:
                    prod *= max(abs(v), 1)
                best = max(best, prod)
            stack.extend(n)
    return best


def _plain_constant(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= 64 and path_problem(value, inside_allowed=True) is None and "/" not in value
    if isinstance(value, list):
        return all(_plain_constant(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_constant(v, depth + 1) for k, v in value.items())
    return False


def check_config(config: Any, origin: str, flavor: str, *, folder_model: bool = False, legacy: bool = False) -> None:
    """Raise :class:`UnsafeModelError` unless everything ``config`` names is on the allow-lists.

    Args:
        config: the model config (plain JSON).
        origin: the file, for the message.
        flavor: ``keras3`` or ``tf_keras``: whose name resolution the loader uses.
        folder_model: the model is a folder, so relative paths inside it are allowed.
        legacy: the legacy ``.h5`` deserialiser reads it (bare class names).

    Raises:
        UnsafeModelError: naming the first refused entry and the opt-in flag.
    """
    problems = list(iter_unsafe(config, flavor, folder_model=folder_model, legacy=legacy))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsafeModelError(f"refusing to load {origin}: {problems[0]}{more}; {UNSAFE_HINT}")
