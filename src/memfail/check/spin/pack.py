"""Bit arrays packed into one ``unsigned`` variable each, for a smaller state vector.

pan stores a ``bit`` array one byte per element: the guest_memfd models keep ten flags per
page (error, detected, recovered, recorded, PG_hwpoison, ...) and eight per VM, so on the
standard configuration those arrays were 144 of the --races vector's 244 bytes. Promela
cannot declare an array of ``unsigned`` fields, so ``pack_bits`` rewrites the model text:
``bit err[NP];`` becomes ``unsigned err : 12;`` (pan then keeps it as a 12-bit field of the
state vector), every read ``err[i]`` becomes ``((err >> (i)) & 1)`` and every assignment
``err[i] = x`` becomes ``err = (err & ~(1 << (i))) | (((x) != 0) << (i))``. An array of more
than ``LIMIT`` elements (a configuration with many pages) and one that ``c_code`` names
(``now.NAME``) stay as they are; an increment of an element is refused (a flag is set, not
counted). ``#define ALIAS NAME`` of a packed array (``pdet`` is ``det`` in the atomic model)
is rewritten with it.

Measured on the standard configuration's --races search of kill-vm (before its realloc moved
from vm2 to vm0; its scratch variables already hidden: runner._allow_hidden): vector 244 ->
124 bytes, the same 8,304,229 states, 50,695,394 transitions and trail depth, about 41 -> 36-40 s of CPU and 3.1 -> 1.9 GB
resident. ``runner.compile_pan`` packs what pan verifies and
``agree`` packs what its simulations run, so the agreement walks check the packed text
against the Python model; tests/test_check_spin.py checks that the packed and the unpacked
text give pan the same figures and trails. The model as rendered (``promela.render``,
``stages.render_races``) stays unpacked and readable; only its copies for pan and spin are
packed.
"""

from __future__ import annotations

import re

LIMIT = 30  # bits of one ``unsigned`` (below the sign bit of pan's int arithmetic)

_TERM = re.compile(r";|\}|::|->|\n|\bfi\b|\bod\b")
_ASSIGN = re.compile(r"\s*=(?!=)\s*")
_STEP = re.compile(r"\s*(\+\+|--)")


class PackError(ValueError):
    """A use of a packed bit array the rewrite cannot express."""


def _closing(text: str, i: int) -> int:
    """The index past the ``]`` matching the ``[`` at ``i``."""
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise PackError(f"unbalanced [ at {text[i:i + 40]!r}")


def _rhs_end(text: str, i: int) -> int:
    """Where the expression assigned from ``i`` on ends: the first ``;``, ``}``, ``::``,
    ``->``, line end, ``fi`` or ``od``, or unmatched closing bracket, outside brackets."""
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c in "([":
            depth += 1
        elif c in ")]":
            if depth == 0:
                return j
            depth -= 1
        elif depth == 0 and _TERM.match(text, j):
            return j
        j += 1
    return j


_SIZE = re.compile(r"[\d\s+*()]+")


def numeric_defines(text: str) -> dict[str, str]:
    """The ``#define NAME <digits>`` lines of a model text (name -> digits)."""
    return dict(re.findall(r"(?m)^#define (\w+) (\d+)\s*$", text))


def array_size(size: str, defines: dict[str, str]) -> int | None:
    """The element count of an array declared ``[size]``: digits, ``+``, ``*`` and
    parentheses over names that ``defines`` (``numeric_defines``) gives; None when it names
    anything else."""
    expr = re.sub(r"[A-Za-z_]\w*", lambda t: defines.get(t.group(0), "?"), size)
    if not _SIZE.fullmatch(expr):
        return None
    return int(eval(expr, {"__builtins__": {}}))  # digits, + * and ( ) only (checked above)


def packable(text: str) -> dict[str, int]:
    """The bit arrays of ``text`` that ``pack_bits`` packs (name -> elements), aliases
    included."""
    defines = numeric_defines(text)
    names: dict[str, int] = {}
    for m in re.finditer(r"\bbit\s+(\w+)\[([^\]]+)\]\s*;", text):
        size = array_size(m.group(2), defines)
        if size is not None and 0 < size <= LIMIT and f"now.{m.group(1)}" not in text:
            names[m.group(1)] = size
    for alias, target in re.findall(r"(?m)^#define (\w+) (\w+)\s*$", text):
        if target in names:
            names[alias] = names[target]
    return names


def pack_bits(text: str) -> str:
    """``text`` with its bit arrays of at most ``LIMIT`` elements packed (module doc)."""
    names = packable(text)
    if not names:
        return text
    alt = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
    # a comment, a string literal (both kept as they are) or a use of a packed array
    token = re.compile(rf'/\*.*?\*/|"(?:\\.|[^"\\])*"|(?<![\w.])({alt})\[', re.S)
    decl = re.compile(rf"\bbit\s+({alt})\[[^\]]+\]\s*;")
    text = decl.sub(lambda m: f"unsigned {m.group(1)} : {names[m.group(1)]};", text)

    def rewrite(s: str) -> str:
        out: list[str] = []
        pos = 0
        at = 0
        while (m := token.search(s, at)) is not None:
            name = m.group(1)
            if name is None:  # a comment or a string
                at = m.end()
                continue
            end = _closing(s, m.end() - 1)
            idx = rewrite(s[m.end():end - 1])
            out.append(s[pos:m.start()])
            a = _ASSIGN.match(s, end)
            if a:
                r0 = a.end()
                r1 = _rhs_end(s, r0)
                raw = s[r0:r1]
                rhs = rewrite(raw.rstrip())
                out.append(f"{name} = ({name} & ~(1 << ({idx}))) | ((({rhs}) != 0) << ({idx}))"
                           + raw[len(raw.rstrip()):])
                pos = at = r1
            else:
                if _STEP.match(s, end):
                    raise PackError(f"{name}[...] is incremented: a packed bit is only set")
                out.append(f"(({name} >> ({idx})) & 1)")
                pos = at = end
        out.append(s[pos:])
        return "".join(out)

    return rewrite(text)
