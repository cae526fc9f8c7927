"""Check configurations: the shipped standard file, the schema, and one-line located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from memfail.check.config import ConfigError, load_config, load_config_text, standard_config
from memfail.check.events import EVENTS, labels_of
from memfail.check.properties import PROPERTY_NAMES

BASE = """\
policies: [minimum]
host: {hugepages: {2M: 1}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early}}
vms:
  - {name: vm0, vmm: qemu0}
events:
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "c.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_standard_config_loads() -> None:
    cfg = standard_config()
    assert "minimum" in cfg.policies and cfg.geometry.pmd_order == 2
    assert {e.event for e in cfg.events} >= {"hw_error", "scrub", "vcpu_access", "punch_hole",
                                              "release", "realloc", "convert", "kernel_access"}


def test_standard_config_holds_what_docs_check_md_lists() -> None:
    """docs/check.md, The standard configuration: several VMs, two errors in one huge folio,
    conversion both ways over the whole huge page, punch hole and release, the guest
    behaviours, concurrent vCPU consumption and kernel users from the inventory."""
    from memfail.model.policy.registry import policy_names

    cfg = standard_config()
    assert set(cfg.policies) == set(policy_names())
    assert len(cfg.vms) >= 3
    assert {v.behaviour for v in cfg.vms} >= {"careless", "hostile", "confidential"}
    assert cfg.bounds.errors == 2

    def labels(event: str) -> list[dict[str, object]]:
        return [dict(lab[1]) for e in cfg.events if e.event == event
                for lab in labels_of(e.event, e.params)]

    errors = labels("hw_error")
    assert len({p["page"] for p in errors if p["vm"] == "vm0"}) == 2  # one huge folio
    converts = labels("convert")
    assert {c["to"] for c in converts} == {"private", "shared"}
    assert all(c["pages"] == 1 << cfg.geometry.pmd_order for c in converts)
    assert labels("punch_hole") and labels("release")
    assert {k["user"] for k in labels("kernel_access")} >= {"kcore", "vmcore", "vhost"}
    assert len({m["vcpu"] for m in labels("vcpu_mce")}) == 2
    assert len({p["vm"] for e in ("hw_error", "vcpu_access") for p in labels(e)}) == 3


def test_list_parameters_vary_in_order() -> None:
    cfg = load_config_text(BASE + "  - {event: hw_error, vm: vm0, page: [0, 1], "
                           "detect: [latent, scrub]}\n")
    labels = labels_of(cfg.events[0].event, cfg.events[0].params)
    assert [dict(lab[1])["page"] for lab in labels] == [0, 0, 1, 1]
    assert [dict(lab[1])["detect"] for lab in labels] == ["latent", "scrub"] * 2


@pytest.mark.parametrize(("tail", "expect"), [
    ("  - {event: hw_eror, vm: vm0}\n", "c.yaml:8: events[0].event: unknown event 'hw_eror'"),
    ("  - {event: hw_error, vm: vmx}\n", "c.yaml:8: events[0].vm: unknown vm 'vmx'"),
    ("  - {event: hw_error, vm: vm0, pg: 1}\n", "c.yaml:8: events[0]: event 'hw_error' has no "
     "parameter 'pg'"),
    ("  - {event: hw_error}\n", "c.yaml:8: events[0]: event 'hw_error' needs vm"),
    ("  - {event: scrub, vm: vm0}\nbounds: {depth: -1}\n", "c.yaml:9: bounds.depth:"),
    ("  - {event: scrub, vm: vm0}\nbogus: 1\n", "c.yaml:9: bogus: unknown field"),
    ("  - {event: scrub, vm: vm0}\nproperties: [contaned]\n",
     "c.yaml:9: properties[0]: unknown property 'contaned'"),
    # no coercion: a YAML boolean or a quoted number is not a whole number, nor 1 a boolean
    ("  - {event: scrub, vm: vm0}\nbounds: {depth: true}\n",
     "c.yaml:9: bounds.depth: Input should be a valid integer, got True"),
    ("  - {event: scrub, vm: vm0, limit: '2'}\n",
     "c.yaml:8: events[0].limit: Input should be a valid integer, got '2'"),
    ("  - {event: vmm_access, vm: vm0, page: 0, write: 1}\n",
     "c.yaml:8: events[0]: event 'vmm_access': write must be one of false, true, got 1"),
    ("  - {event: scrub, vm: vm0}\nbounds: [4, 1]\n",
     "c.yaml:9: bounds: should be a mapping of its fields ({field: value, ...})"),
])
def test_errors_name_file_line_and_field(tail: str, expect: str) -> None:
    assert error_of(BASE + tail).startswith(expect)


