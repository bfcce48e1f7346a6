"""`lowbit verify` runs the GEMM path (M=64, M=1024) on every quantized linear and the MoE path on every
MoE layer of a converted checkpoint (GPU): the checks appear in the report and pass."""

from __future__ import annotations

import pytest


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["fp8-block", "nvfp4"])
def test_verify_runs_gemm_and_moe_checks(tmp_path, scheme):
    from lowbit.quantize.convert import convert
    from lowbit.synth import write_synthetic
    from lowbit.verify.runner import verify_checkpoint

    src = write_synthetic(tmp_path / "src", "qwen3_moe", preset="tiny", layers=2)
    out = tmp_path / scheme
    convert(src, out, scheme, device="cpu")
    rep = verify_checkpoint(out, use_gpu=True)
    assert rep.kernel_ran
    gemm = [r for r in rep.results if r.check.startswith("gemm M=")]
    moe = [r for r in rep.results if r.check.startswith("moe T=")]
    assert {r.check.split()[1] for r in gemm} == {"M=64", "M=1024"}
    assert len(moe) >= 2 * 2  # two MoE layers, decode and prefill each
    bad = [r for r in gemm + moe if not r.ok]
    assert not bad, bad
