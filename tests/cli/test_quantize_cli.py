"""`lowbit quantize / inspect / synth` through the real entry point: exit codes, one-line errors, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lowbit.cli.errors import run_cli
from lowbit.cli.main import cli


def lowbit(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["lowbit", *map(str, args)])
    rc = run_cli(cli)
    out, err = capsys.readouterr()
    return rc, out, err


def test_synth_quantize_inspect_json(monkeypatch, capsys, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    rc, o, _ = lowbit(monkeypatch, capsys, "synth", "--arch", "qwen3_moe", "-o", src)
    assert rc == 0 and "wrote qwen3_moe/tiny" in o
    rc, o, err = lowbit(monkeypatch, capsys, "quantize", src, "-o", out, "--scheme", "int4",
                        "--group-size", "64", "--json", "--quiet")
    assert rc == 0 and err == ""  # --quiet: no progress bar
    s = json.loads(o)
    assert s["scheme"] == "int4" and s["options"] == {"group_size": 64, "asymmetric": False}
    assert s["quantized"] == 32 and s["bytes_in"] > s["bytes_out"] > 0
    rc, o, _ = lowbit(monkeypatch, capsys, "inspect", out, "--json")
    info = json.loads(o)
    assert rc == 0 and info["scheme"] == "int4" and info["counts"]["int4"] == 32
    row = next(r for r in info["modules"] if r["module"] == "model.layers.0.mlp.experts.0.down_proj")
    assert row["kind"] == "int4" and row["shape"] == [192, 256]
    assert 2.0 < info["ratio"] < 4.0
    rc, o, _ = lowbit(monkeypatch, capsys, "inspect", out)
    assert rc == 0 and "scheme int4" in o and "ratio" in o


def test_progress_bar_and_text_summary(monkeypatch, capsys, tmp_path):
    lowbit(monkeypatch, capsys, "synth", "--arch", "llama", "-o", tmp_path / "src")
    rc, o, err = lowbit(monkeypatch, capsys, "quantize", tmp_path / "src", "-o", tmp_path / "o",
                        "--scheme", "fp8-block", "--ignore", "down_proj")
    assert rc == 0 and "fp8-block: 12 tensors quantized" in o
    assert "kept BF16: model.layers.0.mlp.down_proj.weight: --ignore down_proj" in o
    assert "B/s" in err and "warning:" in err  # tqdm over bytes; fp8 serving warnings


@pytest.mark.parametrize("args, message", [
    (["quantize", "{tmp}/nope", "-o", "{tmp}/o", "--scheme", "nvfp4"], "no such directory"),
    (["quantize", "{src}", "-o", "{src}", "--scheme", "nvfp4"], "overwrite the source"),
    (["inspect", "{tmp}"], "missing config.json"),
])
def test_errors_exit_2_one_line(monkeypatch, capsys, tmp_path, args, message):
    lowbit(monkeypatch, capsys, "synth", "--arch", "llama", "-o", tmp_path / "src")
    args = [a.format(tmp=tmp_path, src=tmp_path / "src") for a in args]
    rc, _, err = lowbit(monkeypatch, capsys, *args)
    assert rc == 2 and err.count("\n") <= 3 and "Traceback" not in err
    if message:
        assert err.startswith("lowbit: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("env_extra", [{"HF_HUB_OFFLINE": "1"},
                                       {"HF_ENDPOINT": "http://10.255.255.1", "HF_HUB_ETAG_TIMEOUT": "5"}])
def test_hub_offline_one_line_no_hang(tmp_path, env_extra):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), **env_extra)
    p = subprocess.run([sys.executable, "-m", "lowbit", "quantize", "someorg/somemodel@main", "-o",
                        str(tmp_path / "o"), "--scheme", "nvfp4"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("lowbit: error: someorg/somemodel") and "unreachable" in p.stderr
    assert p.stderr.count("\n") == 1 and not (tmp_path / "o").exists()
