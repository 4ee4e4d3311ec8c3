"""The benchmark harness: timing, the machine's ceilings, the grid and the suite of workloads,
the torch peer, dataset scaling, data-parallel scaling, and the offline report of asv's results."""
