"""lowbit: BF16 Hugging Face checkpoints to FP8-block, NVFP4 and Int4 safetensors."""

__version__ = "0.1.0"
