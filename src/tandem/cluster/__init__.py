"""The per-node agent (the Heartbeat/Pacemaker role): HA loop, resources, fencing."""
