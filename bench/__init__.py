"""kiln benchmarks (`make bench`): each module with a ``BENCHMARK`` attribute is one benchmark.

See bench/README.md. Benchmarks report times; they never fail on a number.
"""
