"""CloudStack-compatible management server and the simulated hypervisor host."""
