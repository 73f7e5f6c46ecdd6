"""The README's CLI examples still parse with the real ``edgeship`` parser, and every flag it names exists.

The fenced ```sh blocks and the inline `edgeship ...` spans of README.md are extracted
(backslash continuations joined, ``# comments`` dropped, ``[--opt]`` expanded to both
forms) and each line goes through ``edgeship.cli.main``; the run stops as soon as the
top-level parser returned (see :func:`check_parses`), so nothing is converted or trained,
and a removed or renamed flag, a choice no longer accepted or a missing required argument
fails the test. This file is fast."""

from __future__ import annotations

import argparse
import os
import re
import shlex

import pytest

from test_cli_claims_common import cli, cli_capture

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
COMMANDS = ("convert", "inspect", "run", "eval", "bench", "demo", "devices", "report", "stream", "sweep")


def _readme() -> str:
    with open(README, encoding="utf-8") as fh:
        return fh.read()


def _expand_optional(line: str) -> list[str]:
    """``a [--json] b`` -> ``["a b", "a --json b"]`` (each bracketed option left out and put in)."""
    m = re.search(r"\[(--[^\]]+)\]", line)
    if not m:
        return [re.sub(r"\s+", " ", line).strip()]
    without = line[: m.start()] + line[m.end():]
    with_ = line[: m.start()] + m.group(1) + line[m.end():]
    return _expand_optional(without) + _expand_optional(with_)


