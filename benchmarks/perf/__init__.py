"""Performance benchmarks: what dynft costs per epoch, per snapshot and per decision.

Each module is a script (``python -m benchmarks.perf.<name>``) that prints its figures; the
measured values are recorded in ``docs/benchmarks.md``.
"""
