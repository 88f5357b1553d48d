"""Measuring: timing (CUDA events on GPUs), memory probes in a child process, roofline floors and the benchmark
that runs models x backends x sizes interleaved against eager PyTorch. Sits above runtime/ and export/."""
