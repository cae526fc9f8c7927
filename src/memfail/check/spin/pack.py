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
is rewritten with it. Then ``word_ops`` turns the unrolled per-page operations on one folio's
bits (``FRAME_HWP``, ``derive``, ``zap_vm``) into one operation on the word each.

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

    return word_ops(rewrite(text), names)


def _bit(name: str, base: str, k: int) -> str:
    """The packed read of bit ``base + k`` of ``name``, as ``pack_bits`` writes it."""
    return f"(({name} >> ({base} + {k})) & 1)"


# a folio's pages, unrolled (promela._foreach, FRAME_HWP): bit ``(v) * NPG + k`` of a packed
# array, its first page's read or assignment
_FIRST_READ = re.compile(r"\(\((\w+) >> \((\(\w+\) \* NPG) \+ 0\)\) & 1\)")
_FIRST_SET = re.compile(r"(\w+) = \(\1 & ~\(1 << \((\(\w+\) \* NPG) \+ 0\)\)\) \| "
                        r"\(\(\(")


def word_ops(text: str, names: dict[str, int]) -> str:
    """The unrolled per-page operations on one folio's bits of a packed array, each as one
    operation on the word (``text`` packed, ``names`` the packed arrays; ``NPG``, the pages
    of a folio, a ``#define`` of it). With ``M`` the folio's mask ``((2^NPG - 1) << ((v) *
    NPG))``:

    * ``(X[b+0] || ... || X[b+NPG-1])`` (FRAME_HWP) -> ``((X & M) != 0)``, and the same
      with ``&&`` (ALL_PRIV) -> ``((X & M) == M)``;
    * ``X[b+k] = 0`` (or ``1``) for every page (zap_vm) -> ``X = X & ~M`` (``X | M``);
    * ``X[b+k] = Y[b+k] || Z[b+k] || R`` for every page, with ``R`` the same expression at
      every page and not naming ``X`` (derive) -> ``X = (X & ~M) | ((Y | Z) & M) | ((R) -> M :
      0)``: bit k of the new ``X`` reads only bit k of ``Y`` and ``Z``, so the page order of
      the unrolled assignments does not matter, not even when ``Y`` is ``X``.

    Each is the same value on every state, so pan stores the same states (tests/
    test_check_spin.py compares pan of the packed and of the unpacked model, figures and
    trails); the bit-by-bit form is a read-modify-write of a bit field per page, the word form
    one. pan's steps on the standard configuration's --races search of kill-vm: with the
    steps' duplicate ``derive`` gone as well (stages.render_races), 21.0 -> 17.9 s of
    CPU for its bitstate search (bench/bench_check_engines.py)."""
    npg_s = numeric_defines(text).get("NPG")
    if npg_s is None or not names:
        return text
    npg = int(npg_s)
    mask = (1 << npg) - 1

    def m_of(base: str) -> str:
        return f"({mask} << ({base}))"

    out: list[str] = []
    at = 0
    reads = [(m.start(), "r", m) for m in _FIRST_READ.finditer(text)]
    sets = [(m.start(), "s", m) for m in _FIRST_SET.finditer(text)]
    for start, kind, m in sorted(reads + sets, key=lambda x: x[0]):
        if start < at:
            continue
        name, base = m.group(1), m.group(2)
        if name not in names:
            continue
        if kind == "r":
            # an OR or AND chain over the folio's pages, in parentheses
            for op, test in (("||", "!= 0"), ("&&", f"== {m_of(base)}")):
                chain = f" {op} ".join(_bit(name, base, k) for k in range(npg))
                if npg > 1 and start > 0 and text.startswith(chain + ")", start) and \
                        text[start - 1] == "(":
                    out.append(text[at:start - 1])
                    out.append(f"(({name} & {m_of(base)}) {test})")
                    at = start + len(chain) + 1
                    break
            continue
        # assignments to every page of the folio, "; "-separated
        new = _folio_assign(text, start, name, base, npg, m_of(base))
        if new is not None:
            stmt, end = new
            out.append(text[at:start])
            out.append(stmt)
            at = end
    out.append(text[at:])
    return "".join(out)


def _folio_assign(text: str, start: int, name: str, base: str, npg: int,
                  m: str) -> tuple[str, int] | None:
    """The word form of the unrolled assignments to every page of a folio at ``start``, and
    where they end (``word_ops``); None when they are not of a form it rewrites."""
    rhs: list[str] = []
    at = start
    for k in range(npg):
        head = f"{name} = ({name} & ~(1 << ({base} + {k}))) | ((("
        tail = f") != 0) << ({base} + {k}))"
        if not text.startswith(head, at):
            return None
        end = text.find(tail, at + len(head))
        if end < 0:
            return None
        rhs.append(text[at + len(head):end])
        at = end + len(tail)
        if k < npg - 1:
            if not text.startswith("; ", at):
                return None
            at += 2
    if all(r in ("0", "1") for r in rhs) and len(set(rhs)) == 1:
        return (f"{name} = {name} & ~{m}" if rhs[0] == "0" else f"{name} = {name} | {m}"), at
    # Y[b+k] || Z[b+k] || ... || R
    terms = [r.split(" || ") for r in rhs]
    if len({len(t) for t in terms}) != 1:
        return None
    words: list[str] = []
    rest: list[str] = []
    for j in range(len(terms[0])):
        col = [t[j] for t in terms]
        w = re.fullmatch(r"\(\((\w+) >> \(" + re.escape(base) + r" \+ 0\)\) & 1\)", col[0])
        if w and all(col[k] == _bit(w.group(1), base, k) for k in range(npg)):
            words.append(w.group(1))
        elif len(set(col)) == 1 and not re.search(rf"\b{re.escape(name)}\b", col[0]) and \
                f"{base} +" not in col[0]:
            rest.append(col[0])
        else:
            return None
    if not words:
        return None
    value = f"(({' | '.join(words)}) & {m})"
    if rest:
        value += f" | (({' || '.join(rest)}) -> {m} : 0)"
    return f"{name} = ({name} & ~{m}) | {value}", at
