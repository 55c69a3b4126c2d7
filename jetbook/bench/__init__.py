"""`jetbook bench`: one seeded order flow, measured against the transport's own limit.

The modules are the benchmark's parts, so the scripts in bench/ and the
`jetbook bench` command share one implementation of each:

  workload   the seeded flow (makers around a moving mid, takers, cancels) and
             everything the core will make of it, to check the system did all the work
  procs      the benchmark's own child processes, their CPU time, a probe of the streams
  floor      the transport floor: the same messages through the same path, no matching
  core       the pure core's loops (no I/O)
  memory     RSS of a core holding N resting orders (run as a subprocess)
  run        the whole `jetbook bench` run, its table and its JSON
  plot       the PNG of --plot
  spy        a summary of py-spy's raw profiles

Nothing here asserts a duration: a benchmark reports, and checks only that the
work was done.
"""
