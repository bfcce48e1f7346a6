"""`lowbit import-gguf MODEL.gguf OUT`: a GGUF Llama-family model -> BF16 Hugging Face checkpoint."""

from __future__ import annotations

import click


@click.command("import-gguf")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def import_gguf(gguf_file, out, overwrite):
    """Dequantize GGUF_FILE (gguf package, no torch) into OUT: safetensors, config, tokenizer."""
    from tqdm import tqdm

    from lowbit.gguf_import import import_gguf as run

    bar = tqdm(unit="tensor", desc="import", leave=False)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        path = run(gguf_file, out, overwrite=overwrite, progress=progress)
    finally:
        bar.close()
    click.echo(f"wrote {path} (BF16 safetensors, config.json, tokenizer.json, tokenizer_config.json)")
