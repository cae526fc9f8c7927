"""Benchmark of the two engines of `memfail check` on the same configuration, side by side.

    python bench/bench_check_engines.py                 # bench/check_engines.yaml, policy future
    python bench/bench_check_engines.py --seconds 60 --policy minimum
    python bench/bench_check_engines.py --standard      # also the standard configuration
    python bench/bench_check_engines.py --agree 1000    # more agreement walks than the suite
    python bench/bench_check_engines.py --races --agree 50   # the same, lock-granular
    python bench/bench_check_engines.py --random-configs 100 # walks on random configurations
    python bench/bench_check_engines.py --random-verdicts 30 --races-every 3  # exhaustive verdicts
    python bench/bench_check_engines.py --config standard --seconds 60   # the standard config
    python bench/bench_check_engines.py --config standard --variants     # pan's options
    python bench/bench_check_engines.py --races --seconds 60  # both engines with --races

States per second per core: the Python engine on one worker (breadth-first over the model,
bounded by --seconds), SPIN's pan (exhaustive: breadth-first storing every state whole, as
`memfail check --engine spin` runs it; bitstate: depth-first, with its hash factor), each from
the CPU time its search took (this process's for the Python engine, the pan child's for
SPIN), so a machine shared with other work moves the figures less than wall-clock time would;
the wall-clock time and pan's compile time are printed apart. The ratio is what matters.
``--standard`` runs SPIN on the standard configuration (`memfail check` without a file) for
every preset it renders, and prints each search's size and rate; ``--variants`` compares pan's
compile-time choices (BFS or DFS, COLLAPSE, HC4, -O1 or -O2) on one configuration.
``--races`` benches both engines lock-granular (`memfail check --races`: the stages of
check/races.py, in Promela by check/spin/stages.py) on the same configuration, for the figures
and for ``--standard`` and ``--variants``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from memfail.check.backends import make_backend
from memfail.check.config import STANDARD, load_config
from memfail.check.explorer import Bounds, Options, explore
from memfail.check.model_system import ModelSystem
from memfail.check.spin import (
    AGREE_CONFIG,
    AGREE_CONVERT_CONFIG,
    AGREE_GUEST_CONFIG,
    AGREE_HUGETLBFS_CONFIG,
    AGREE_HUGETLBFS_GUESTS_CONFIG,
    AGREE_KERNEL_CONFIG,
    AGREE_MCE_CONFIG,
    AGREE_TWO_CONFIG,
    runner,
)
from memfail.check.spin.promela import policy_refusal, render
from memfail.check.spin.runner import EXTRA, OPT, compile_pan, run_pan
from memfail.check.spin.stages import render_races

CONFIG = Path(__file__).with_name("check_engines.yaml")
TARGET_SPIN = 500_000


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def python_rate(cfg_path: Path, policy: str, seconds: float, races: bool = False
                ) -> tuple[int, int, float, float]:
    """States, transitions, CPU seconds and wall seconds of a one-worker search (in this
    process)."""
    system = ModelSystem(load_config(cfg_path), policy, races)
    system.initial()
    c0 = time.process_time()
    with make_backend(1) as backend:
        r = explore(system, backend, Bounds(max_depth=None, max_seconds=seconds),
                    Options(stop_when_all_fail=False))
    return r.states, r.transitions, max(time.process_time() - c0, 1e-3), r.elapsed


def spin_rate(cfg_path: Path | None, policy: str, bitstate: bool, opt: str = OPT,
              extra: tuple[str, ...] = EXTRA, dfs: bool = False, races: bool = False
              ) -> tuple[int, int, float, float, float | None, bool, float]:
    """States, transitions, CPU seconds of pan's search, compile seconds, hash factor,
    completeness and wall seconds of the search (``cfg_path`` None: the standard
    configuration)."""
    system = ModelSystem(load_config(cfg_path or STANDARD), policy, races)
    system.initial()
    text = render_races(system).text if races else render(system).text
    with tempfile.TemporaryDirectory(prefix="memfail-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        compile_pan(work, text, bitstate, opt=opt, extra=extra, dfs=dfs)
        compiled = time.perf_counter() - t0
        c0 = _child_cpu()
        st = run_pan(work, bitstate)
        cpu = _child_cpu() - c0
    return (st.states, st.transitions, max(cpu, 1e-3), compiled, st.hash_factor, st.complete,
            st.elapsed)


def bench(cfg_path: Path, policy: str, seconds: float, races: bool = False) -> None:
    print(f"engines on {cfg_path.name}, policy {policy}{', --races' if races else ''}")
    ps, pt, pe, pw = python_rate(cfg_path, policy, seconds, races)
    py = ps / pe
    print(f"  {'python (1 worker)':31}: {py:12,.0f} states/s  {pt / pe:12,.0f} transitions/s"
          f"  ({ps:,} states in {pe:.1f} s CPU, {pw:.1f} s wall)")
    es, et, ee, ec, _hf, complete, ew = spin_rate(cfg_path, policy, False, races=races)
    ex = es / ee
    print(f"  {'spin exhaustive (BFS)':31}: {ex:12,.0f} states/s  {et / ee:12,.0f} "
          f"transitions/s  ({es:,} states in {ee:.2f} s CPU, {ew:.2f} s wall, "
          f"{'complete' if complete else 'INCOMPLETE'}; compile {ec:.1f} s)")
    bs, bt, be, bc, hf, _, bw = spin_rate(cfg_path, policy, True, races=races)
    bit = bs / be
    print(f"  {'spin bitstate (DFS, -w28)':31}: {bit:12,.0f} states/s  {bt / be:12,.0f} "
          f"transitions/s  ({bs:,} states in {be:.2f} s CPU, {bw:.2f} s wall; hash factor "
          f"{hf}; compile {bc:.1f} s)")
    if py:
        print(f"  ratio spin/python: exhaustive {ex / py:,.0f}x, bitstate {bit / py:,.0f}x")
    # each search apart: `memfail check --engine spin` runs the exhaustive one,
    # `--engine spin-bitstate` the bitstate one
    print(f"  SPIN target >= {TARGET_SPIN:,} states/s per core: "
          f"exhaustive {'met' if ex >= TARGET_SPIN else 'NOT met'}, "
          f"bitstate {'met' if bit >= TARGET_SPIN else 'NOT met'}")


# pan's compile-time choices measured by --variants (memfail check --engine spin uses the one so marked)
VARIANTS: list[tuple[str, str, tuple[str, ...], bool]] = [
    ("BFS -O1", "-O1", (), False),
    ("BFS -O2", "-O2", (), False),
    ("BFS -O2 -DNOCOMP", "-O2", ("-DNOCOMP",), False),
    ("BFS -O2 -DNOCOMP -DMURMUR (memfail check)", "-O2", ("-DNOCOMP", "-DMURMUR"), False),
    ("BFS -O2 -DCOLLAPSE", "-O2", ("-DCOLLAPSE",), False),
    ("BFS -O2 -DHC4", "-O2", ("-DHC4",), False),
    ("DFS -O2", "-O2", (), True),
    ("DFS -O2 -DCOLLAPSE", "-O2", ("-DCOLLAPSE",), True),
    ("DFS -O2 -DHC4", "-O2", ("-DHC4",), True),
]


def variants(cfg_path: Path, policy: str, races: bool = False) -> None:
    """pan's exhaustive search of one configuration under each compile-time variant (every
    one keeps -DSAFETY -DNOREDUCE -DNOFAIR: a safety check of one process, where partial
    order reduction has nothing to reduce)."""
    system = ModelSystem(load_config(cfg_path), policy, races)
    system.initial()
    print(f"pan variants on {cfg_path.name}, policy {policy}{', --races' if races else ''}")
    width = max(len(v[0]) for v in VARIANTS)
    for name, opt, extra, dfs in VARIANTS:
        es, et, ee, ec, _hf, complete, ew = spin_rate(cfg_path, policy, False, opt=opt,
                                                      extra=extra, dfs=dfs, races=races)
        print(f"  {name:{width}}: {es / ee:10,.0f} states/s {et / ee:12,.0f} transitions/s "
              f"({es:,} states in {ee:.2f} s CPU, {ew:.2f} s wall, "
              f"{'complete' if complete else 'INCOMPLETE'}; compile {ec:.1f} s)")


def standard(races: bool = False) -> None:
    """pan on the standard configuration, every preset the Promela model renders."""
    from memfail.check.spin.promela import Unsupported, check_supported

    cfg = load_config(STANDARD)
    print("spin exhaustive on the standard configuration (pan's search only)"
          + (", --races" if races else ""))
    for policy in cfg.policies:
        system = ModelSystem(cfg, policy, races)
        system.initial()
        try:
            check_supported(system)
        except Unsupported as e:
            print(f"  {policy:10}: not rendered ({e})")
            continue
        es, et, ee, ec, _hf, complete, _w = spin_rate(None, policy, False, opt=OPT,
                                                      races=races)
        print(f"  {policy:10}: {es:9,} states {et:11,} transitions, {ee:.3f} s CPU "
              f"({es / ee:10,.0f} states/s), {'complete' if complete else 'INCOMPLETE'}; "
              f"compile {ec:.1f} s")


def agree(n: int, races: bool = False) -> int:
    """n seeded Python walks replayed in Promela and n/4+1 SPIN simulations replayed on the
    Python model, per configuration and policy; with ``races`` lock-granular (20 steps, the
    stages in Promela), else atomic (12 steps)."""
    from memfail.check.spin.agree import agree_simulation, agree_walk
    from memfail.check.spin.stages import render_races

    steps = 20 if races else 12

    bad = 0
    for cfg_path in (AGREE_CONFIG, AGREE_TWO_CONFIG, AGREE_KERNEL_CONFIG, AGREE_CONVERT_CONFIG,
                     AGREE_GUEST_CONFIG, AGREE_MCE_CONFIG, AGREE_HUGETLBFS_CONFIG,
                     AGREE_HUGETLBFS_GUESTS_CONFIG, STANDARD):
        cfg = load_config(cfg_path)
        for policy in cfg.policies:
            if policy_refusal(policy) is not None:
                continue
            system = ModelSystem(cfg, policy, races)
            system.initial()
            rendered = render_races(system) if races else render(system)
            t0 = time.perf_counter()
            for seed in range(n):
                d = agree_walk(system, seed, steps, rendered)
                if d:
                    bad += 1
                    print(f"DISAGREE {cfg_path.name} {policy} walk {seed}: {d}")
            for seed in range(1, n // 4 + 2):
                d = agree_simulation(system, seed, steps, rendered)
                if d:
                    bad += 1
                    print(f"DISAGREE {cfg_path.name} {policy} spin -n{seed}: {d}")
            print(f"{cfg_path.name} {policy}: {n} walks, {n // 4 + 1} simulations, "
                  f"{time.perf_counter() - t0:.0f} s")
    print(f"disagreements: {bad}")
    return 1 if bad else 0


def random_configs(n: int, races: bool = False, first: int = 0) -> int:
    """Agreement walks on n random configurations (check/spin/randcfg.py, seeds first ..
    first+n-1): 4 walks of 12 steps (20 with ``races``) and a simulation per policy."""
    from memfail.check.spin.randcfg import agree_config, random_config

    bad = walked = refused = 0
    t0 = time.perf_counter()
    for seed in range(first, first + n):
        _text, cfg = random_config(seed)
        got = agree_config(cfg, 4, 20 if races else 12, races, seed)
        walked += len(got.walked)
        refused += len(got.refused)
        for policy, which, diff in got.disagreements:
            bad += 1
            print(f"DISAGREE seed {seed} {policy} {which}: {diff}")
        print(f"seed {seed}: {len(got.walked)} policies walked, {len(got.refused)} refused "
              f"by the SPIN engine, {len(got.disagreements)} disagreements", flush=True)
    print(f"{n} random configurations, {walked} policies walked ({refused} refused), "
          f"{time.perf_counter() - t0:.0f} s; disagreements: {bad}")
    return 1 if bad else 0


def random_verdicts(n: int, first: int = 0, races_every: int = 0,
                    max_states: int = 60_000) -> int:
    """Both engines' exhaustive verdicts on n random configurations (seeds first ..
    first+n-1), every ``races_every``-th seed with --races (0: none), compared
    (randcfg.compare_verdicts: `memfail check --json`, the Python engine bounded by
    ``max_states`` on 2 workers, every SPIN counterexample replayed with `memfail run`).
    A configuration without an answer (a time-out) is counted apart, not as agreement."""
    from memfail.check.spin.randcfg import compare_verdicts

    differ = unreplayed = same = undecided = decided = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for seed in range(first, first + n):
            races = bool(races_every) and seed % races_every == 0
            t1 = time.perf_counter()
            got = compare_verdicts(seed, races, work, max_states)
            mode = "races" if races else "atomic"
            took = f"{time.perf_counter() - t1:.0f} s"
            if got.undecided:
                undecided += 1
                print(f"seed {seed} ({mode}): no answer: {got.undecided} ({took})", flush=True)
                continue
            decided += got.decided
            differ += bool(got.differ)
            unreplayed += bool(got.unreplayed)
            same += not got.differ and not got.unreplayed
            print(f"seed {seed} ({mode}): {got.decided} of {got.verdicts} verdicts decided by "
                  f"the Python search ({got.complete} of {got.policies} policies complete), "
                  f"{len(got.differ)} differ, {len(got.unreplayed)} SPIN counterexamples "
                  f"not replayed ({took})", flush=True)
            for policy, prop, py, spin in got.differ:
                print(f"  DIFFER {policy} {prop}: python {py}, spin {spin}")
            for policy, prop, rc in got.unreplayed:
                print(f"  NOT REPLAYED {policy} {prop}: memfail run exit {rc}")
    print(f"{n} random configurations, {time.perf_counter() - t0:.0f} s: {same} the same "
          f"({decided} verdicts compared), {differ} with a differing verdict, {unreplayed} "
          f"with a counterexample that does not replay, {undecided} without an answer")
    return 1 if differ or unreplayed else 0


def main() -> int:
    # every compile timed here is a real one: the pans of this process, none from the disk
    # cache `memfail check --engine spin` keeps (runner._PanCache)
    runner.PAN_CACHE = runner._PanCache()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--policy", default="future")
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="time bound of the Python engine's search")
    ap.add_argument("--agree", type=int, default=0, metavar="N",
                    help="run N seeded random walks per policy (and N/4 SPIN simulations) "
                         "instead of the speed figures")
    ap.add_argument("--random-configs", type=int, default=0, metavar="N",
                    help="agreement walks on N random configurations inside what the SPIN "
                         "engine renders (check/spin/randcfg.py) instead of the speed figures")
    ap.add_argument("--random-verdicts", type=int, default=0, metavar="N",
                    help="both engines' exhaustive verdicts (memfail check --json) on N random "
                         "configurations, compared; SPIN's counterexamples replayed")
    ap.add_argument("--races-every", type=int, default=0, metavar="K",
                    help="with --random-verdicts: every K-th seed with --races (0: none)")
    ap.add_argument("--max-states", type=int, default=60_000,
                    help="with --random-verdicts: the Python engine's bound (its verdicts "
                         "count only for the policies it searched completely, and its FAILs)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="the first random configuration's seed (with --random-configs or "
                         "--random-verdicts)")
    ap.add_argument("--standard", action="store_true",
                    help="also run SPIN on the standard configuration, every preset")
    ap.add_argument("--variants", action="store_true",
                    help="pan's compile-time variants (BFS/DFS, COLLAPSE, HC4, -O1/-O2) on "
                         "--config instead of the speed figures")
    ap.add_argument("--races", action="store_true",
                    help="both engines lock-granular (memfail check --races) on the same "
                         "configuration")
    a = ap.parse_args()
    if a.config == Path("standard"):
        a.config = STANDARD
    if a.agree:
        return agree(a.agree, a.races)
    if a.random_configs:
        return random_configs(a.random_configs, a.races, a.first_seed)
    if a.random_verdicts:
        return random_verdicts(a.random_verdicts, a.first_seed, a.races_every, a.max_states)
    if a.variants:
        variants(a.config, a.policy, a.races)
        return 0
    bench(a.config, a.policy, a.seconds, a.races)
    if a.standard:
        standard(a.races)
    return 0


if __name__ == "__main__":
    sys.exit(main())
