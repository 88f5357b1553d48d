"""Serving: the KServe v2 protocol over HTTP and gRPC, dynamic batching, statistics and metrics, Triton model
repositories, and a launcher that runs `effattn serve` in a subprocess (for tests, load generators and users' own
integration tests). Sits above runtime/: it serves Runners and never builds them."""
