"""Serving: the KServe v2 protocol over HTTP and gRPC, dynamic batching, statistics and metrics, and Triton model
repositories. Sits above runtime/: it serves Runners and never builds them. (The harness that runs
`effattn serve` in a subprocess for tests and benchmarks is tests/harness.py.)"""
