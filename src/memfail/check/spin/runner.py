"""Run SPIN on a rendered model: ``spin -a``, ``gcc`` for ``pan``, the search, the trails.

Per policy: one pan, compiled once, and one search for every selected property not yet decided
(``MF_CHECK=mask`` in its environment: the
monitor asserts that none of them is violated). An assertion violation leaves a trail; its
replay (``pan -r``) prints the labels taken (``MF_STEP k``) and the observation
after each (``MF_OBS ...``), so the properties violated at its end become FAIL with that path,
and the search runs again for the rest. A search that ends without error decides the rest:
PASS when it was exhaustive, PARTIAL(bitstate) when it was a bitstate search (a hash
collision may have hidden a state; the estimate is printed).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memfail.check.explorer import FAIL, PARTIAL, PASS, Coverage, Result, Verdict
from memfail.check.spin.pack import pack_bits
from memfail.check.spin.promela import Rendered, render
from memfail.check.spin.stages import render_races
from memfail.inputs import InputError


class SpinMissing(RuntimeError):
    """spin or a C compiler is not installed."""


@dataclass
class PanStats:
    states: int = 0
    matched: int = 0
    transitions: int = 0
    depth: int = 0
    errors: int = 0
    vector: int = 0
    hash_factor: float | None = None
    complete: bool = True
    stopped: str | None = None   # why pan did not finish: "memory", "killed" (see run_pan)
    elapsed: float = 0.0
    output: str = ""


BITSTATE_LOG2 = 28   # -w28: 2^28 bits of bitstate hash array
BITSTATE_K = 3       # pan's default number of hash functions (-k3)


class SpinResult(Result):
    """A Result whose collision figure is SPIN's: 0 for an exhaustive search (pan stores
    every state vector whole), and for a bitstate search the probability that a new state is
    wrongly taken as visited, (1 - e^(-k n / m))^k for n states in m bits with k hashes."""

    bitstate: bool = False
    search_seconds: float = 0.0  # pan's searches alone (``elapsed`` has the compile too)

    @property
    def states_per_second(self) -> float:
        """States per second of pan's search (the largest search's states over the time of
        all of them), not of the compile and the replays that ``elapsed`` also counts."""
        return self.states / self.search_seconds if self.search_seconds > 0 else 0.0

    @property
    def collision_probability(self) -> float:
        if not self.bitstate:
            return 0.0
        import math

        m = float(1 << BITSTATE_LOG2)
        return float((1.0 - math.exp(-BITSTATE_K * self.states / m)) ** BITSTATE_K)


@dataclass
class SpinRun:
    result: Result
    runs: list[PanStats] = field(default_factory=list)
    promela: str = ""


def tools() -> tuple[str, str]:
    spin, cc = shutil.which("spin"), shutil.which("gcc") or shutil.which("cc")
    if spin is None or cc is None:
        raise SpinMissing("the SPIN engine needs `spin` and a C compiler (Debian: apt-get "
                          "install spin gcc)")
    return spin, cc


def parse_pan(out: str) -> PanStats:
    """The figures of pan's report."""
    st = PanStats(output=out)

    def num(pattern: str) -> int:
        m = re.search(pattern, out)
        return int(float(m.group(1))) if m else 0

    st.states = num(r"([\d.e+]+) states, stored")
    # a step that changed nothing is one more match, and transition, than pan counts
    # (_skip_stutter): the figures are those of the search without that patch
    stutter = num(rf"(?m)^{STUTTER} (\d+)$")
    st.matched = num(r"([\d.e+]+) states, matched") + stutter
    st.transitions = num(r"([\d.e+]+) transitions \(") + stutter
    st.depth = num(r"depth reached (\d+)")
    st.errors = num(r"errors: (\d+)")
    st.vector = num(r"State-vector (\d+) byte")
    m = re.search(r"hash factor: ([\d.e+]+)", out)
    st.hash_factor = float(m.group(1)) if m else None
    # pan says "search was not completed" or warns of a truncated search when it stops early
    st.complete = "not completed" not in out and "Search not completed" not in out and \
        "max search depth too small" not in out
    if "pan: out of memory" in out:
        st.complete, st.stopped = False, "memory"
    elif "states, stored" not in out:  # pan ended without its report
        st.complete, st.stopped = False, "killed"
    return st


