"""Verification: structure, quantization error and GPU kernels vs references; the benchmark harness."""
