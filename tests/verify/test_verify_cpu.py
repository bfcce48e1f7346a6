"""lowbit verify without a GPU: hashes, structure, SQNR floors, exit codes, and the plain no-kernel note."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from lowbit.formats import scheme_module
from lowbit.verify import kernel_checks
from lowbit.verify.checks import Linear, VerifyContext
from lowbit.verify.quality import SQNR_FLOOR_DB, against_check, sqnr_db
from lowbit.verify.structure import find_linears, structure_check
from tests.verify.verify_fixtures import SCHEMES, build, flipped_copy, lowbit


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return build(tmp_path_factory.mktemp("verify"))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(kernel_checks, "gpu_available", lambda: (False, "no CUDA device (test)"))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_converted_checkpoint_passes_and_says_no_kernel_ran(ckpts, scheme, no_gpu):
    from lowbit.verify.runner import verify_checkpoint

    rep = verify_checkpoint(ckpts[scheme], against=ckpts["src"])
    assert rep.ok, [r for r in rep.results if not r.ok]
    assert not rep.kernel_ran and any("NO GPU KERNEL RAN" in n for n in rep.notes)
    checks = {r.check for r in rep.results}
    assert {"sha256", "config", "structure", "sqnr"} <= checks
    assert not any(r.check.startswith("gemv") for r in rep.results)
    sq = [r.value for r in rep.results if r.check == "sqnr"]
    assert min(sq) >= SQNR_FLOOR_DB[scheme] and len(sq) == sum(r.check == "structure" for r in rep.results)


@pytest.mark.parametrize("where", ["data", "header"])
def test_flipped_byte_fails_with_exit_1(ckpts, tmp_path, where):
    bad = flipped_copy(ckpts["nvfp4"], tmp_path / "bad", where)
    p = lowbit("verify", str(bad), "--no-gpu", "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    worst = rep["results"][0]
    assert not worst["ok"] and worst["check"] in ("sha256", "structure")
    assert any(r["check"] == "sha256" and not r["ok"] and r["target"].startswith("model-") for r in rep["results"])


def test_cli_table_exit_0_and_bad_input_exit_2(ckpts, tmp_path):
    p = lowbit("verify", str(ckpts["fp8-block"]), "--against", str(ckpts["src"]), "--no-gpu")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].split()[:3] == ["verdict", "check", "target"]
    assert "0 failed" in p.stdout
    unq = lowbit("verify", str(ckpts["src"]))  # not quantized: bad input
    assert unq.returncode == 2 and "quantization_config" in unq.stderr
    assert lowbit("verify", str(tmp_path / "missing")).returncode == 2


class FakeCk:
    """The Checkpoint read API over a dict of numpy arrays."""

    _DT = {"float32": "F32", "uint8": "U8", "int32": "I32", "int64": "I64", "bfloat16": "BF16",
           "float8_e4m3fn": "F8_E4M3"}

    def __init__(self, tensors):
        self.t = tensors

    def names(self):
        return sorted(self.t)

    def __contains__(self, n):
        return n in self.t

    def dtype(self, n):
        return self._DT[str(self.t[n].dtype)]

    def shape(self, n):
        return tuple(self.t[n].shape)

    def get(self, n):
        return self.t[n]


def _fake(scheme, n=64, k=256, **opts):
    w = np.random.default_rng(1).standard_normal((n, k)).astype(np.float32) * 0.02
    q = scheme_module(scheme).quantize(w, **opts)
    return w, {f"layer.{s}": v for s, v in q.items()}


@pytest.mark.parametrize("scheme", ["fp8-block", "nvfp4", "int4"])
def test_structure_catches_wrong_shape_missing_tensor_and_bad_scales(scheme):
    _, t = _fake(scheme)
    ck = FakeCk(t)
    lins, orphans = find_linears(ck, scheme)
    assert [lin.prefix for lin in lins] == ["layer"] and not orphans
    ctx = VerifyContext(ck, scheme, {})
    assert structure_check(ctx, lins[0])[0].ok
    scale = {"fp8-block": "weight_scale_inv", "nvfp4": "weight_scale", "int4": "weight_scale"}[scheme]
    broken = dict(t)
    broken[f"layer.{scale}"] = t[f"layer.{scale}"][:-1]
    assert not structure_check(VerifyContext(FakeCk(broken), scheme, {}), find_linears(FakeCk(broken), scheme)[0][0])[0].ok
    missing = {k: v for k, v in t.items() if not k.endswith(scale)}
    assert not structure_check(VerifyContext(FakeCk(missing), scheme, {}), find_linears(FakeCk(missing), scheme)[0][0])[0].ok
    nan = dict(t)
    s = np.array(t[f"layer.{scale}"]).astype(np.float32)
    s.reshape(-1)[-1] = np.nan
    nan[f"layer.{scale}"] = s.astype(t[f"layer.{scale}"].dtype)
    res = structure_check(VerifyContext(FakeCk(nan), scheme, {}), find_linears(FakeCk(nan), scheme)[0][0])[0]
    assert not res.ok and "NaN" in res.detail


def test_orphan_scale_is_reported():
    _, t = _fake("fp8-block")
    t["other.weight_scale_inv"] = np.ones((1, 2), np.float32)
    _, orphans = find_linears(FakeCk(t), "fp8-block")
    assert [o.target for o in orphans] == ["other"] and not orphans[0].ok


@pytest.mark.parametrize("scheme,opts", [("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 128})])
def test_sqnr_floor_passes_real_quantization_and_fails_a_wrong_scale(scheme, opts):
    w, t = _fake(scheme, **opts)
    src = FakeCk({"layer.weight": w.astype(ml_dtypes.bfloat16)})
    lin = find_linears(FakeCk(t), scheme)[0][0]
    good = against_check(VerifyContext(FakeCk(t), scheme, opts, source=src), lin)[0]
    assert good.ok and good.value >= SQNR_FLOOR_DB[scheme]
    bad = dict(t)
    scale = {"fp8-block": "weight_scale_inv", "nvfp4": "weight_global_scale", "int4": "weight_scale"}[scheme]
    bad[f"layer.{scale}"] = (np.asarray(t[f"layer.{scale}"]).astype(np.float32) * 2).astype(t[f"layer.{scale}"].dtype)
    res = against_check(VerifyContext(FakeCk(bad), scheme, opts, source=src), lin)[0]
    assert not res.ok and res.value < SQNR_FLOOR_DB[scheme]


def test_sqnr_db_values():
    w = np.ones(100)
    assert sqnr_db(w, w) == (float("inf"), 0.0)
    db, rel = sqnr_db(w, w * 1.1)
    assert abs(db - 20.0) < 1e-9 and abs(rel - 0.1) < 1e-12


def test_kernel_check_is_skipped_without_gpu():
    ctx = VerifyContext(FakeCk({}), "nvfp4", {}, gpu=False)
    assert kernel_checks.gemv_check(ctx, Linear("x", 16, 16)) == []
