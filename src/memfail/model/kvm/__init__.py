"""KVM and guest_memfd in the model: VMs, vCPUs, memslots, stage-2 tables, guest_memfd."""
