"""``jobline simulate``: jobline on virtual time, replayable by seed (DESIGN §10).

The same roles as on Ray (``actors.wiring.build_role``: the gateway's application, the
processors, the sweeper, the ledger and its rules) run in one process on a virtual-time
event loop (:mod:`~loadtests.sim.loop`), against the fake vendors' core hosted in memory
(``vendors_fake.memory``, reached through jobline's own vendor adapters:
:mod:`~loadtests.sim.vendors`), with clients drawn from a traffic model
(:mod:`~loadtests.sim.traffic`, :mod:`~loadtests.sim.clients`). Faults come in on
virtual time (:mod:`~loadtests.sim.faults`, acted out by :mod:`~loadtests.sim.world`),
the invariants are checked as the run goes (:mod:`~loadtests.sim.watch`), every event is
folded into a hash (:mod:`~loadtests.sim.trace`), and a run ends with a capacity report
(:mod:`~loadtests.sim.report`). :mod:`~loadtests.sim.explore` runs many short seeded
fault schedules and shrinks a failing one. The product never imports any of this.
"""
