"""Leader lease, cluster keys and watches on etcd (the DCS role, after Patroni)."""