# spin -a's refusal of a d_step with more statements than pangen's MAXDSTEP (2048 in SPIN
# 6.5): every step of the model is one d_step, whose statements grow with the pages of a huge
# page (2^pmd_order) and the VMs; the model keeps each kill's expansion to one per access
# (promela.sg_end, kill_mark), which leaves agree-two.yaml at 8-page folios with --races
# inside it
DSTEP_TOO_LONG = ("the SPIN engine cannot compile this configuration: one step of its Promela "
                  "model has more statements than SPIN allows in one d_step (`spin -a`: "
                  "\"d_step sequence too long\"); use fewer pages per huge page (geometry "
                  "pmd_order, or pud_order for 1G), fewer VMs, or --engine python")


def _run(cmd: list[str], cwd: Path, timeout: float | None = None,
         env: dict[str, str] | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       check=False, env=None if env is None else {**os.environ, **env})
    if p.returncode != 0 and cmd[0].endswith(("spin", "gcc", "cc")) and "-t" not in cmd:
        if "d_step sequence too long" in p.stdout + p.stderr:
            raise RuntimeError(DSTEP_TOO_LONG)
        raise RuntimeError(f"{' '.join(cmd[:2])} failed: {(p.stderr or p.stdout)[-800:]}")
    return p.stdout + p.stderr


# ``#define name N`` for a knob (knob_defines): its constants K_NAME_... come first.
_KNOB = re.compile(r"^#define ([a-z][a-z0-9_]*) (\d+)$", re.M)
_INIT = "d_step { init_state();"
KNOBS_FILE = "knobs.json"


def runtime_knobs(text: str) -> tuple[str, dict[str, int]]:
    """The model with its knobs read at run time, and their values.

    The Promela of one configuration differs between policies only in the knob ``#define``
    lines, so each knob becomes a global ``byte`` the checker sets before ``init_state()``:
    ``pan`` from ``MF_K_<knob>`` in its environment (``c_code``, which only pan runs), a
    simulation (``spin -t``, ``spin -T``) from ``-DKV_<knob>=<value>``. One pan then serves
    every policy of the configuration; the knobs are constant along a search, declared
    ``hidden`` (outside the state vector: ``_allow_hidden``)."""
    knobs = {m.group(1): int(m.group(2)) for m in _KNOB.finditer(text)
             if f"#define K_{m.group(1).upper()}_" in text}
    if not knobs or _INIT not in text:
        return text, {}

    def decl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in knobs:
            return m.group(0)
        return f"#ifndef KV_{name}\n#define KV_{name} 0\n#endif\nhidden byte {name};"

    text = _KNOB.sub(decl, text)
    env = " ".join(f'if ((e = getenv("MF_K_{n}"))) {n} = atoi(e);' for n in knobs)
    sets = " ".join(f"{n} = KV_{n};" for n in knobs)
    text = text.replace(_INIT, f"d_step {{ {sets} c_code {{ char *e; {env} }}; init_state();", 1)
    return text, knobs


@functools.cache
def _toolchain(spin: str, cc: str) -> str:
    """What a compiled pan depends on besides the model's text and the compiler's flags:
    the versions of spin and of the C compiler, and this module's source (its patches to
    pan.c and pan.h)."""
    parts = [Path(__file__).read_text()]
    for cmd in ([spin, "-V"], [cc, "--version"]):
        try:
            parts.append(subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                        check=False).stdout)
        except (OSError, subprocess.SubprocessError):
            parts.append("?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class _PanCache:
    """pan binaries, one per model text and compiler flags, so the policies of one
    configuration (and a run's repeated searches) compile once.

    With ``disk`` (the module's ``PAN_CACHE``) they are kept in the cache directory the
    fleet's model runs use (``memfail.fleet.cache``: ``$MEMFAIL_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/memfail``, else ``~/.cache/memfail``; ``off``: none), under
    ``spin-pan/<key>``, the key a hash of the model's text, the flags, the paths and versions
    of spin and the C compiler and this module's source: a later ``memfail check --engine
    spin`` of the same configuration skips the compile (the standard configuration's
    ``--races`` model takes about a minute of gcc). A process compiling a pan holds a lock
    on its key, so concurrent runs compile it once. Without ``disk``, or where the directory
    cannot be written, the pans live in a directory of this process, removed at exit."""

    def __init__(self, disk: bool = False) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, threading.Lock] = {}
        self._root: Path | None = None
        self._disk = disk

    def _kept(self) -> Path | None:
        """The on-disk directory of pans, or None (no disk cache, or not writable)."""
        if not self._disk:
            return None
        from memfail.fleet import cache

        where = cache.cache_dir()
        if where is None:
            return None
        root = where / "spin-pan"
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return root if os.access(root, os.W_OK) else None

    def get(self, text: str, flags: list[str]) -> Path:
        spin, cc = tools()
        key = hashlib.sha256("\0".join([text, *flags, spin, cc, _toolchain(spin, cc)])
                             .encode()).hexdigest()[:24]
        kept = self._kept()
        with self._lock:
            if kept is None and self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="memfail-pan-"))
                atexit.register(shutil.rmtree, self._root, True)
            root = kept if kept is not None else self._root
            assert root is not None
            lock = self._keys.setdefault(key, threading.Lock())
            where = root / key
        with lock, _locked(root / f".{key}.lock" if kept is not None else None):
            pan = where / "pan"
            if not pan.exists():
                build = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
                try:
                    (build / "model.pml").write_text(text)
                    _run([spin, "-a", "model.pml"], build)
                    _quiet_observation(build / "pan.m")
                    _skip_stutter(build / "pan.c")
                    _murmur(build / "pan.c")
                    _lazy_zero(build / "pan.c")
                    _allow_hidden(build / "pan.h")
                    _run([cc, *flags, "-w", "-o", "pan", "pan.c"], build)
                    if kept is not None:  # the pan and its model; not the C (10 MB)
                        for f in build.glob("pan.?"):
                            f.unlink()
                    if where.exists():  # a half-kept entry (its pan missing): replaced
                        shutil.rmtree(where, ignore_errors=True)
                    build.rename(where)
                finally:
                    if build.exists():
                        shutil.rmtree(build, ignore_errors=True)
                if kept is not None:
                    _prune(kept, KEEP_PANS)
            elif kept is not None:
                with contextlib.suppress(OSError):
                    os.utime(where)  # recently used: kept longest (_prune)
            return pan


