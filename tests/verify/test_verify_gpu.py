"""lowbit verify on the GPU: a tiny checkpoint converted to each scheme passes with its kernels run at
M=1 and M=8; one with a flipped byte fails."""

from __future__ import annotations

import json

import pytest

from tests.verify.verify_fixtures import SCHEMES, build, flipped_copy, lowbit

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return build(tmp_path_factory.mktemp("verify_gpu"))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_gpu_converted_checkpoint_passes_too(tmp_path_factory, scheme):
    """The converter's cupy path must pass the same checks (its bytes should equal the CPU path's)."""
    gpu = build(tmp_path_factory.mktemp(f"verify_gpu_conv_{scheme}"), device="cuda")
    p = lowbit("verify", str(gpu[scheme]), "--against", str(gpu["src"]), "--json", "--gpu")
    rep = json.loads(p.stdout) if p.stdout.startswith("{") else {}
    assert p.returncode == 0, [r for r in rep.get("results", []) if not r["ok"]][:5] or p.stderr


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_tiny_checkpoint_passes_with_kernels(ckpts, scheme):
    p = lowbit("verify", str(ckpts[scheme]), "--against", str(ckpts["src"]), "--json", "--gpu")
    rep = json.loads(p.stdout) if p.stdout.startswith("{") else {}
    assert p.returncode == 0, [r for r in rep.get("results", []) if not r["ok"]][:5] or p.stderr
    assert rep["kernel_ran"] and rep["ok"]
    structure = sum(r["check"] == "structure" for r in rep["results"])
    for m in (1, 8):
        ratios = [r["value"] for r in rep["results"] if r["check"] == f"gemv M={m}"]
        assert len(ratios) == structure and max(ratios) <= 1.0


def test_flipped_byte_fails_on_gpu_too(ckpts, tmp_path):
    bad = flipped_copy(ckpts["int4"], tmp_path / "bad")
    p = lowbit("verify", str(bad), "--gpu")
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr
    assert "FAIL" in p.stdout.splitlines()[1]
