"""Decode x86 machine-check records: MCi_STATUS bits, the MCA error code, and the severity the
kernel's grader (arch/x86/kernel/cpu/mce/severity.c) would give a memory error.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# MCi_STATUS bits (arch/x86/include/asm/mce.h)
MCI_STATUS_VAL = 1 << 63
MCI_STATUS_OVER = 1 << 62
MCI_STATUS_UC = 1 << 61
MCI_STATUS_EN = 1 << 60
MCI_STATUS_MISCV = 1 << 59
MCI_STATUS_ADDRV = 1 << 58
MCI_STATUS_PCC = 1 << 57
MCI_STATUS_S = 1 << 56          # Intel: signalled (MCE, not CMCI)
MCI_STATUS_AR = 1 << 55         # Intel: action required (AMD: TCC)
MCI_STATUS_SYNDV = 1 << 53      # AMD SMCA
MCI_STATUS_DEFERRED = 1 << 44   # AMD
MCI_STATUS_POISON = 1 << 43     # AMD

# struct mce::cpuvendor (X86_VENDOR_*)
VENDORS = {0: "Intel", 1: "Cyrix", 2: "AMD", 3: "UMC", 5: "Centaur", 7: "Transmeta",
           8: "NSC", 9: "Hygon", 10: "Zhaoxin", 11: "Vortex"}
U64 = (1 << 64) - 1


class StatusBits(BaseModel):
    """MCi_STATUS decoded. ``mcacod`` is the architectural MCA error code (bits 15:0),
    ``mscod`` the model-specific code (bits 31:16)."""

    model_config = ConfigDict(frozen=True)

    val: bool
    over: bool
    uc: bool
    en: bool
    miscv: bool
    addrv: bool
    pcc: bool
    s: bool
    ar: bool
    deferred: bool = False
    poison: bool = False
    amd: bool = False
    mcacod: int
    mscod: int
    mcacod_text: str


def mcacod_text(code: int) -> str:
    """The compound error code class (Intel SDM vol. 3B, table 15-9 / 16-x)."""
    c = code & 0xFFFF
    if c == 0:
        return "no error"
    if (c & 0xFFF0) == 0x00C0:
        return "memory scrubbing error (SRAO)"
    if c == 0x017A:
        return "L3 explicit writeback error (SRAO)"
    if c == 0x0134:
        return "data load error (SRAR)"
    if c == 0x0150:
        return "instruction fetch error (SRAR)"
    if (c & 0xEF80) == 0x0080:
        ops = {0: "generic", 1: "read", 2: "write", 3: "address/command", 4: "scrubbing"}
        return f"memory controller {ops.get((c >> 4) & 7, 'reserved')} error"
    if (c & 0xEF00) == 0x0100:
        level = c & 3
        rrrr = {0: "generic", 1: "read", 2: "write", 3: "data read", 4: "data write",
                5: "instruction fetch", 6: "prefetch", 7: "eviction", 8: "snoop"}
        return f"cache L{level} {rrrr.get((c >> 4) & 0xF, 'reserved')} error"
    if (c & 0xEFF0) == 0x0010:
        return "TLB error"
    if (c & 0xE800) == 0x0800:
        return "bus/interconnect error"
    if c == 0x0400:
        return "internal timer error"
    if (c & 0xFC00) == 0x0400:
        return "internal unclassified error"
    return "other error"


def decode_status(status: int, vendor: int | None = None) -> StatusBits:
    s = status & U64
    amd = vendor in (2, 9)
    return StatusBits(
        val=bool(s & MCI_STATUS_VAL), over=bool(s & MCI_STATUS_OVER),
        uc=bool(s & MCI_STATUS_UC), en=bool(s & MCI_STATUS_EN),
        miscv=bool(s & MCI_STATUS_MISCV), addrv=bool(s & MCI_STATUS_ADDRV),
        pcc=bool(s & MCI_STATUS_PCC), s=bool(s & MCI_STATUS_S) and not amd,
        ar=bool(s & MCI_STATUS_AR) and not amd,
        deferred=amd and bool(s & MCI_STATUS_DEFERRED),
        poison=amd and bool(s & MCI_STATUS_POISON), amd=amd,
        mcacod=s & 0xFFFF, mscod=(s >> 16) & 0xFFFF, mcacod_text=mcacod_text(s),
    )


def is_memory_error(bits: StatusBits) -> bool:
    """A memory error in the sense of mce_is_memory_error(): a memory-controller code, or a
    cache-hierarchy error with a valid address (data load / scrub / writeback)."""
    c = bits.mcacod
    return (c & 0xEF80) == 0x0080 or ((c & 0xEF00) == 0x0100 and bits.addrv) \
        or (c & 0xFFF0) == 0x00C0


MCG_STATUS_RIPV = 1 << 0   # restart IP valid (arch/x86/include/asm/mce.h)
MCG_STATUS_EIPV = 1 << 1   # error IP valid
MCG_STATUS_MCIP = 1 << 2   # machine check in progress


def user_mode(cs: int | None) -> bool | None:
    """error_context() in severity.c: a machine check whose saved CS has RPL 3 was taken in
    user mode (a KVM guest counts, R45: kvm_machine_check() passes a fake frame with CS 3);
    None when the record does not carry CS."""
    return None if cs is None else (cs & 3) == 3


def severity(bits: StatusBits, mcgstatus: int | None = None, cs: int | None = None) -> str:
    """The grade severity.c gives this record, named as the kernel names it:
    ``corrected``, ``deferred``, ``UCNA``, ``SRAO``, ``SRAR``, ``panic`` or ``invalid``.

    For SRAR/SRAO the MCACOD of the error tells which (mce_severity_intel: a data load or
    instruction fetch with AR is SRAR; a scrub or L3 writeback without AR is SRAO); an
    uncorrected error with PCC, or an overflowed uncorrected error that is not recoverable,
    is ``panic``.

    MCG_STATUS of an action-required error, in the order of the severities[] table of
    mce_severity_intel (first match wins; M5, R47):

    * RIPV and EIPV both clear: "Neither restart nor error IP", PANIC in any context;
    * RIPV clear in kernel mode (``cs`` RPL 0, or no ``cs`` in the record: error_context()
      assumes IN_KERNEL when it has no usable CS): "In kernel and no restart IP", PANIC;
    * RIPV clear in user mode (``cs`` RPL 3): no PANIC row matches; the data load grades
      "Action required: data load error in a user process" (AR). do_machine_check() then
      queues task work for the thread instead of panicking (R44, R46): kill_me_maybe with
      MF_MUST_KILL (``!p->mce_ripv``) for a usable address since the 2023 patch "x86/mce:
      Check that memory address is usable for recovery", kill_me_now (``kill_current_task``)
      in kernels before it. The process is killed, the host goes on: ``SRAR``.
    """
    if not bits.val:
        return "invalid"
    if bits.deferred and not bits.uc:
        return "deferred"
    if not bits.uc:
        return "corrected"
    if bits.pcc:
        return "panic"
    if bits.amd:
        # AMD has no S/AR bits: an uncorrected error raised as #MC (MCG_STATUS.MCIP) was
        # consumed; one found by polling or deferred was not (mce_severity_amd)
        if bits.deferred or (bits.poison and not (mcgstatus or 0) & MCG_STATUS_MCIP):
            return "deferred"
        return "SRAR" if (mcgstatus or 0) & MCG_STATUS_MCIP else "UCNA"
    if not bits.s:
        if bits.poison or bits.deferred:
            return "deferred"
        if bits.over and not bits.en:
            return "panic"
        return "UCNA"
    if not bits.en:
        return "UCNA"
    if bits.ar:
        if mcgstatus is not None and not mcgstatus & MCG_STATUS_RIPV:
            if not mcgstatus & MCG_STATUS_EIPV:
                return "panic"          # Neither restart nor error IP
            if not user_mode(cs):
                return "panic"          # In kernel and no restart IP
        return "SRAR"
    return "SRAO"


def consumed(sev: str) -> bool:
    """Whether the error was met by a CPU load (action required) rather than found."""
    return sev == "SRAR"
