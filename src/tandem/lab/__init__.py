"""A cluster on one machine: network-namespace hosts, fault injection, event log."""
