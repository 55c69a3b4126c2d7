"""`jetbook bench` and the measurements it does not make: one bench tree, one implementation of each part.

`jetbook bench` (cli, run, report, plot) measures the pipeline against the
transport's own limit. Its parts:

  workload   the seeded flow (makers around a moving mid, takers, cancels) and
             everything the core will make of it, to check the system did all the work
  procs      the benchmark's own child processes, their CPU time, a probe of the streams
  floor      the transport floor: the same messages through the same path, no matching
  core       the pure core's loops (no I/O)
  memory     RSS of a core holding N resting orders (run as a subprocess)
  run        the whole `jetbook bench` run, its table and its JSON
  plot       the PNG of --plot
  spy        a summary of py-spy's raw profiles

The measurements it does not make run as `python -m jetbook.bench.<name>`
(docs/PERFORMANCE.md gives each its command and its figures): core (adds the
parse loop and a profile), core_mix (amends in the mix), model_cost (the
figures behind two core choices), engine_phases (where the engine's wall clock
goes), atomic_floor (atomic batches by size, one small write's round trip),
latency_probe (one order at a time), recovery (restart, snapshots, failover),
replay (raw read, rebuild and verify of one log).

Nothing here asserts a duration: a benchmark reports, and checks only that the
work was done.
"""
