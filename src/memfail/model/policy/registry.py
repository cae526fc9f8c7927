"""The named guest_memfd memory-failure policies: today's kernel, the call's proposal and every
alternative argued on the call, each a preset over the knobs of ``GmemPolicy``."""

from __future__ import annotations

import re
from typing import Any

from .base import GmemPolicy, knob_text, knob_values

PRESETS: dict[str, GmemPolicy] = {}


def _add(p: GmemPolicy) -> None:
    PRESETS[p.name] = p


_add(GmemPolicy(
    "mainline",
    "What released kernels do (v6.8+ guest_memfd): kvm_gmem_error_folio zaps the folio from "
    "stage 2 and returns MF_DELAYED, truncate_error_folio reports it as 'Failed to punch page', "
    "MF returns -EBUSY and a hardware AR gets a plain SIGBUS (R64, R65). The MF_DELAYED fix "
    "follows the kernel profile (only `next` has it). HugeTLB-backed folios, which exist only "
    "with the unmerged 1G series, take the HugeTLB path: IGNORED, nothing zapped (R87).",
    call_items=(), propagate_on_split=False, mf_delayed_fix=None))
_add(GmemPolicy(
    "mf-delayed-fix",
    "mainline plus Lisa Wang's unmerged 'mm: Fix MF_DELAYED handling on memory failure' (RFC "
    "v2, mm-unstable): DELAYED, MF returns 0, the kill policy is respected; the guest's next "
    "access gets -EHWPOISON from kvm_gmem_get_pfn (R66, R67).",
    call_items=(), propagate_on_split=False, mf_delayed_fix=True))
_add(GmemPolicy(
    "minimum",
    "The call's proposal as written: track failures in a global table (C1), defer unconsumed "
    "failures and do not unmap (C2), SIGBUS current on consumption (C3), mark HWpoison only "
    "when folios are freed at inode release (C4), no check on faults (C5), no "
    "PR_MCE_KILL_EARLY (C6).",
    call_items=("C1", "C2", "C3", "C4", "C5", "C6"),
    handles="hugetlb", record="table", mark_on_release=True, isolate_on_free=True, mark_on_truncate=False,
    propagate_on_split=False, unmap_stage2="none", unmap_host="none", fault_check=False,
    consumed="sigbus-current", unconsumed="defer", honor_early=False, sigbus_addr="hva",
    mf_delayed_fix=True))
_add(GmemPolicy(
    "unmap",
    "The minimum plus unmap on error (Dan: 'non-negotiable', C7): the failed folio is zapped "
    "from stage 2 and host page tables and faults refuse it, so the guest cannot consume it "
    "again.",
    call_items=("C1", "C3", "C4", "C6", "C7"),
    handles="hugetlb", record="table", mark_on_release=True, isolate_on_free=True, mark_on_truncate=False,
    propagate_on_split=False, unmap_stage2="folio", unmap_host="folio", fault_check=True,
    check_granularity="folio", consumed="sigbus-current", unconsumed="defer",
    honor_early=False, mf_delayed_fix=True))
_add(GmemPolicy(
    "kill-vm",
    "Sean: kill the guest completely and unmap everything on any failure in its guest_memfd "
    "(C7), consumed or not. 'unconsumed: defer' is the variant that kills only on consumption.",
    call_items=("C1", "C4", "C7"),
    handles="all", record="table", mark_on_release=True, isolate_on_free=True, mark_on_truncate=True,
    unmap_stage2="vm", unmap_host="folio", fault_check=True, consumed="kill-vm",
    unconsumed="kill-vm", honor_early=False, mf_delayed_fix=True))
_add(GmemPolicy(
    "unusable",
    "James: make the whole guest_memfd unusable on a failure, consumed or not: stage 2 zapped "
    "for the whole file, every later get_pfn and host fault fails (C7). 'unconsumed: defer' is "
    "the variant that acts only on consumption.",
    call_items=("C1", "C4", "C7"),
    handles="all", record="table", mark_on_release=True, isolate_on_free=True, mark_on_truncate=True,
    unmap_stage2="vm", unmap_host="folio", fault_check=True, consumed="unusable",
    unconsumed="unusable", honor_early=False, mf_delayed_fix=True))
_add(GmemPolicy(
    "future",
    "The call's future work (C8): opt-in unmap of only the failed subfolios, HWpoison on "
    "guest_memfd folios with proper locking (kept across split/merge), SIGBUS to the processes "
    "of the struct kvm through a KVM request, PR_MCE_KILL_EARLY honoured.",
    call_items=("C1", "C4", "C8"),
    handles="all", record="folio", mark_on_release=True, isolate_on_free=True, mark_on_truncate=True,
    propagate_on_split=True, unmap_stage2="subpage", unmap_host="subpage", fault_check=True,
    check_granularity="subpage", consumed="sigbus-vmm", unconsumed="notify-vmm",
    honor_early=True, sigbus_addr="hva", mf_delayed_fix=True))
_add(GmemPolicy(
    "hugetlbfs",
    "Baseline without guest_memfd: guest memory is a hugetlbfs memfd mapped by the VMM (HVA "
    "memslots). memory_failure unmaps the whole huge page, QEMU injects a 4K vMCE and every "
    "later access to the rest of the huge page loses another 4K (S10, S11).",
    call_items=(), backing="hugetlbfs", mf_delayed_fix=None))

