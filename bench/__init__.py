"""Benchmarks of the upload service; run with `./bench/run`."""
