"""``choice(Enum, value, what)``: a user's value as a member of one of the :mod:`edgeship.vocab` enums.

The Python API's spelling of :func:`edgeship.vocab.parse`: the message names the
keyword argument as it was written (``precision='int4' is not supported;
expected one of 'fp32', ...``).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from edgeship.errors import InputError

E = TypeVar("E", bound=Enum)


def choice(enum: type[E], value, what: str) -> E:
    """``value`` (a member, another enum's member with the same value, or its string) as a member of ``enum``.

    Raises:
        InputError: not one of ``enum``'s values; the message lists them.
    """
    if isinstance(value, enum):
        return value
    try:
        return enum(value.value if isinstance(value, Enum) else value)
    except (ValueError, TypeError):
        accepted = ", ".join(repr(e.value) for e in enum)
        raise InputError(f"{what}={value!r} is not supported; expected one of {accepted}") from None
