"""A QEMU-like VMM and the guest OS's reactions to machine checks."""
