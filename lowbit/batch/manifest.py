"""Read a batch manifest (TOML) into a flat list of jobs: one per source x scheme.

```toml
output_root = "out"          # relative paths are relative to the manifest file
workers = 4
verify = true                # default for every job: `lowbit verify --against SRC` on the output
# verify_gpu = "auto"        # run the GPU kernel checks too where a GPU is present (true/false)
# max_rel_error = 0.2        # a job whose worst tensor error is above this fails

[[job]]
source = "models/llama-tiny"            # a directory, or a hub repo id `org/name[@revision]`
schemes = ["fp8-block", "nvfp4", "int4"]
group_size = 64                         # any `lowbit quantize` option by name
asymmetric = true
ignore = ["re:.*lm_head"]
```

Each output goes to `output_root/<source name>-<scheme>`. Unknown keys are refused (a typo must not
silently change a conversion).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.errors import ConfigError
from lowbit.formats import SCHEMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: quantize options a job may set, with their types and defaults (the convert() keyword arguments)
QUANTIZE_OPTIONS: dict[str, tuple[type | tuple[type, ...], object]] = {
    "group_size": (int, 128),
    "asymmetric": (bool, False),
    "ignore": (list, []),
    "generic": (bool, False),
    "max_shard_size": ((str, int), "5GB"),
    "device": (str, "cpu"),
}
#: verify settings, allowed at the top level (defaults) and per job
VERIFY_OPTIONS: dict[str, tuple[type | tuple[type, ...], object]] = {
    "verify": (bool, True),
    "max_rel_error": ((int, float), None),
    "verify_gpu": ((bool, str), "auto"),
    "timeout_s": ((int, float), None),
}
TOP_KEYS = {"output_root", "workers", "job"} | set(VERIFY_OPTIONS) | set(QUANTIZE_OPTIONS)
JOB_KEYS = {"source", "schemes", "name"} | set(VERIFY_OPTIONS) | set(QUANTIZE_OPTIONS)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class Job:
    """One conversion: a source, a scheme, its options, where it goes and how it is checked."""

    source: str
    scheme: str
    output: str
    options: dict = field(default_factory=dict)
    verify: bool = True
    max_rel_error: float | None = None
    timeout_s: float | None = None
    verify_gpu: bool | str = "auto"

    @property
    def label(self) -> str:
        return Path(self.output).name

    def to_dict(self) -> dict:
        return {"source": self.source, "scheme": self.scheme, "output": self.output,
                "options": dict(self.options), "verify": self.verify,
                "max_rel_error": self.max_rel_error, "timeout_s": self.timeout_s,
                "verify_gpu": self.verify_gpu}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**d)


@dataclass(frozen=True)
class BatchManifest:
    path: str
    output_root: str
    workers: int
    jobs: tuple[Job, ...]


def is_repo_id(source: str) -> bool:
    """`org/name` or `org/name@revision` that is not an existing local path."""
    return bool(_REPO_ID.match(source)) and not Path(source).exists()


def source_name(source: str) -> str:
    """The name an output is called after: a directory's name, or the repo name of `org/name@rev`."""
    if is_repo_id(source):
        return source.split("@", 1)[0].split("/", 1)[1]
    return Path(source.rstrip("/")).name


def _check_type(where: str, key: str, value, types) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in
                                           (types if isinstance(types, tuple) else (types,)))
    if not ok:
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ConfigError(f"{where}: `{key}` must be a {names}, found {value!r}; fix the manifest")


def _settings(where: str, table: dict, defaults: dict, spec: dict) -> dict:
    out = dict(defaults)
    for key, (types, _) in spec.items():
        if key in table:
            _check_type(where, key, table[key], types)
            out[key] = table[key]
    return out


def _resolve_source(src: str, base: Path) -> str:
    if is_repo_id(src) and not (base / src).exists():
        return src
    p = Path(src).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _job_entries(where: str, table: dict, qdefaults: dict, vdefaults: dict, base: Path,
                 root: Path) -> list[Job]:
    unknown = sorted(set(table) - JOB_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(JOB_KEYS)}")
    src = table.get("source")
    if not isinstance(src, str) or not src:
        raise ConfigError(f"{where}: `source` (a directory or org/name[@revision]) is required")
    schemes = table.get("schemes")
    if isinstance(schemes, str):
        schemes = [schemes]
    if not isinstance(schemes, list) or not schemes:
        raise ConfigError(f"{where}: `schemes` must be a non-empty list, e.g. [\"fp8-block\", \"nvfp4\"]")
    for s in schemes:
        if s not in SCHEMES:
            raise ConfigError(f"{where}: unknown scheme {s!r}; choose from {', '.join(SCHEMES)}")
    opts = _settings(where, table, qdefaults, QUANTIZE_OPTIONS)
    ver = _settings(where, table, vdefaults, VERIFY_OPTIONS)
    if isinstance(ver["verify_gpu"], str) and ver["verify_gpu"] != "auto":
        raise ConfigError(f"{where}: `verify_gpu` must be true, false or \"auto\", found {ver['verify_gpu']!r}")
    name = table.get("name") or source_name(src)
    if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
        raise ConfigError(f"{where}: `name` must be a plain directory name, found {name!r}")
    source = _resolve_source(src, base)
    return [Job(source=source, scheme=s, output=str(root / f"{name}-{s}"), options=dict(opts), **ver)
            for s in schemes]


def parse_manifest(data: dict, path: str | Path = "<manifest>", base: Path | None = None) -> BatchManifest:
    """Validate a parsed TOML document and expand it into jobs."""
    where = str(path)
    base = base or Path(path).resolve().parent
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    root = data.get("output_root")
    if not isinstance(root, str) or not root:
        raise ConfigError(f"{where}: `output_root` (a directory for the outputs) is required")
    root_p = Path(root).expanduser()
    root_p = root_p if root_p.is_absolute() else (base / root_p).resolve()
    workers = data.get("workers", 1)
    _check_type(where, "workers", workers, int)
    if workers < 1:
        raise ConfigError(f"{where}: `workers` must be >= 1, found {workers}")
    qdefaults = _settings(where, data, {k: v for k, (_, v) in QUANTIZE_OPTIONS.items()}, QUANTIZE_OPTIONS)
    vdefaults = _settings(where, data, {k: v for k, (_, v) in VERIFY_OPTIONS.items()}, VERIFY_OPTIONS)
    tables = data.get("job")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{where}: no [[job]] tables; add at least one with `source` and `schemes`")
    jobs: list[Job] = []
    for i, table in enumerate(tables):
        jobs += _job_entries(f"{where} [[job]] #{i + 1}", table, qdefaults, vdefaults, base, root_p)
    outputs = [j.output for j in jobs]
    dup = sorted({o for o in outputs if outputs.count(o) > 1})
    if dup:
        raise ConfigError(f"{where}: two jobs write the same output {dup[0]}; give one a distinct `name`")
    return BatchManifest(path=where, output_root=str(root_p), workers=workers, jobs=tuple(jobs))


def load_manifest(path: str | Path) -> BatchManifest:
    """Read and validate a TOML manifest file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the batch manifest ({e.strerror}); check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: the batch manifest is not UTF-8 text; save it as UTF-8 TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML ({e}); fix the syntax") from None
    return parse_manifest(data, p)
