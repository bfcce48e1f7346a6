"""GPU kernels (cupy only). Each kernel is a .cu file in cuda/ plus a thin validating launcher."""
