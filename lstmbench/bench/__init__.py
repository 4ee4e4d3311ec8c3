"""The benchmark harness, a module per job: workloads (what is timed), timing (the one clock),
run (verify then time: the grid and the suite), rows (a row of the table), peers (the torch
peer), machine (what the machine is and its ceilings; peak measures them), scaling (epoch time
against dataset size), distributed (data-parallel scaling), formatting (tables and the plot),
flops (the FLOP model), and report (the offline page of asv's results)."""
