"""The event alphabet of check configurations, and how each event becomes model actions.

One table (``EVENTS``): an event has parameters, may count as a hardware error, and expands to
scenario steps ``(action_key, args)``. Events that need KVM/guest_memfd actions use them when the
model registers them (``KVM_KEYS``) and fall back to the host-only approximation otherwise.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any

from memfail.model.actions import ACTION_TYPES
from memfail.model.kernel.kaccess import MODELLED_USERS
from memfail.model.policy.registry import knob_text

if TYPE_CHECKING:
    from memfail.check.config import CheckConfig, VmSpec

StepSpec = tuple[str, dict[str, Any]]
Label = tuple[str, tuple[tuple[str, Any], ...]]

# Action keys of the KVM / guest_memfd model, used as soon as the model registers them.
KVM_KEYS = {
    "vcpu_access": "guest_access",     # a vCPU reads/writes guest memory (guest mode)
    "kernel_access": "kernel_access",  # a host kernel user touches guest memory
    "convert": "set_attributes",       # KVM_SET_MEMORY_ATTRIBUTES / in-place conversion
    "fault": "guest_access",           # a stage-2 fault on a GFN (a guest store)
    "release": "vm_destroy",           # the VM goes: its guest_memfd files are released
    "guest_run": "guest_run",          # the guest behaves as its behaviour says (docs/mce.md)
    "vcpu_mce": "machine_check",       # a vCPU consumes poison; task work not yet run (M7)
    "task_work": "task_work",          # that vCPU's task work runs before re-entry (M8)
}


_KVM: list[bool] = []


def load_model() -> None:
    """Import every module of the model, so every action handler is registered in this
    process: workers then expand and carry out labels exactly as the parent does (some
    handlers register only when a module is first imported by another handler)."""
    import importlib
    import pkgutil

    import memfail.model as model

    for info in pkgutil.walk_packages(model.__path__, "memfail.model."):
        importlib.import_module(info.name)


def kvm_model() -> bool:
    """Whether the Host carries out the KVM/guest_memfd actions (registered and handled)."""
    if not _KVM:
        from memfail.model.host import HANDLERS, Host

        load_model()
        Host()  # the kernel's handlers register when the first Host is built
        cls = ACTION_TYPES.get("vm_create")
        _KVM.append(cls is not None and cls in HANDLERS)
    return _KVM[0]


REQUIRED: Any = object()


@dataclass(frozen=True)
class Param:
    default: Any
    choices: tuple[Any, ...] | None = None
    doc: str = ""


@dataclass(frozen=True)
class EventDef:
    name: str
    doc: str
    params: dict[str, Param]
    expand: Callable[[CheckConfig, dict[str, Any]], list[StepSpec]]
    error: bool = False          # counts against bounds.errors
    needs: tuple[str, ...] = field(default=())

    def check_params(self, given: dict[str, Any]) -> None:
        for k, p in self.params.items():
            if p.default is REQUIRED and k not in given:
                raise ValueError(f"event {self.name!r} needs {k}: {p.doc}")
        for k, v in given.items():
            if k not in self.params:
                raise ValueError(f"event {self.name!r} has no parameter {k!r}; "
                                 f"parameters: {', '.join(self.params) or 'none'}")
            p = self.params[k]
            values = v if isinstance(v, list) and k != "args" else [v]
            if isinstance(v, list) and not v and k != "args":
                raise ValueError(f"event {self.name!r}: {k} is an empty list; give a value "
                                 "or a list of values")
            if p.choices is not None:
                for x in values:
                    # 1 == True in Python: a choice matches by value and type alike
                    if not any(x == c and type(x) is type(c) for c in p.choices):
                        raise ValueError(f"event {self.name!r}: {k} must be one of "
                                         f"{', '.join(map(knob_text, p.choices))}, got {x!r}")
            for x in values:
                _check_value(self.name, k, x)
        if self.name == "action":
            check_action(given.get("action"), given.get("args", {}))


# Parameters that are whole numbers, with their least value.
_INTS = {"page": 0, "pages": 1, "vcpu": 0, "rounds": 1}
_STRS = ("vm", "thread", "action")


def _check_value(event: str, key: str, x: Any) -> None:
    if key in _INTS and (not isinstance(x, int) or isinstance(x, bool) or x < _INTS[key]):
        raise ValueError(f"event {event!r}: {key} must be a whole number >= {_INTS[key]} "
                         f"(or a list of them), got {x!r}")
    if key in _STRS and not isinstance(x, str):
        raise ValueError(f"event {event!r}: {key} must be a name, got {x!r}")
    if key == "args" and not isinstance(x, dict):
        raise ValueError(f"event {event!r}: args must be a mapping of the action's arguments, "
                         f"e.g. {{proc: qemu0, addr: vm0.ram}}; got {x!r}")


def check_action(key: Any, args: Any) -> None:
    """The escape hatch's action exists and its arguments validate (docs/scenario-format.md)."""
    from pydantic import ValidationError

    from memfail.model.actions import ACTION_TYPES, parse_action
    from memfail.scenario.loader import load_extensions

    load_extensions()
    if key not in ACTION_TYPES:
        close = difflib.get_close_matches(str(key), list(ACTION_TYPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"event 'action': unknown action {key!r}{hint}; actions: "
                         f"{', '.join(sorted(ACTION_TYPES))}")
    if not isinstance(args, dict):
        raise ValueError(f"event 'action': the arguments of {key} must be a mapping, got "
                         f"{args!r}")
    try:
        action = parse_action(key, dict(args))
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"event 'action': args{'.' + where if where else ''}: "
                         f"{err['msg']}") from None
    # what a scenario's loader checks beyond the schema: the syntax of sizes and addresses,
    # and the values the model would only reject while running (a scenario step is refused
    # for them, so is the same step here)
    from memfail.scenario.errors import ScenarioError
    from memfail.scenario.loader import check_action as check_step_action

    try:
        check_step_action(action, key)
    except ScenarioError as e:
        raise ValueError(f"event 'action': args{'.' + e.field if e.field else ''}: "
                         f"{e.message}") from None