KEEP_PANS = 64
"""Compiled pans kept on disk (about 1.2 MB each), the least recently used removed first."""


def _prune(root: Path, keep: int) -> None:
    entries = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(entries) <= keep:
        return
    def used(d: Path) -> float:
        try:
            return d.stat().st_mtime
        except OSError:
            return 0.0
    for d in sorted(entries, key=used)[:len(entries) - keep]:
        shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / f".{d.name}.lock").unlink()


@contextlib.contextmanager
def _locked(path: Path | None) -> Iterator[None]:
    """An exclusive lock on ``path`` (created), held across processes; nothing for None."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


PAN_CACHE = _PanCache(disk=True)


# Where _skip_stutter() patches pan.c: its declarations after pan.h; in the breadth-first
# search (bfs()), before a state's steps and where a successor is stored; in the depth-first
# one (new_state(), bitstate searches), before a state's steps and where it descends.
_PAN_H = '#include "pan.h"\n'
_BFS_LOOP = """			for (t = trans[ot][tt]; t; t = t->nxt)
			{
	#ifdef HAS_UNLESS
				if (E_state > 0
				&&  E_state != t->e_trans)
					break;
	#endif
				ntrpt->o_t = t;
"""
_BFS_STORE = """				if (t->st > 0)
				{	((P0 *)_this)->_p = t->st;
				}

	/* ptr to pred: */	ntrpt->ostate = (H_el *) otrpt;"""
_DFS_LOOP = "\t\t(trpt+1)->pr = (uchar) II;\n\t\t(trpt+1)->st = tt;\n#ifdef T_RAND\n"
_DFS_DOWN = "\t\t\tgoto Down;\t/* pseudo-recursion */"
STUTTER = "MF_STUTTER"
_STUTTER_DECL = r"""
/* memfail: steps that leave the state vector as it was (runner._skip_stutter) */
static char mf_pre[VECTORSZ]; static int mf_pre_sz; static long mf_stutter;
static char *mf_dpre; static int *mf_dpre_sz; static long mf_dcap;
static void mf_stutter_report(void) { printf("MF_STUTTER %ld\n", mf_stutter); }
__attribute__((constructor)) static void mf_stutter_init(void) { atexit(mf_stutter_report); }
static void mf_dsave(long d, const char *v, int n)
{	if (d >= mf_dcap)
	{	mf_dcap = 2 * d + 64;
		mf_dpre = (char *) realloc(mf_dpre, (size_t) mf_dcap * VECTORSZ);
		mf_dpre_sz = (int *) realloc(mf_dpre_sz, (size_t) mf_dcap * sizeof(int));
		if (!mf_dpre || !mf_dpre_sz) { fprintf(stderr, "memfail: out of memory\n"); exit(1); }
	}
	memcpy(mf_dpre + (size_t) d * VECTORSZ, v, n); mf_dpre_sz[d] = n;
}
"""


def _skip_stutter(panc: Path) -> None:
    """pan skips a step that leaves the state vector as it was.

    Such a step leads back to the state being expanded, which is stored already (or, depth
    first, on the stack), and it is never on a shortest trail; most labels are enabled in most
    states and do nothing there (58 % of the 122.0 million steps of the standard
    configuration's ``--races`` search of kill-vm). pan hashed the unchanged vector and found
    it each time. The patch compares the vector with a copy taken before the state's steps:
    breadth first, it undoes the step as pan does after storing a successor; depth first, it
    returns as pan does from a state it has seen. It counts the step (``MF_STUTTER``, printed
    at exit; parse_pan adds it to pan's matched states and transitions, which are then those
    of the unpatched search, as the Python engine counts a step that changed nothing). It
    still counts as a move (``_n``): a state whose every step changes nothing is not a
    deadlock, whose ``timeout`` retry would explore it again. Stored states, transitions,
    depth, verdicts and trails are unchanged; the kill-vm search took 40 instead of 56 s of
    CPU."""
    text = panc.read_text()
    for anchor in (_PAN_H, _BFS_LOOP, _BFS_STORE, _DFS_LOOP, _DFS_DOWN):
        if text.count(anchor) != 1:
            raise RuntimeError(f"pan.c of this spin version has no single {anchor.strip()!r}: "
                               "the stutter patch does not apply")
    text = text.replace(_PAN_H, _PAN_H + _STUTTER_DECL)
    text = text.replace(_BFS_LOOP, "\t\t\tmemcpy(mf_pre, (char *) &now, vsize); "
                        "mf_pre_sz = vsize;\n" + _BFS_LOOP)
    text = text.replace(_BFS_STORE, _BFS_STORE.replace(
        "\n\n\t/* ptr to pred: */",
        "\n\t\t\t\tif (mf_pre_sz == vsize && memcmp(mf_pre, (char *) &now, vsize) == 0)\n"
        "\t\t\t\t{\tmf_stutter++; trpt++; do_reverse(t, II, _m); trpt--;\n"
        "\t\t\t\t\t((P0 *)_this)->_p = tt; _n |= _m; continue;\n"
        "\t\t\t\t}\n\t/* ptr to pred: */"))
    text = text.replace(_DFS_LOOP, "\t\tmf_dsave(depth, (char *) &now, vsize);\n" + _DFS_LOOP)
    text = text.replace(_DFS_DOWN, (
        "\t\t\tif (mf_dpre_sz[depth - 1] == vsize && memcmp(mf_dpre + (size_t) (depth - 1)"
        " * VECTORSZ, (char *) &now, vsize) == 0)\n"
        "\t\t\t{\tmf_stutter++; goto Up;\n\t\t\t}\n") + _DFS_DOWN)
    panc.write_text(text)


def _quiet_observation(panm: Path) -> None:
    """pan evaluates the arguments of every ``printf`` although a search prints nothing
    (pan's Printf); the observation (``MF_OBS``, some 140 of them) and the label of the step
    (``MF_STEP``, a call of Printf on every step: 1 % of a bitstate search's time) are for the
    replay of a trail only (``pan -r``: ``guided``): the search skips them."""
    text = panm.read_text()
    for what in ("MF_OBS ", "MF_STEP "):
        text = text.replace(f'Printf("{what}', f'if (readtrail) Printf("{what}')
    panm.write_text(text)


_SFH = "{\thasher = d_sfh;"


def _murmur(panc: Path) -> None:
    """With ``-DMURMUR`` on a 64-bit build, pan hashes the state vectors it stores with its
    MurmurHash3 (16 bytes a round) instead of SuperFastHash (4 bytes a round); pan itself
    uses it for bitstate only. The hash picks a bucket: the vectors are compared whole, so
    the states, matches and trails are the same. The standard configuration's ``--races``
    search of kill-vm: 41.6 -> 37.4 s of CPU."""
    text = panc.read_text()
    if text.count(_SFH) != 1:
        raise RuntimeError("pan.c of this spin version has no single `hasher = d_sfh`: the "
                           "hash patch does not apply")
    panc.write_text(text.replace(_SFH, "{\n#if defined(MURMUR) && (WS==8)\n\t\thasher = "
                                 "m_hash;\n#else\n\t\thasher = d_sfh;\n#endif"))


_MALLOC = "\ttmp = (char *) malloc(n);\n\tif (!tmp)\n"
_EMALLOC_ZERO = "\tleft -= (long) n;\n\tmemset(tmp, 0, n);\n\treturn tmp;"
# a request emalloc() hands a block of its own (over CHUNK, 100 * VECTORSZ, so never carved
# from a leftover) and large enough for malloc() to map it afresh
_LAZY = "(n > 100*VECTORSZ && n >= (1 << 20))"


def _lazy_zero(panc: Path) -> None:
    """pan's emalloc() zeroes every block it hands out with memset(); the hash table
    (2^-w slots: 128 MB at the default -w24) is one block, so every search wrote all of it
    before its first state: 0.08 s of system time, most of a small search (the standard
    configuration's atomic search of future: 12,351 states in 0.03 s of user time). The
    patch takes such a block from calloc(), whose freshly mapped pages are zero already, and
    skips the memset: a page of the table is faulted in when a state first hashes into it.
    Same search (the table is zero either way); 0.11 -> 0.07 s of CPU and 138 -> 48 MB
    resident for that search, and no change for a large one, which touches every page."""
    text = panc.read_text()
    for anchor in (_MALLOC, _EMALLOC_ZERO):
        if text.count(anchor) != 1:
            raise RuntimeError(f"pan.c of this spin version has no single {anchor.strip()!r}:"
                               " the zeroing patch does not apply")
    text = text.replace(_MALLOC, f"\ttmp = (char *) ({_LAZY} ? calloc(1, n) : malloc(n));"
                        "\n\tif (!tmp)\n")
    text = text.replace(_EMALLOC_ZERO, "\tleft -= (long) n;\n"
                        f"\tif (!{_LAZY}) memset(tmp, 0, n);\n\treturn tmp;")
    panc.write_text(text)


_HIDDEN_BFS = "\t#error cannot use BFS on models with variables declared hidden\n"


def _allow_hidden(panh: Path) -> None:
    """pan refuses a breadth-first search of a model with ``hidden`` variables (C globals
    outside the state vector): a state taken from the queue does not bring back their values.
    Every hidden variable of the generated models is a scratch variable of one step (each
    step is one d_step, which zeroes them before it ends: RESET_SCRATCH, mf_zero(), zq, fj)
    or a constant of the search (the policy's knobs and the property mask, set by the first
    step), so their values are the same in every state and a state brings back nothing of
    them. The patch drops the refusal. On the standard configuration's --races search of
    kill-vm (as it was before its realloc moved from vm2 to vm0) the vector went from 396 to
    244 bytes (124 with pack.py's packing): the same 8,304,229 states and 50,695,394 transitions, in 41.2 instead of 49.0 s of CPU (one run
    each) and 3.1 instead of 4.6 GB; the tests check the same figures with the variables in
    the vector, and that each is zero after every step there (tests/test_check_spin.py)."""
    text = panh.read_text()
    if "HAS_HIDDEN" in text:
        if text.count(_HIDDEN_BFS) != 1:
            raise RuntimeError("pan.h of this spin version has no single refusal of hidden "
                               "variables in a breadth-first search: the patch does not apply")
        panh.write_text(text.replace(_HIDDEN_BFS, ""))


# The C compiler's optimisation and pan's options beyond the search's own: -O2 and NOCOMP
# (pan stores and hashes the state vector as it is, without masking out its padding first)
# made the standard configuration's --races search of kill-vm (before its realloc moved from
# vm2 to vm0) 29 % faster per CPU second than -O1 with masking (8,304,229 states: 77.8 ->
# 55.1 s), in about the same memory (4.2 GB -> 4.4 GB resident), for some 8 s more compiling; MURMUR (_murmur) 10 % more.
OPT = "-O2"
EXTRA: tuple[str, ...] = ("-DNOCOMP", "-DMURMUR")
# The environment variable that replaces OPT: for a small configuration the compile is most
# of a search (the agree.yaml --races model: gcc -O2 14.7 s, -O1 8.5 s, -O0 4.6 s, for a
# search of about a second), and the optimisation changes how fast pan runs, not what it
# finds (tests/test_check_spin.py compares every figure and trail of the standard
# configuration's pan at -O2 and -O0; the test suite compiles its pans -O0).
OPT_ENV = "MEMFAIL_SPIN_OPT"
OPTS = ("-O0", "-O1", "-O2", "-O3", "-Os", "-Og")


class OptError(InputError):
    """``$MEMFAIL_SPIN_OPT`` names no optimisation level the runner passes to the compiler."""

    def __init__(self, message: str) -> None:
        super().__init__(f"${OPT_ENV}", None, None, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


def default_opt() -> str:
    """``$MEMFAIL_SPIN_OPT`` when set (one of OPTS), else OPT."""
    got = os.environ.get(OPT_ENV, "").strip()
    if not got:
        return OPT
    if got not in OPTS:
        raise OptError(f"give one of {', '.join(OPTS)}, got {got!r}")
    return got


def compile_pan(workdir: Path, text: str, bitstate: bool, opt: str | None = None,
                extra: tuple[str, ...] = EXTRA, dfs: bool = False) -> None:
    """``spin -a`` and the C compiler: one pan per model text (``runtime_knobs``: every policy
    of a configuration shares it) and flags, whichever properties it checks (``run_pan``'s
    mask). ``workdir`` gets the model, the knob values and a link to the pan. ``opt``: the
    compiler's optimisation (default ``default_opt()``); it is part of the pan's cache key."""
    opt = opt or default_opt()
    text, knobs = runtime_knobs(text)
    text = pack_bits(text)  # the bit arrays as unsigned fields: a smaller vector (pack.py)
    flags = [opt, "-DSAFETY", "-DNOFAIR", "-DNOREDUCE", "-DNOBOUNDCHECK", "-DXUSAFE"]
    # Exhaustive: breadth-first (shortest trails), each state vector stored whole. COLLAPSE
    # compression was measured slower here (1.06 s against 0.65 s CPU for 143k states of
    # bench/check_engines.yaml), and saves no memory on the breadth-first queue.
    # ``extra`` replaces EXTRA (bench/bench_check_engines.py --variants).
    flags += ["-DBITSTATE"] if bitstate else [] if dfs else ["-DBFS"]
    flags += list(extra)   # bench/bench_check_engines.py --variants: compression, reduction
    pan = PAN_CACHE.get(text, flags)
    (workdir / "model.pml").write_text(text)
    (workdir / KNOBS_FILE).write_text(json.dumps(knobs))
    link = workdir / "pan"
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(pan)


def _knobs(workdir: Path) -> dict[str, int]:
    f = workdir / KNOBS_FILE
    return json.loads(f.read_text()) if f.exists() else {}


def _pan_env(workdir: Path, mask: int) -> dict[str, str]:
    """pan's environment for a search or a trail's replay: the properties it checks and the
    policy's knobs."""
    return {"MF_CHECK": str(mask), **{f"MF_K_{n}": str(v) for n, v in _knobs(workdir).items()}}


HUGE_PAGES = "glibc.malloc.hugetlb=1"


def huge_pages_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment that asks glibc's malloc() of a search's pan for transparent huge
    pages (``madvise(MADV_HUGEPAGE)`` on the memory it takes from the kernel; glibc 2.35+,
    an older one ignores the tunable, and so does a kernel whose THP setting is ``never``).

    pan's time goes to finding each successor in its hash table: a read of the table's slot
    and one of the stored vector, at random places in gigabytes, each missing the TLB as well
    as the caches with 4 KB pages. On the standard configuration's ``--races`` search of
    kill-vm (8,304,229 states, 1.9 GB, before its realloc moved from vm2 to vm0): 34.2 ->
    28.6 s of user time, 1.4 -> 4.3 s of system time (the kernel zeroes and compacts 2 MB pages), 35.5 -> 32.9 s of CPU in all (two runs
    each; the same states, transitions and trails: the tunable changes where memory comes
    from, not what pan does with it). A ``GLIBC_TUNABLES`` already set is kept, and one that
    sets ``glibc.malloc.hugetlb`` itself is left as it is."""
    have = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in have:
        return {}
    return {"GLIBC_TUNABLES": f"{have}:{HUGE_PAGES}" if have else HUGE_PAGES}


@functools.cache
def available_memory() -> int:
    """Bytes of memory available (``MemAvailable`` of /proc/meminfo) when this process first
    asked; 0 where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pan_memory_limit(memory_mb: float | None = None) -> int | None:
    """The address space one pan may take (bytes; None: no limit): ``memory_mb`` when the
    configuration's ``bounds`` give it, else the memory available when the first search
    started. pan stores every state it has seen: over the limit its malloc() fails and it
    stops with "out of memory" and its report (PARTIAL(memory)), where it would otherwise
    grow until the kernel's OOM killer ended it without one. (At 90 % of it, the
    --races search of minimum on a configuration of two VMs with conversions stopped at 51
    of its 55 million states, 22.8 GB of a machine's 24.)"""
    if memory_mb is not None:
        return int(memory_mb * 2**20)
    return available_memory() or None


class _PanSlots:
    """The pans running in this process (``--workers N`` runs N policies at once), and a
    search run again alone: it waits until no other pan runs, and none starts meanwhile."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._running = 0
        self._waiting_alone = 0
        self._alone = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._waiting_alone and not self._alone)
            self._running += 1
        try:
            yield
        finally:
            with self._cv:
                self._running -= 1
                self._cv.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cv:
            self._waiting_alone += 1
            self._cv.wait_for(lambda: not self._running and not self._alone)
            self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cv:
                self._alone = False
                self._cv.notify_all()


PANS = _PanSlots()


# After SIGINT, how long pan may take to print its report before it is killed
INTERRUPT_GRACE = 30.0


def run_pan(workdir: Path, bitstate: bool, mask: int = 0, limit: int | None = None,
            seconds: float | None = None) -> PanStats:
    """One search for the properties in ``mask`` (bit k: property k; 0 checks none), in at
    most ``limit`` bytes of address space (RLIMIT_AS, set on the pan process as it starts)
    and ``seconds`` of wall-clock time: then pan gets SIGINT, on which it stops and prints
    its report (pan.c ``stopped()``: "Interrupted", then ``wrapup()``), and the search is
    ``stopped`` "time". A pan that ends by a signal or without its report did not finish
    (``PanStats.stopped``)."""
    for f in workdir.glob("model.pml*.trail"):
        f.unlink()
    args = ["./pan", "-m1000000", "-E"]
    if bitstate:
        args.append(f"-w{BITSTATE_LOG2}")
    env = {**_pan_env(workdir, mask), **huge_pages_env(os.environ)}
    t0 = time.perf_counter()
    if limit is not None:
        # The limit is set before pan runs: a shell sets it and execs pan (the same pid).
        # preexec_fn is unsafe in a threaded parent (--workers), and prlimit on the pid after
        # Popen raced with pan's first allocation, its hash table: a pan that allocated it
        # first ran past the limit (a search under 60 MiB completed, under 100 MiB not).
        # A hard limit lower than ``limit`` stays: ulimit fails, pan runs within that one.
        args = ["/bin/sh", "-c", f"ulimit -v {max(1, limit // 1024)} 2>/dev/null; "
                'exec "$0" "$@"', *args]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env})
    # pans side by side may still exhaust the memory: the OOM killer then ends a pan (it is
    # reported: "killed", and run again alone), not this process or another one
    with contextlib.suppress(OSError):
        Path(f"/proc/{proc.pid}/oom_score_adj").write_text("1000")
    timed_out = False
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=INTERRUPT_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    st = parse_pan(out + err)
    if proc.returncode < 0:
        st.complete, st.stopped = False, "killed"
        st.output += f"\npan: killed by signal {-proc.returncode}\n"
    if timed_out and not st.errors:
        # a violation pan found before the interrupt stands (its trail is written)
        st.complete, st.stopped = False, "time"
    st.elapsed = time.perf_counter() - t0
    return st


def guided(workdir: Path, mask: int) -> tuple[list[int], list[tuple[int, ...]]]:
    """The labels of the trail and the observation after each step (initial one first).

    pan replays its own trail (``pan -r``): the compiled steps it searched, in the same
    environment (``MF_CHECK``, the knobs), with the observation ``printf`` it skips while it
    searches (``_quiet_observation``). Measured on the standard configuration's --races
    model: 0.004 s for a trail of 3 steps against 8.0 s for ``spin -t``, which parses and
    interprets the whole model (about 150 s of CPU over the 21 trails of a --races run of
    every preset), with the same lines (tests/test_check_spin.py compares them)."""
    env = _pan_env(workdir, mask)
    if not any(workdir.glob("model.pml*.trail")):
        raise RuntimeError(f"pan left no trail to replay in {workdir}")
    p = subprocess.run(["./pan", "-r"], cwd=workdir, capture_output=True, text=True,
                       check=False, env={**os.environ, **env})
    out = p.stdout + p.stderr
    if "MF_STEP" not in out and "MF_OBS" not in out:
        raise RuntimeError(f"pan -r replayed nothing of its trail: {out[-800:]}")
    return parse_sim(out)


def guided_spin(workdir: Path, mask: int) -> tuple[list[int], list[tuple[int, ...]]]:
    """``guided`` by spin's own guided simulation (``spin -t``) of the Promela: slower, and
    independent of pan's compiled steps (the tests compare the two)."""
    spin, _ = tools()
    kv = [f"-DKV_{n}={v}" for n, v in _knobs(workdir).items()]
    out = _run([spin, f"-DCHECK={mask}", *kv, "-t", "-T", "model.pml"], workdir)
    return parse_sim(out)


def parse_sim(out: str) -> tuple[list[int], list[tuple[int, ...]]]:
    steps, obs = [], []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("MF_STEP "):
            steps.append(int(line.split()[1]))
        elif line.startswith("MF_OBS "):
            obs.append(tuple(int(x) for x in line.split()[1:]))
    return steps, obs


def label_kind(label: Any) -> str:
    """The event kind of a label (a --races continuation label's origin's)."""
    from memfail.check.races import origin

    return str(origin(label)[0])


def _stop(st: PanStats, bitstate: bool) -> str | None:
    """Why a search that found no (more) violation does not say PASS: a bitstate search or a
    search pan did not finish; None when it may."""
    if st.stopped is not None:
        return st.stopped
    if bitstate:
        return "bitstate"
    return None if st.complete else "depth"


def check_policy(system: Any, props: list[str], bitstate: bool = False,
                 keep: Path | None = None, share: int = 1, memory_mb: float | None = None,
                 seconds: float | None = None) -> SpinRun:
    """The verdict of every property in ``props`` for one ModelSystem, by SPIN. ``share``
    pans run at once: a search that stopped for memory beside others (out of memory, or
    killed) runs again alone. ``memory_mb`` (default: the configuration's
    ``bounds.memory_mb``) bounds each pan's address space; ``seconds`` the searches' time
    together, from the end of the compile (the properties still undecided then are
    PARTIAL(time))."""
    system.initial()
    limit = pan_memory_limit(memory_mb if memory_mb is not None
                             else system.config.bounds.memory_mb)
    rendered: Rendered = render_races(system) if getattr(system, "races", False) \
        else render(system)
    index = {name: k for k, name in enumerate(rendered.props)}
    todo = set(props)
    verdicts: dict[str, Verdict] = {}
    runs: list[PanStats] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memfail-spin-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        compile_pan(work, rendered.text, bitstate)
        deadline = time.perf_counter() + seconds if seconds is not None else None

        def left() -> float | None:
            """What is left of ``seconds`` for the next search (None: no bound)."""
            return None if deadline is None else max(deadline - time.perf_counter(), 0.001)

        while todo:
            mask = sum(1 << index[p] for p in todo)
            with PANS.shared():
                st = run_pan(work, bitstate, mask, limit, left())
            if st.stopped in ("memory", "killed") and share > 1:
                # out of memory or killed beside other pans: once more, alone
                with PANS.alone():
                    st = run_pan(work, bitstate, mask, limit, left())
            runs.append(st)
            if not st.errors:
                stop = _stop(st, bitstate)
                for p in sorted(todo):
                    verdicts[p] = Verdict(p, PASS) if stop is None else \
                        Verdict(p, PARTIAL, reason=stop)
                break
            seq, obs = guided(work, mask)
            final = obs[-1] if obs else ()
            nprop = len(rendered.props)
            flags = final[len(final) - nprop:] if final else ()
            hit = [p for p in sorted(todo) if flags and flags[index[p]]]
            if not hit:
                raise RuntimeError("SPIN reported an assertion violation whose trail violates "
                                   "none of the checked properties")
            labels = [rendered.labels[k] for k in seq]
            for p in hit:
                verdicts[p] = Verdict(p, FAIL, depth=len(labels),
                                      message=f"SPIN trail of {len(labels)} steps",
                                      labels=labels)
                todo.discard(p)
    elapsed = time.perf_counter() - t0
    last = runs[-1] if runs else PanStats()
    states = max((r.states for r in runs), default=0)
    transitions = max((r.transitions for r in runs), default=0)
    # the labels that fired (MF_FIRED, printed when pan exits, at a violation or a bound
    # too) and the kinds on the trails: what fired before the last search stopped, every
    # label when it ran to its end; the others did not fire before it stopped (the text
    # says so for a search that did not complete, as the Python engine's)
    kinds = list(dict.fromkeys(label_kind(lab) for lab in rendered.labels))
    fired = {label_kind(lab) for v in verdicts.values() for lab in v.labels}
    m = re.search(r"^MF_FIRED(.*)$", last.output, re.M)
    if m:
        fired |= {label_kind(rendered.labels[int(k)]) for k in m.group(1).split()}
    coverage = Coverage([k for k in kinds if k in fired],
                        [k for k in kinds if k not in fired], [], [])
    bound = _stop(last, bitstate)
    # the last search ended at a violation when every property failed: the search stopped
    # because nothing was left to check (the Python engine's "all-failed"), not at a bound
    stop = "all-failed" if last.errors and props and \
        all(verdicts[p].status == FAIL for p in props) else bound
    result = SpinResult(system=system.name, verdicts={p: verdicts[p] for p in props},
                    states=states, transitions=transitions,
                    depth=max((r.depth for r in runs), default=0),
                    complete=bound is None and not last.errors,
                    stop_reason=stop,
                    elapsed=elapsed, coverage=coverage, workers=1,
                    symmetry=False, por=False)
    result.bitstate = bitstate
    result.search_seconds = sum(r.elapsed for r in runs)
    return SpinRun(result, runs, rendered.text)
