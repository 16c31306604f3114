"""The replicated block device (the DRBD role): synchronous replication in user space."""
