"""Deterministic simulation of the HA layer (issue 7, item 1).

One seed drives everything: a simulated clock and event queue (:mod:`kernel`),
a model DCS with etcd's semantics (:mod:`dcs`), a lossy network between each
node and the DCS, replicated volumes as small state machines (:mod:`volume`),
agents that mirror ``tandem.cluster.agent`` and call the real ``decide()``
(:mod:`agent`), fault schedules (:mod:`schedule`) and a checker on the recorded
history (:mod:`checker`). ``python -m tandem.sim.run`` runs batches.
"""
