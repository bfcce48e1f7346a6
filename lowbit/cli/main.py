"""The `lowbit` command: a click group whose subcommands live one per module and load on demand."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from lowbit import __version__

#: command name -> (module under lowbit.cli, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "quantize": ("quantize", "quantize", "Convert a BF16 checkpoint to fp8-block, nvfp4 or int4."),
    "inspect": ("inspect", "inspect", "Show what is in a checkpoint: scheme, tensors, sizes, ratio."),
    "synth": ("synth", "synth", "Write a BF16 checkpoint with random weights and real shapes."),
    "verify": ("verify", "verify", "Prove every quantized tensor (structure, error, GPU kernels)."),
    "bench": ("bench", "bench", "Benchmark the kernels against cuBLAS and torch on the GPU."),
    "chat": ("chat", "chat", "Talk to a converted model."),
    "generate": ("generate", "generate", "One-shot generation with timing."),
    "import-gguf": ("import_gguf", "import_gguf", "Turn a GGUF Llama-family model into a BF16 HF checkpoint."),
    "demo": ("demo", "demo", "The whole mission on a real model in one command."),
    "batch": ("batch", "batch", "Convert many models x schemes from a TOML manifest."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"lowbit.cli.{module}"), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lowbit")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """lowbit: BF16 Hugging Face checkpoints to FP8-block, NVFP4 and Int4, proved on the GPU."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    from lowbit.cli.errors import run_cli

    sys.exit(run_cli(cli))
