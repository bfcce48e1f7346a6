"""Profile eager CUDA decode steps (where the Python time goes), for the device machine."""

import cProfile
import pstats
import sys

import cupy

from lowbit.runtime.bench_decode import preset_config, random_cuda_ops
from lowbit.runtime.config import from_dict
from lowbit.runtime.model import Transformer

config, scheme = (sys.argv[1:] + ["smollm2-135m", "bf16"])[:2]
cfg = from_dict(preset_config(config))
ops = random_cuda_ops(cfg, scheme, cuda_graph=False)
model = Transformer(cfg, ops, 256)
model.forward(cupy.arange(8), 0)
for i in range(5):
    ops.decode_step(model, 1, 8 + i)
pr = cProfile.Profile()
pr.enable()
for i in range(20):
    ops.decode_step(model, 1, 13 + i)
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
