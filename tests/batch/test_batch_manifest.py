"""Manifest parsing: expansion into jobs, output naming, defaults, and refusal of bad manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.batch.manifest import load_manifest, parse_manifest, source_name
from lowbit.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "batch.toml"
    p.write_text(text)
    return p


def test_expands_sources_x_schemes_with_options(tmp_path):
    (tmp_path / "models" / "llama-tiny").mkdir(parents=True)
    p = _write(tmp_path, """
output_root = "out"
workers = 3
max_rel_error = 0.5

[[job]]
source = "models/llama-tiny"
schemes = ["fp8-block", "int4"]
group_size = 64
asymmetric = true
ignore = ["re:.*lm_head"]

[[job]]
source = "Qwen/Qwen3-0.6B@main"
schemes = ["nvfp4"]
verify = false
""")
    m = load_manifest(p)
    assert m.workers == 3
    assert m.output_root == str(tmp_path / "out")
    assert [(Path(j.output).name, j.scheme) for j in m.jobs] == [
        ("llama-tiny-fp8-block", "fp8-block"), ("llama-tiny-int4", "int4"), ("Qwen3-0.6B-nvfp4", "nvfp4")]
    j0 = m.jobs[0]
    assert j0.source == str(tmp_path / "models" / "llama-tiny")
    assert j0.options["group_size"] == 64 and j0.options["asymmetric"] is True
    assert j0.options["ignore"] == ["re:.*lm_head"]
    assert j0.max_rel_error == 0.5 and j0.verify is True
    j2 = m.jobs[2]
    assert j2.source == "Qwen/Qwen3-0.6B@main"        # a hub id stays a hub id
    assert j2.options["group_size"] == 128 and j2.options["asymmetric"] is False  # defaults
    assert j2.verify is False and j2.max_rel_error == 0.5  # top-level default inherited


def test_job_dict_round_trip(tmp_path):
    m = parse_manifest({"output_root": "o", "job": [{"source": "/x/m", "schemes": ["int4"]}]},
                       base=tmp_path)
    j = m.jobs[0]
    assert type(j).from_dict(j.to_dict()) == j


@pytest.mark.parametrize("src,name", [("/a/b/llama-3/", "llama-3"), ("org/Model-7B@v1.0", "Model-7B"),
                                      ("org/Model", "Model")])
def test_source_name(src, name):
    assert source_name(src) == name


@pytest.mark.parametrize("doc,needle", [
    ({"job": [{"source": "a", "schemes": ["int4"]}]}, "`output_root`"),
    ({"output_root": "o"}, "no [[job]] tables"),
    ({"output_root": "o", "job": [{"schemes": ["int4"]}]}, "`source`"),
    ({"output_root": "o", "job": [{"source": "a", "schemes": []}]}, "non-empty list"),
    ({"output_root": "o", "job": [{"source": "a", "schemes": ["int3"]}]}, "unknown scheme 'int3'"),
    ({"output_root": "o", "job": [{"source": "a", "schemes": ["int4"], "group_sise": 64}]},
     "unknown key(s) ['group_sise']"),
    ({"output_root": "o", "wokers": 2, "job": [{"source": "a", "schemes": ["int4"]}]},
     "unknown top-level key(s) ['wokers']"),
    ({"output_root": "o", "workers": 0, "job": [{"source": "a", "schemes": ["int4"]}]}, ">= 1"),
    ({"output_root": "o", "workers": True, "job": [{"source": "a", "schemes": ["int4"]}]},
     "`workers` must be a int"),
    ({"output_root": "o", "job": [{"source": "a", "schemes": ["int4"], "asymmetric": "yes"}]},
     "`asymmetric` must be a bool"),
    ({"output_root": "o", "job": [{"source": "a", "schemes": ["int4"]},
                                  {"source": "b/a", "schemes": ["int4"]}]}, "same output"),
    ({"output_root": "o", "job": [{"source": "a", "schemes": ["int4"], "name": "../x"}]}, "plain directory"),
])
def test_bad_manifest_refused_with_a_clear_message(tmp_path, doc, needle):
    with pytest.raises(ConfigError) as e:
        parse_manifest(doc, "m.toml", base=tmp_path)
    assert needle in str(e.value)
    assert "m.toml" in str(e.value)


def test_invalid_toml_and_missing_file(tmp_path):
    p = _write(tmp_path, "output_root = [\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_manifest(p)
    with pytest.raises(ConfigError, match="cannot read the batch manifest"):
        load_manifest(tmp_path / "nope.toml")
