"""docs/ARCHITECTURE.md documents `convert()` and `load()`: the documented signatures must be the code's.

Each is parsed from the fenced ```python block of the page (names, order, defaults, keyword-only
marker) and compared with ``inspect.signature`` of the real function.
"""

from __future__ import annotations

import ast
import inspect
import os
import re

import pytest

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "ARCHITECTURE.md")


def _documented(call: str):
    text = open(DOC, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    for block in blocks:
        i = block.find(call + "(")
        if i < 0:
            continue
        depth, j = 0, i + len(call)
        while True:
            ch = block[j]
            depth += ch == "("
            depth -= ch == ")"
            j += 1
            if depth == 0:
                break
        src = "def f" + block[i + len(call):j] + ": pass"
        return ast.parse(src).body[0].args
    raise AssertionError(f"{call}( is not documented in a ```python block of docs/ARCHITECTURE.md")


def _pairs(args: ast.arguments):
    pos = [a.arg for a in args.posonlyargs + args.args]
    pos_defaults = [None] * (len(pos) - len(args.defaults)) + [ast.literal_eval(d) for d in args.defaults]
    kw = [(a.arg, ast.literal_eval(d) if d is not None else inspect.Parameter.empty)
          for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return [(n, d if d is not None else inspect.Parameter.empty) for n, d in zip(pos, pos_defaults)], kw


def _code(fn):
    sig = inspect.signature(fn)
    pos, kw = [], []
    for p in sig.parameters.values():
        (kw if p.kind is p.KEYWORD_ONLY else pos).append((p.name, p.default))
    return pos, kw


@pytest.mark.parametrize("call,target", [
    ("edgeship.converters.convert", ("edgeship.converters", "convert")),
    ("edgeship.runtime.load", ("edgeship.runtime", "load")),
])
def test_documented_signature_is_the_code(call, target):
    import importlib

    fn = getattr(importlib.import_module(target[0]), target[1])
    doc_pos, doc_kw = _pairs(_documented(call))
    code_pos, code_kw = _code(fn)
    assert [n for n, _ in doc_pos] == [n for n, _ in code_pos], "positional parameters differ"
    assert [n for n, _ in doc_kw] == [n for n, _ in code_kw], "keyword-only parameters (names or order) differ"
    for (n, d), (_n, c) in zip(doc_kw, code_kw):
        c = c.value if hasattr(c, "value") else c
        c = tuple(c) if isinstance(c, list) else c
        assert d == c, f"{n}: documented default {d!r}, code default {c!r}"