def fenced_commands(text: str) -> list[str]:
    """``edgeship ...`` lines of the fenced ```sh blocks, continuations joined, comments dropped."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("edgeship "):
                out.extend(_expand_optional(line))
    return out


def inline_commands(text: str) -> list[str]:
    """Inline `edgeship CMD ARGS...` spans of the prose (a span may wrap onto the next line).

    A bare `edgeship CMD` names the command and is returned as it is.
    """
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # fenced blocks: fenced_commands (sh) or program output
    spans = re.findall(r"`(edgeship [^`]+)`", prose)
    out = []
    for s in spans:
        out.extend(_expand_optional(" ".join(s.split())))
    return out


class _Parsed(BaseException):
    """Raised right after the top-level parser returned: the line parsed; the command never runs.

    A BaseException, so that the CLI's ``except Exception`` (internal errors) lets it through.
    """


def check_parses(line: str) -> tuple[bool, str]:
    """(parsed, why): ``line`` through ``edgeship.cli.main`` with the real parser, stopped once it parsed.

    ``argparse.ArgumentParser.parse_known_args`` of the top-level ``edgeship`` parser is wrapped:
    when it returns, the arguments it could not place (``extra``) and the command are checked and
    the run stops there, so nothing is converted, trained or probed. A line that does not parse
    never gets there (argparse's ``error()``: a usage message or the CLI's one-line error, exit 2).
    """
    argv = shlex.split(line)
    assert argv[0] == "edgeship", line
    original = argparse.ArgumentParser.parse_known_args

    def spy(self, args=None, namespace=None):
        ns, extra = original(self, args, namespace)
        if self.prog == "edgeship":
            raise _Parsed(ns, extra)
        return ns, extra

    mp = pytest.MonkeyPatch()
    mp.setattr(argparse.ArgumentParser, "parse_known_args", spy)
    try:
        rc = cli(*argv[1:])
    except _Parsed as done:
        ns, extra = done.args
        if extra:
            return False, f"unrecognized arguments: {extra}"
        if getattr(ns, "command", None) != argv[1]:
            return False, f"parsed as command {getattr(ns, 'command', None)!r}, not {argv[1]!r}"
        return True, ""
    finally:
        mp.undo()
    return False, f"the parser refused it (exit {rc})"


def _is_mention(line: str) -> bool:
    return len(line.split()) == 2  # `edgeship stream`: the name of a command, not an example


FENCED = fenced_commands(_readme())
INLINE = [c for c in inline_commands(_readme()) if not _is_mention(c)]


def test_the_extraction_finds_the_examples():
    # the README shows every command in its CLI block; an extraction that finds nothing must fail
    shown = {c.split()[1] for c in FENCED}
    assert shown >= {"convert", "inspect", "run", "eval", "bench", "demo", "devices", "report", "stream"}, shown
    assert len(FENCED) >= 15
    joined = [c for c in FENCED if "--preprocess size=16x16,color=gray,scale=1/16" in c]
    assert len(joined) == 1 and "--max-drop 1" in joined[0]  # the continuation was joined
    assert "edgeship run out/digits img1.png img2.png --top-k 3 --json" in FENCED  # [--json] expanded
    assert "edgeship run out/digits img1.png img2.png --top-k 3" in FENCED
    assert any("--device edgetpu:usb:0 --strict" in c for c in INLINE)  # a span wrapped onto two lines


@pytest.mark.parametrize("line", FENCED, ids=FENCED)
def test_fenced_readme_example_parses(line):
    ok, why = check_parses(line)
    assert ok, f"README example no longer parses: {line}\n{why}"


@pytest.mark.parametrize("line", INLINE, ids=INLINE)
def test_inline_readme_example_parses(line):
    ok, why = check_parses(line)
    assert ok, f"README example no longer parses: {line}\n{why}"


@pytest.mark.parametrize("broken", [
    "edgeship convert model.keras -o out/digits --calib images/ --no-such-flag 1",  # a removed flag
    "edgeship convert model.keras -o out/digits --calib images/ --precision int4",  # a choice not accepted
    "edgeship bench --all",  # a missing required argument
    "edgeship run out/digits",  # run needs an INPUT
    "edgeship stream out/detector",  # stream needs --source
    "edgeship frobnicate out/digits",
])
def test_the_check_fails_on_a_line_that_does_not_parse(broken):
    ok, _ = check_parses(broken)
    assert not ok


def test_every_command_in_the_readme_exists(capfd):
    for c in {c.split()[1] for c in FENCED + inline_commands(_readme())}:
        rc, out, _ = cli_capture(capfd, c, "--help")
        assert rc == 0 and out.startswith("usage: edgeship " + c), c


def _options_of_every_command(capfd) -> set:
    opts = set()
    for c in COMMANDS:
        rc, out, _ = cli_capture(capfd, c, "--help")
        assert rc == 0, c
        # the option list only ("  -o OUTPUT, --output OUTPUT"), not flags mentioned in help texts
        for m in re.finditer(r"^  ((?:-\w[^,\n]*, )?--[a-z][a-z0-9-]*)", out, flags=re.M):
            opts |= set(re.findall(r"--[a-z][a-z0-9-]*", m.group(1)))
    return opts


def test_every_flag_the_readme_names_exists(capfd):
    """Any ``--flag`` anywhere in the README (prose, tables, examples) is an option of some command."""
    text = re.sub(r"`(python|make|ray|pip|apt-get) [^`]*`", "", _readme())  # flags of scripts, Ray's and pip's CLIs
    text = re.sub(r"^(python|make|ray|pip|apt-get) .*$", "", text, flags=re.M)  # the same in fenced blocks
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    assert {"--max-drop", "--auto-fallback", "--prune-structure", "--allow-legacy-h5", "--delegate"} <= named
    known = _options_of_every_command(capfd)
    assert "--no-such-flag" not in known
    missing = sorted(named - known)
    assert not missing, f"README names flags that no command has: {missing}"


def _choices(text: str, flag: str) -> list[str]:
    m = re.search(re.escape(flag) + r" ([a-z0-9|,]+)`", text)
    assert m, flag
    return re.split(r"[|,]", m.group(1))


@pytest.mark.parametrize("flag, expected", [
    ("--precision", {"fp32", "fp16", "dynamic", "int8", "int16x8"}),
    ("--io", {"int8", "uint8", "float"}),
    ("--target", {"cpu", "edgetpu", "gpu", "jetson", "intel"}),
])
def test_every_choice_the_readme_lists_is_accepted(flag, expected):
    values = _choices(_readme(), flag)
    assert set(values) == expected  # what the README lists (so a shortened list is seen too)
    for v in values:
        line = f"edgeship convert model.keras -o out/x --calib images/ {flag} {v}"
        ok, why = check_parses(line)
        assert ok, f"{line}: {why}"


def test_readme_prune_structures_are_accepted():
    text = _readme()
    assert "`--prune-structure 2:4` or `1x4`" in text
    for v in ("2:4", "1x4", "elementwise"):
        ok, why = check_parses(f"edgeship convert model.keras -o out/x --calib images/ --prune 0.5 "
                                                f"--prune-structure {v}")
        assert ok, why


# ------------------------------------------------------------------------------- PreprocessSpec.parse


def _readme_preprocess() -> str:
    found = re.findall(r"--preprocess (\S+)", _readme())
    assert found, "the README shows no --preprocess example"
    return found[0]


def test_preprocess_spec_parses_the_readme_example():
    from edgeship.preprocess import ColorOrder, PreprocessSpec

    text = _readme_preprocess()
    assert text == "size=16x16,color=gray,scale=1/16"
    spec = PreprocessSpec.parse(text)
    assert spec.size == (16, 16)
    assert spec.color is ColorOrder.GRAY
    assert spec.scale == 1 / 16
    assert tuple(spec.mean) == (0.0,) and tuple(spec.std) == (1.0,)
    assert spec.to_dict()["size"] == [16, 16] and spec.to_dict()["color"] == "gray"


def test_preprocess_spec_parses_the_help_example(capfd, monkeypatch):
    from edgeship.preprocess import ColorOrder, PreprocessSpec, ResizeMode

    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps help at the terminal width, even inside 1/255
    rc, out, _ = cli_capture(capfd, "convert", "--help")
    assert rc == 0
    m = re.search(r"e\.g\.\s+(size=\S+)", out)
    assert m, out
    spec = PreprocessSpec.parse(m.group(1))
    assert m.group(1) == "size=224x224,resize=letterbox,color=rgb,scale=1/255,mean=0.5,std=0.5"
    assert spec.size == (224, 224) and spec.resize is ResizeMode.LETTERBOX and spec.color is ColorOrder.RGB
    assert spec.scale == pytest.approx(1 / 255)
    assert tuple(spec.mean) == (0.5,) and tuple(spec.std) == (0.5,)


def test_preprocess_spec_per_channel_and_errors():
    from edgeship.errors import InputError
    from edgeship.preprocess import PreprocessSpec

    spec = PreprocessSpec.parse("size=8x4,color=bgr,mean=0.1:0.2:0.3,std=2:3:4,layout=nchw")
    assert spec.size == (8, 4) and spec.layout.value == "NCHW"
    assert tuple(spec.mean) == (0.1, 0.2, 0.3) and tuple(spec.std) == (2.0, 3.0, 4.0)
    assert tuple(PreprocessSpec.parse("size=8x8,mean=127.5,std=127.5,scale=1").mean)[0] == 127.5  # explicit scale
    for bad in ("size=16", "size=16x16,colour=gray", "size=16x16,scale=1/0", "scale=1/16", "size16x16",
                "size=16x16,mean=127.5,std=127.5"):  # 0..255 mean with the default scale 1/255
        with pytest.raises(InputError):
            PreprocessSpec.parse(bad)