@pytest.mark.parametrize(("text", "expect"), [
    (BASE + "  - {event: hw_error, vm: vm0, page: 4}\n",
     "c.yaml:8: events[0].page: page 4 is beyond vm0's guest memory: 4 pages of 4 KiB"),
    (BASE + "  - {event: punch_hole, vm: vm0, page: 2, pages: 4}\n",
     "c.yaml:8: events[0].page: page 2 + 4 pages is beyond vm0's guest memory"),
    (BASE + "  - {event: realloc, vm: vm0, page: 4, pages: 4}\n",
     "c.yaml:8: events[0].page: page 4 is beyond vm0's guest memory"),
    (BASE.replace("{2M: 1}", "{2M: 0}") + "  - {event: scrub, vm: vm0}\n",
     "c.yaml:6: vms[0].memory: the guest memory needs 1 2M HugeTLB page(s) but "
     "host.hugepages gives 0; set host: {hugepages: {2M: 1}}"),
    # the pool a counterexample's scenario would refuse (scaled pages: 16K each here)
    (BASE.replace("{hugepages: {2M: 1}}", "{memory: 64M, hugepages: {2M: 5000}}")
     + "  - {event: scrub, vm: vm0}\n",
     "c.yaml:2: host.hugepages: the HugeTLB pools take 80000K in the scaled geometry (a 2M "
     "page is 16K, a 1G page 32K) but host.memory is 64M"),
])
def test_guest_memory_the_set_up_cannot_build_is_refused(text: str, expect: str) -> None:
    """Pages past a VM's memory and pools too small for it are located input errors, not a
    run where the event silently does nothing or a set-up that fails with ENOMEM."""
    assert error_of(text).startswith(expect)


def test_references_are_checked() -> None:
    text = BASE.replace("vmm: qemu0", "vmm: qemu9") + "  - {event: scrub, vm: vm0}\n"
    assert error_of(text).startswith("c.yaml:6: vms[0].vmm: 'qemu9' is not a process")


@pytest.mark.parametrize(("text", "expect"), [
    ("a: &x 1\nb: *x\n", "c.yaml:1: a: anchors and aliases are not supported"),
    ("policies: !!python/object:os.system [a]\n", "YAML tag '!!python/object:os.system' is not"),
    ("policies: [a\n", "invalid YAML"),
    ("", "empty file"),
    ("- a\n", "the top level is a list; it must be a mapping"),
])
def test_unsafe_or_malformed_yaml(text: str, expect: str) -> None:
    assert expect in error_of(text)


def test_binary_and_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_bytes(b"\0\1\2")
    with pytest.raises(ConfigError, match="binary file"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_every_event_and_property_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "check.md").read_text()
    for name in EVENTS:
        assert f"`{name}`" in doc
    for name in PROPERTY_NAMES:
        assert f"`{name}`" in doc


@pytest.mark.parametrize(("tail", "expect"), [
    ("  - {event: vcpu_access, vm: vm0, page: null}\n",
     "c.yaml:8: events[0]: event 'vcpu_access': page must be a whole number >= 0"),
    ("  - {event: vcpu_access, vm: vm0, page: 1.5}\n", "page must be a whole number"),
    ("  - {event: guest_run, vm: vm0, page: 0, rounds: 0}\n",
     "c.yaml:8: events[0]: event 'guest_run': rounds must be a whole number >= 1"),
    ("  - {event: kernel_access, vm: vm0, page: 0, user: kcore, mc_safe: maybe}\n",
     "mc_safe must be one of false, true, got 'maybe'"),
    ("  - {event: scrub, vm: vm0}\nsetup:\n  - mmap: {proc: nobody, name: b, size: 4K}\n",
     "c.yaml:10: setup[0].mmap.proc: 'nobody' is not a process (spawn it in an earlier step)"),
    ("  - {event: punch_hole, vm: vm0, pages: 0}\n", "pages must be a whole number >= 1"),
    ("  - {event: action, action: meminfo, args: 3}\n", "args must be a mapping"),
    ("  - {event: action, action: mem_reed, args: {proc: qemu0, addr: x}}\n",
     "unknown action 'mem_reed' (did you mean 'mem_read'?)"),
    ("  - {event: action, action: mem_read, args: {proc: qemu0}}\n", "args.addr: Field required"),
    ("  - {event: action, action: mmap, args: {proc: qemu0, name: x, size: big}}\n",
     "c.yaml:8: events[0]: event 'action': args.size: expected a size such as 4096"),
    ("  - {event: action, action: mem_read, args: {proc: qemu0, addr: 'x+'}}\n",
     "args.addr: bad address 'x+'"),
    ("  - {event: action, action: mem_read, args: {proc: nobody, addr: x}}\n",
     "c.yaml:8: events[0].args.proc: 'nobody' is not a process"),
    ("  - {event: vmm_access, vm: vm0, thread: io}\n",
     "c.yaml:8: events[0].thread: 'io' is not a thread of qemu0"),
    ("  - {event: vcpu_access, vm: vm0, vcpu: 3}\n", "c.yaml:8: events[0].vcpu: vCPU 3 does not"),
    ("  - {event: scrub, vm: vm0}\nsetup:\n  - mmap: {proc: qemu0, name: b, sise: 4K}\n",
     "c.yaml:10: setup[0].mmap: args.size: Field required"),
    ("  - {event: scrub, vm: vm0}\nsetup:\n  - mmapp: {proc: qemu0}\n",
     "c.yaml:10: setup[0].mmapp: unknown action 'mmapp' (did you mean 'mmap'?)"),
])
def test_event_and_setup_arguments_are_checked_when_loading(tail: str, expect: str) -> None:
    """Values the model cannot use are one-line input errors, not an internal error, a
    multi-line validation dump or an event that silently does nothing."""
    msg = error_of(BASE + tail)
    assert expect in msg, msg


