"""Host kernel model: memory, folios, page cache, address spaces, tasks and memory_failure()."""
