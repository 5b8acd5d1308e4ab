"""Side-by-side benchmarks of tnderiv against its peers: ``python -m benchmarks run`` / ``report``."""
