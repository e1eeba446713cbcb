"""Benchmarks and studies, run from the repository root as modules: ``python -m bench.X``
(``replicate``, ``base2new``, ``domains``, ``train_throughput``, ``classify_throughput``)."""
