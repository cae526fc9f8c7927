"""The SPIN engine of `memfail check` (docs/check.md, "The SPIN engine")."""

from pathlib import Path


class EngineDisagreement(RuntimeError):
    """A SPIN trail the Python model does not confirm: a bug in one of the two models (the
    message names the trail, step by step, and where the Python model parted from it)."""


# Configurations the engines are checked to agree on (tests/test_check_spin*.py).
AGREE_CONFIG = Path(__file__).with_name("agree.yaml")
AGREE_TWO_CONFIG = Path(__file__).with_name("agree-two.yaml")
AGREE_KERNEL_CONFIG = Path(__file__).with_name("agree-kernel.yaml")
AGREE_CONVERT_CONFIG = Path(__file__).with_name("agree-convert.yaml")
AGREE_SPLIT_CONFIG = Path(__file__).with_name("agree-split.yaml")
AGREE_GUEST_CONFIG = Path(__file__).with_name("agree-guest.yaml")
AGREE_MCE_CONFIG = Path(__file__).with_name("agree-mce.yaml")
AGREE_HUGETLBFS_CONFIG = Path(__file__).with_name("agree-hugetlbfs.yaml")
AGREE_HUGETLBFS_GUESTS_CONFIG = Path(__file__).with_name("agree-hugetlbfs-guests.yaml")
