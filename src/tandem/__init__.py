"""tandem: keep a stateful service available when a machine dies, without losing
an acknowledged write (replicated volume + cluster agent + management server + lab)."""

__version__ = "0.1.0"