DEFAULT_POLICY = "mainline"
# Former names, accepted so that older scenario files keep running.
ALIASES = {"mainline-prefix": "mainline"}


def policy_names() -> list[str]:
    return list(PRESETS)


def policy_label(pol: GmemPolicy, base: GmemPolicy) -> str:
    """``minimum{sigbus_addr=none}``: a preset and the knobs that differ from it (the preset's
    own name when none does). ``make_policy`` reads it back."""
    diff = {k: v for k, v in pol.knobs().items() if base.knobs()[k] != v}
    if not diff:
        return base.name
    return base.name + "{" + ",".join(f"{k}={knob_text(v)}" for k, v in diff.items()) + "}"


_LABEL = re.compile(r"([A-Za-z0-9_.+-]+)\{([^{}]*)\}")


def _from_label(text: str) -> GmemPolicy | None:
    """``base{knob=value,...}`` (``policy_label``), or None when ``text`` is not one."""
    m = _LABEL.fullmatch(text)
    if m is None:
        return None
    base = make_policy(m.group(1))
    knobs: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in m.group(2).split(","))):
        k, eq, raw = (x.strip() for x in item.partition("="))
        if not eq:
            raise ValueError(f"policy {text!r}: {item!r} is not knob=value")
        if k not in base.knobs():
            raise ValueError(f"policy {text!r}: unknown policy knob {k!r}; knobs: "
                             f"{', '.join(sorted(base.knobs()))}")
        allowed = knob_values(k) or ()
        got = [a for a in allowed if knob_text(a) == raw.lower()]
        if not got:
            raise ValueError(f"policy {text!r}: policy knob {k}: {raw!r} is not one of "
                             f"{', '.join(map(knob_text, allowed))}")
        knobs[k] = got[0]
    pol = base.with_knobs(**knobs)
    return pol.with_knobs(name=policy_label(pol, base))


def _from_mapping(spec: dict[Any, Any]) -> GmemPolicy:
    d = dict(spec)
    base = make_policy(d.pop("base", DEFAULT_POLICY))
    name = d.pop("name", None)
    pol = base.with_knobs(**d)
    return pol.with_knobs(name=name or policy_label(pol, base))


def _inline(text: str) -> dict[Any, Any]:
    """An inline policy written as text, ``'{base: minimum, unmap_stage2: folio}'`` (YAML
    flow), as its mapping."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        d = YAML(typ="safe").load(text)
    except YAMLError as e:
        raise ValueError(f"policy {text!r} is not a preset name nor a YAML mapping: "
                         f"{' '.join(str(e).split())}") from None
    if not isinstance(d, dict):
        raise ValueError(f"an inline policy is a mapping like '{{base: minimum, "
                         f"unmap_stage2: folio}}', got {text!r}")
    return d


def _spec(spec: Any) -> Any:
    """``spec`` with an inline policy written as text read into its mapping."""
    if isinstance(spec, str) and spec.strip().startswith("{"):
        return _inline(spec.strip())
    return spec


def make_policy(spec: Any) -> GmemPolicy:
    """A preset name, a GmemPolicy, a mapping ``{base: NAME, name: ..., knob: value}`` or
    the same as text (``'{base: minimum, unmap_stage2: folio}'``, YAML flow), or a preset
    with the knobs it changes, ``minimum{unmap_stage2=folio}`` (``policy_label``: how
    ``memfail compare`` and ``memfail check`` name an inline policy). An inline policy
    without ``name`` is named by ``policy_label``."""
    spec = _spec(spec)
    if isinstance(spec, GmemPolicy):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        pol = _from_label(text)
        if pol is not None:
            return pol
        try:
            return PRESETS[ALIASES.get(text, text)]
        except KeyError:
            raise ValueError(f"unknown policy {spec!r}; valid policies: "
                             f"{', '.join(PRESETS)}") from None
    if isinstance(spec, dict):
        return _from_mapping(spec)
    raise ValueError(f"a policy is a preset name or a mapping with 'base', got {spec!r}")


def policy_text(spec: Any) -> str:
    """A policy spec as one line that ``make_policy`` reads back to the same policy: a preset's
    name, else ``policy_label`` (``minimum{unmap_stage2=folio}``). A spec that names itself
    (``name:``) is refused: its name would not read back."""
    if isinstance(spec, str) and (spec in PRESETS or spec in ALIASES):
        return spec
    d = _spec(spec)
    pol = make_policy(d)
    if isinstance(d, dict) and d.get("name") is not None:
        label = policy_label(pol, make_policy(d.get("base", DEFAULT_POLICY)))
        raise ValueError(f"policy {d['name']!r}: `name` is for scenarios; here an inline "
                         f"policy is named by its base and the knobs it changes: drop `name` "
                         f"(this one is {label})")
    return pol.name


def policy_mapping(spec: Any) -> str | dict[str, Any]:
    """A policy spec as a scenario writes it: a preset's name, else ``{base: PRESET, knob:
    value, ...}`` with the knobs that differ from the base (``policy_label``'s)."""
    text = policy_text(spec)
    m = _LABEL.fullmatch(text)
    if m is None:
        return text
    base, pol = make_policy(m.group(1)), make_policy(text)
    return {"base": base.name,
            **{k: v for k, v in pol.knobs().items() if base.knobs()[k] != v}}
