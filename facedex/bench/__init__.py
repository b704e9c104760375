"""Benchmarks (`facedex bench ...`) and the seeded datasets they, the demo and the tests share."""
