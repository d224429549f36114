"""Benchmarks of goverse: each scenario measures a bare grpc.aio baseline and the system
(real goverse-node and goverse-gate processes) in the same run. ``python -m bench --help``."""