# --------------------------------------------------------------------------- naming


def vm_of(cfg: CheckConfig, name: str) -> VmSpec:
    return next(v for v in cfg.vms if v.name == name)


def mem_fd(vm: VmSpec) -> str:
    """The VMM's fd of the VM's guest memory (a guest_memfd, or a HugeTLB memfd)."""
    return vm.gmem or f"{vm.name}.mem"


def ram(vm: VmSpec, page: int) -> str:
    """The VMM's mapping of guest memory, offset by whole pages."""
    return f"{vm.name}.ram" if page == 0 else f"{vm.name}.ram+{page}p"


def vcpu_thread(cfg: CheckConfig, vm: VmSpec, vcpu: int) -> str:
    proc = next(p for p in cfg.processes if p.name == vm.vmm)
    vcpus = [t for t in proc.threads if t.startswith("vcpu")]
    return vcpus[vcpu % len(vcpus)] if vcpus else proc.threads[-1]


def page_size(cfg: CheckConfig) -> int:
    return 4096


def _kvm(event: str, args: dict[str, Any], fallback: list[StepSpec]) -> list[StepSpec]:
    return [(KVM_KEYS[event], args)] if kvm_model() else fallback


# --------------------------------------------------------------------------- expansions


def _target(cfg: CheckConfig, p: dict[str, Any]) -> dict[str, Any]:
    """The physical page: the frame that backed (vm, page) at set-up when known (``_pfn``),
    so an error stays in its frame across punch hole, release and reallocation."""
    if p.get("_pfn") is not None:
        return {"pfn": p["_pfn"]}
    vm = vm_of(cfg, p["vm"])
    return {"proc": vm.vmm, "file": mem_fd(vm), "offset": p["page"] * page_size(cfg)}


