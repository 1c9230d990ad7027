"""Tools around the pipeline: phantom generators and benchmarks."""