def test_a_vcpu_thread_vm_create_adds_need_not_be_declared() -> None:
    """vm_create gives the VMM a thread vcpuN per vCPU (kvm.do_vm_create; docs/scenario-format.md),
    so an event may name vcpu0 of a VM with one vCPU without listing it under the process's
    threads; vcpu1 of that VM does not exist, and the error lists the threads there are."""
    text = BASE.replace("threads: [main, vcpu0]", "threads: [main]")
    cfg = load_config_text(text + "  - {event: vmm_access, vm: vm0, page: 0, thread: vcpu0}\n",
                           "c.yaml")
    assert cfg.events[0].params["thread"] == "vcpu0"
    msg = error_of(text + "  - {event: vmm_access, vm: vm0, page: 0, thread: vcpu1}\n")
    assert "'vcpu1' is not a thread of qemu0 (threads: main, vcpu0)" in msg, msg


def test_inline_policies_are_named_by_their_base_and_knobs() -> None:
    """A policy of the file may be knobs on a preset, as a mapping or as the name memfail
    gives it (``minimum{unmap_stage2=folio}``); knobs equal to the preset's leave the preset;
    ``name:`` (which would not read back), an unknown knob or value and a policy listed twice
    are errors naming the entry."""
    tail = "  - {event: scrub, vm: vm0}\n"

    def with_policies(*entries: str) -> str:
        return BASE.replace("policies: [minimum]\n", "policies:\n" + "".join(
            f"  - {e}\n" for e in entries)) + tail

    cfg = load_config_text(with_policies("{base: minimum, unmap_stage2: folio}",
                                         "kill-vm{unconsumed=defer}",
                                         "{base: unmap, unmap_stage2: folio}"), "c.yaml")
    assert cfg.policies == ["minimum{unmap_stage2=folio}", "kill-vm{unconsumed=defer}", "unmap"]
    msg = error_of(with_policies("{base: minimum, name: mine, unmap_stage2: folio}"))
    assert msg.startswith("c.yaml:2: policies[0]: policy 'mine': `name` is for scenarios"), msg
    assert "(this one is minimum{unmap_stage2=folio})" in msg
    assert "policy knob unmap_stage2: 'foo' is not one of" in \
        error_of(with_policies("{base: minimum, unmap_stage2: foo}"))
    assert "unknown policy knob 'unmap'" in error_of(with_policies("minimum{unmap=folio}"))
    msg = error_of(with_policies("minimum", "{base: minimum, unmap_stage2: folio}",
                                 "minimum{unmap_stage2=folio}"))
    assert "c.yaml:4: policies[2]: minimum{unmap_stage2=folio} is policies[1] again" in msg


def test_host_memory_is_in_the_range_a_scenario_takes() -> None:
    """A host of under 64M would fail in the set-up (the error blamed --engine) and its
    counterexamples would not load in `memfail run`: it is refused where it is written."""
    text = BASE.replace("host: {hugepages: {2M: 1}}", "host: {memory: 4M, hugepages: {2M: 1}}")
    msg = error_of(text + "  - {event: scrub, vm: vm0}\n")
    assert msg == "c.yaml:2: host.memory: host memory 4M is out of range; give between 64M " \
        "and 1P", msg


def test_properties_are_a_non_empty_list_of_distinct_names() -> None:
    tail = "  - {event: scrub, vm: vm0}\n"
    msg = error_of(BASE + tail + "properties: []\n")
    assert msg.startswith("c.yaml:9: properties: an empty list checks nothing"), msg
    msg = error_of(BASE + tail + "properties: [contained, early-told, contained]\n")
    assert msg == "c.yaml:9: properties[2]: contained is listed twice; list each property " \
        "once", msg


def test_a_confidential_guest_needs_snp_or_tdx() -> None:
    text = BASE.replace("{name: vm0, vmm: qemu0}", "{name: vm0, vmm: qemu0, type: "
                        "sw-protected, behaviour: confidential}")
    assert error_of(text + "  - {event: scrub, vm: vm0}\n") == \
        "c.yaml:6: vms[0]: behaviour confidential needs type snp or tdx, not sw-protected"


def test_two_vms_cannot_share_one_guest_memfd() -> None:
    text = BASE.replace("vms:\n  - {name: vm0, vmm: qemu0}\n",
                        "guest_memfd:\n  - {name: g0}\nvms:\n  - {name: vm0, vmm: qemu0, gmem: g0}\n"
                        "  - {name: vm1, vmm: qemu0, gmem: g0}\n")
    assert "guest_memfd 'g0' is already the memory of 'vm0'" in error_of(
        text.replace("{2M: 1}", "{2M: 2}") + "  - {event: scrub, vm: vm0}\n")