def _hw_error(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    return [("hw_error", {**_target(cfg, p), "detect": p["detect"]})]


def _scrub(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    return [("scrub", _target(cfg, p))]


def _access(thread: str, vm: VmSpec, p: dict[str, Any]) -> list[StepSpec]:
    key = "mem_write" if p.get("write") else "mem_read"
    return [(key, {"proc": vm.vmm, "thread": thread, "addr": ram(vm, p["page"])})]


def _vcpu_access(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return _kvm("vcpu_access", {"vm": vm.name, "vcpu": p["vcpu"],
                                "gpa": p["page"] * page_size(cfg),
                                "op": "write" if p["write"] else "read"},
                _access(vcpu_thread(cfg, vm, p["vcpu"]), vm, p))


def _vmm_access(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    proc = next(x for x in cfg.processes if x.name == vm.vmm)
    return _access(p["thread"] or proc.threads[0], vm, p)


def _kernel_access(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    """A kernel user of the inventory (docs/kernel-users.md) reads a page of guest memory.
    ``user`` names it; without one, ``checks_hwpoison`` picks kcore (checks PG_hwpoison, no
    machine-check fixup) or kworker (no check, copy_mc), and both flags override."""
    vm = vm_of(cfg, p["vm"])
    user = p["user"]
    checks, mc_safe = p["checks_hwpoison"], p["mc_safe"]
    if user is None:
        checks = True if checks is None else checks
        mc_safe = False if mc_safe is None else mc_safe
        user = "kcore" if checks else "kworker"
    args: dict[str, Any] = {"user": user, "vm": vm.name, "gpa": p["page"] * page_size(cfg)}
    if checks is not None:
        args["checks_hwpoison"] = checks
    if mc_safe is not None:
        args["mc_safe"] = mc_safe
    # Host-only stand-in for a kernel user that checks PG_hwpoison: pread() of the page.
    fallback: list[StepSpec] = [("pread", {"proc": vm.vmm, "fd": mem_fd(vm),
                                           "offset": p["page"] * page_size(cfg), "len": 4096})]
    return _kvm("kernel_access", args, fallback if checks is not False else [])


def _convert(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return _kvm("convert", {"vm": vm.name, "gpa": p["page"] * page_size(cfg),
                            "size": p["pages"] * page_size(cfg),
                            "private": p["to"] == "private"}, [])


def _fault(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return _kvm("fault", {"vm": vm.name, "gpa": p["page"] * page_size(cfg), "op": "write"},
                _access(vcpu_thread(cfg, vm, 0), vm, {"page": p["page"], "write": True}))


def _punch_hole(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return [("fallocate", {"proc": vm.vmm, "fd": mem_fd(vm), "mode": "punch_hole",
                           "offset": p["page"] * page_size(cfg),
                           "len": p["pages"] * page_size(cfg)})]


def _close(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return [("close", {"proc": vm.vmm, "fd": mem_fd(vm)})]


def _release(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    steps: list[StepSpec] = []
    if host_mapped(cfg, vm):
        steps.append(("munmap", {"proc": vm.vmm, "addr": ram(vm, 0)}))
    steps.append(("close", {"proc": vm.vmm, "fd": mem_fd(vm)}))
    if kvm_model() and vm.gmem:
        steps.append(("vm_destroy", {"vm": vm.name}))
    return steps


def host_mapped(cfg: CheckConfig, vm: VmSpec) -> bool:
    """Whether the VMM maps guest memory (always without the KVM model; with it, only a
    guest_memfd created with the mmap flag)."""
    if not kvm_model() or not vm.gmem:
        return True
    g = next(g for g in cfg.guest_memfd if g.name == vm.gmem)
    return "mmap" in g.flags


def _realloc(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return [("fallocate", {"proc": vm.vmm, "fd": mem_fd(vm), "mode": "allocate",
                           "offset": p["page"] * page_size(cfg),
                           "len": p["pages"] * page_size(cfg)})]


# ---- machine-check delivery and guest behaviours (kernel/mce.py, vmm/guest.py, docs/mce.md)


def _guest_run(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return _kvm("guest_run", {"vm": vm.name, "gpa": p["page"] * page_size(cfg),
                              "rounds": p["rounds"], "vcpu": p["vcpu"]}, [])


def _vcpu_mce(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return _kvm("vcpu_mce", {"vm": vm.name, "vcpu": p["vcpu"],
                             "gpa": p["page"] * page_size(cfg)}, [])


def _task_work(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    vm = vm_of(cfg, p["vm"])
    return _kvm("task_work", {"vm": vm.name, "vcpu": p["vcpu"]}, [])


def _action(cfg: CheckConfig, p: dict[str, Any]) -> list[StepSpec]:
    return [(p["action"], dict(p["args"]))]


VM = Param(REQUIRED, doc="the VM whose memory it is about")
PAGE = Param(0, doc="base-page index in the VM's memory")

EVENTS: dict[str, EventDef] = {e.name: e for e in (
    EventDef("hw_error", "An uncorrectable error appears in a page (latent: found when "
             "consumed; scrub/ghes: detected now, AO).",
             {"vm": VM, "page": PAGE, "detect": Param("latent", ("latent", "scrub", "ghes"))},
             _hw_error, error=True),
    EventDef("scrub", "Patrol scrub reaches a page: a latent error becomes an AO failure.",
             {"vm": VM, "page": PAGE}, _scrub),
    EventDef("vcpu_access", "A vCPU of the VM accesses its memory (guest mode).",
             {"vm": VM, "page": PAGE, "vcpu": Param(0), "write": Param(False, (False, True))},
             _vcpu_access, needs=("kvm",)),
    EventDef("vmm_access", "A VMM thread touches guest memory through its host mapping.",
             {"vm": VM, "page": PAGE, "thread": Param(None), "write": Param(False, (False, True))},
             _vmm_access),
    EventDef("kernel_access", "A host kernel user reads guest memory: `user` names one of the "
             "inventory (docs/kernel-users.md: its check and its copy as the kernel has them); "
             "`checks_hwpoison` / `mc_safe` override it.",
             {"vm": VM, "page": PAGE,
              "user": Param(None, MODELLED_USERS, "a kernel user (memfail kernel-users)"),
              "checks_hwpoison": Param(None, (False, True)),
              "mc_safe": Param(None, (False, True))}, _kernel_access, needs=("kvm",)),
    EventDef("convert", "Convert a range shared<->private (splits/merges HugeTLB folios).",
             {"vm": VM, "page": PAGE, "pages": Param(1), "to": Param("shared",
                                                                     ("shared", "private"))},
             _convert, needs=("gmem",)),
    EventDef("punch_hole", "fallocate(PUNCH_HOLE) on guest memory.",
             {"vm": VM, "page": PAGE, "pages": Param(1)}, _punch_hole),
    EventDef("close", "The VMM closes its guest-memory fd.", {"vm": VM}, _close),
    EventDef("release", "Every holder of the guest memory goes: the inode is released.",
             {"vm": VM}, _release),
    EventDef("realloc", "fallocate(ALLOCATE) on the VM's guest-memory fd over the pages: "
             "a hole (punched) is filled again from the HugeTLB pool, perhaps with a frame "
             "another VM freed.",
             {"vm": VM, "page": PAGE, "pages": Param(1)}, _realloc),
    EventDef("fault", "A stage-2 fault on a page of guest memory.",
             {"vm": VM, "page": PAGE}, _fault, needs=("kvm",)),
    EventDef("guest_run", "The guest behaves as the VM's `behaviour` says at a page for "
             "`rounds` rounds (hostile: every vCPU loads it, careless: vCPU 0, confidential: "
             "re-executes on `vcpu`).",
             {"vm": VM, "page": PAGE, "rounds": Param(2), "vcpu": Param(0)}, _guest_run,
             needs=("kvm",)),
    EventDef("vcpu_mce", "A vCPU takes a machine check on a page now; its task work waits for "
             "a `task_work` event or its next entry, so other vCPUs can consume in that "
             "window (M7).",
             {"vm": VM, "page": PAGE, "vcpu": Param(0)}, _vcpu_mce, needs=("kvm",)),
    EventDef("task_work", "A vCPU's queued machine-check task work runs (kill_me_maybe, M8).",
             {"vm": VM, "vcpu": Param(0)}, _task_work, needs=("kvm",)),
    EventDef("action", "Any model action: `action: KEY`, `args: {...}` (escape hatch).",
             {"action": Param(REQUIRED, doc="an action key"), "args": Param({})}, _action),
)}


def event_names() -> list[str]:
    return list(EVENTS)


def labels_of(name: str, params: dict[str, Any]) -> list[Label]:
    """Every concrete label of one alphabet entry: list-valued parameters vary (in order)."""
    spec = EVENTS[name]
    full = {k: params.get(k, p.default) for k, p in spec.params.items()}
    keys = list(full)
    choices = [v if isinstance(v, list) and k != "args" else [v] for k, v in full.items()]
    out: list[Label] = []
    for combo in product(*choices):
        out.append((name, tuple((k, _freeze(v)) for k, v in zip(keys, combo, strict=True))))
    return out


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def thaw_params(label: Label) -> dict[str, Any]:
    params = dict(label[1])
    if label[0] == "action":
        params["args"] = dict(params["args"])
    return params
