"""Measuring: timing (CUDA events on GPUs), memory probes in a child process, roofline floors, the machine and
its load, and the benchmark (benchmark.py: run_bench; backends.py, results.py, plotting.py) that runs models x
backends x sizes interleaved against eager PyTorch. Sits above runtime/ and export/; runners come from
effattn.runtime.load."""
