"""Performance: `bench` (ours against the naive port, GFLOP/s), FLOP counts and the machine's
matmul speed (`flops`), the slow reference port (`naive`), interleaved timing (`timing`)."""
