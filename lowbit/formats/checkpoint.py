"""A Hugging Face checkpoint directory: validated lazy reader (memmap) over sharded safetensors.

`open_checkpoint(path)` checks, before any work starts: config.json exists and is a JSON object;
`model.safetensors.index.json` (when present) names only shards inside the directory that exist,
and every tensor it lists is in the shard it names (and vice versa); every safetensors header is
valid (offsets in range, no overlap, dtype * shape == length); no file is a symlink escaping the
directory (or the `trusted_root` a caller such as the hub cache passes). Any problem raises
CheckpointError / ConfigError naming the file, the tensor and the fix.

Writing lives in `lowbit.formats.safetensors_io` (ShardWriter, save_file) and `write_index`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import safetensors_io as sio

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MANIFEST_NAME = "lowbit.json"


def _inside(path: Path, root: Path, what: str) -> Path:
    """`path` resolved (symlinks followed); it must stay under `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise CheckpointError(f"{what} resolves to {resolved}, outside {root}; refusing to read it: "
                              "copy the file into the checkpoint directory")
    return resolved


def read_json(path: Path, what: str, error=CheckpointError) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: missing {what}; a Hugging Face checkpoint directory needs one") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: {what} is not valid JSON ({e}); fix or re-download it") from None
    except RecursionError:  # absurdly deep nesting: [[[[...
        raise error(f"{path}: {what} is nested too deeply to be valid; fix or re-download it") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {what} is not a JSON object; fix or re-download it")
    return data


class Checkpoint:
    """Read-only view of a validated checkpoint directory. Tensors load lazily."""

    def __init__(self, path: Path, config: dict, tensors: dict[str, tuple[str, dict, int]],
                 manifest: dict | None):
        self.path = path
        self.config = config
        self._tensors = tensors  # name -> (shard file name, header entry, data start)
        self.manifest = manifest

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def _entry(self, name: str) -> tuple[str, dict, int]:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name!r} in this checkpoint") from None

    def dtype(self, name: str) -> str:
        return self._entry(name)[1]["dtype"]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[1]["shape"])

    def nbytes(self, name: str) -> int:
        begin, end = self._entry(name)[1]["data_offsets"]
        return end - begin

    def file_of(self, name: str) -> str:
        return self._entry(name)[0]

    def files(self) -> list[str]:
        return sorted({f for f, _, _ in self._tensors.values()})

    def get(self, name: str) -> np.ndarray:
        """Read-only memmap (BF16 as ml_dtypes.bfloat16, F8_E4M3 as ml_dtypes.float8_e4m3fn)."""
        file, entry, start = self._entry(name)
        return sio.memmap_tensor(self.path / file, start, entry)

    def read(self, name: str, row0: int = 0, rows: int | None = None) -> np.ndarray:
        """An owned copy of rows [row0, row0+rows) (all by default), read without a lasting mmap."""
        file, entry, start = self._entry(name)
        return sio.read_tensor_rows(self.path / file, start, entry, row0, rows)

    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self._tensors)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self._tensors)} tensors, {len(self.files())} files)"


def _shard_files(root: Path, trusted: Path) -> dict[str, list[str] | None]:
    """shard file name -> names the index puts there (None where there is no index)."""
    index_path = root / INDEX_NAME
    if index_path.exists():
        _inside(index_path, trusted, str(index_path))
        index = read_json(index_path, "safetensors index")
        wm = index.get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{index_path}: no 'weight_map' object; fix the index or delete it "
                                  "to read the shards directly")
        shards: dict[str, list[str]] = {}
        for tensor, file in wm.items():
            if not isinstance(file, str) or Path(file).is_absolute() or ".." in Path(file).parts:
                raise CheckpointError(f"{index_path}: tensor {tensor!r} names shard {file!r}, a path "
                                      f"outside {root}; the index must name files in the checkpoint")
            shards.setdefault(file, []).append(tensor)
        for file, listed in sorted(shards.items()):
            if not (root / file).exists() and not (root / file).is_symlink():
                raise CheckpointError(f"{index_path}: names shard {file!r} (e.g. tensor {listed[0]!r}) "
                                      f"but {root / file} does not exist; re-download the checkpoint")
        for p in sorted(root.glob("model-*-of-*.safetensors")):
            if p.name not in shards:  # a shard of the set the index forgot: its tensors would vanish
                raise CheckpointError(f"{index_path}: does not name shard {p.name} that is in {root}; "
                                      "the index and shards disagree: re-download or rebuild the index")
        return shards
    if (root / SINGLE_NAME).exists():
        return {SINGLE_NAME: None}
    found = sorted(p.name for p in root.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"{root}: no *.safetensors files and no {INDEX_NAME}; "
                              "point at a Hugging Face checkpoint directory")
    return {f: None for f in found}


def _load_shard(root: Path, trusted: Path, file: str, listed: list[str] | None,
                tensors: dict[str, tuple[str, dict, int]]) -> None:
    path = root / file
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{root / INDEX_NAME}: names shard {file!r} (e.g. tensor "
                              f"{listed[0]!r}) but {path} does not exist; re-download the checkpoint")
    _inside(path, trusted, str(path))
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (broken symlink?); re-download it")
    header, start = sio.read_header(path)
    if listed is not None:
        missing = sorted(set(listed) - header.keys())
        extra = sorted(header.keys() - set(listed))
        if missing:
            raise CheckpointError(f"{root / INDEX_NAME}: lists tensor {missing[0]!r} in {file} but that "
                                  "shard does not hold it; the index and shards disagree: re-download")
        if extra:
            raise CheckpointError(f"{path}: holds tensor {extra[0]!r} that {INDEX_NAME} does not list; "
                                  "the index and shards disagree: re-download or rebuild the index")
    for name, entry in header.items():
        if name in tensors:
            raise CheckpointError(f"{path}: tensor {name!r} is also in {tensors[name][0]}; "
                                  "remove the duplicate shard")
        tensors[name] = (file, entry, start)


def open_checkpoint(path, *, trusted_root=None) -> Checkpoint:
    """Validate a checkpoint directory (see the module docstring) and return a lazy reader."""
    root = Path(path).absolute()
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory; pass a checkpoint directory "
                              "(or a hub repo id org/name to the CLI)")
    trusted = Path(trusted_root).resolve() if trusted_root else root.resolve()
    config_path = root / "config.json"
    if config_path.exists():
        _inside(config_path, trusted, str(config_path))
    config = read_json(config_path, "config.json", ConfigError)
    tensors: dict[str, tuple[str, dict, int]] = {}
    for file, listed in sorted(_shard_files(root, trusted).items()):
        _load_shard(root, trusted, file, listed, tensors)
    manifest = None
    if (root / MANIFEST_NAME).exists():
        manifest = read_json(root / MANIFEST_NAME, "lowbit manifest")
    return Checkpoint(root, config, tensors, manifest)


def write_index(out_dir: Path, weight_map: dict[str, str], total_size: int) -> Path:
    """model.safetensors.index.json with sorted keys (deterministic bytes)."""
    path = Path(out_dir) / INDEX_NAME
    body = {"metadata": {"total_size": int(total_size)},
            "weight_map": {k: weight_map[k] for k in sorted(weight_map)}}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"
