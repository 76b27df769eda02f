"""Chaos testing: scenarios that break jobline on purpose and check its invariants."""
