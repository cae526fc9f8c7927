"""`memfail search`: the cheapest guest_memfd memory-failure policies that keep a set of check
properties, found over the policy knobs instead of argued (space, engine, report, cli)."""
