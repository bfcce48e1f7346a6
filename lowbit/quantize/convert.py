"""Execute a conversion plan: read -> quantize (numpy or cupy) -> write, bounded memory, atomic, resumable.

The output is written into `OUT.lowbit-partial` (a sibling of OUT) and renamed to OUT at the end, so
OUT is either absent or complete. Every finished shard is recorded in a journal inside the partial
directory with its sha256; a re-run with the same source and options (resume=True) reuses those
shards, so a killed conversion resumes at the shard level and ends with identical bytes.
A LowbitError (bad data found mid-way, e.g. NaN) removes the partial directory; an interrupt or an
OS error keeps it for the resume.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from lowbit.errors import LowbitError
from lowbit.formats import checkpoint
from lowbit.formats.checkpoint import Checkpoint, open_checkpoint
from lowbit.formats.hf_config import with_quantization_config
from lowbit.formats.safetensors_io import ShardWriter
from lowbit.quantize import stream
from lowbit.quantize.hub import resolve_source
from lowbit.quantize.manifest import Journal, sha256_file, write_manifest
from lowbit.quantize.plan import Plan, Shard, make_plan
from lowbit.synth import parse_size

log = logging.getLogger(__name__)

AUX_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                "merges.txt", "generation_config.json", "chat_template*", "*.jinja", "*.tiktoken")
Progress = Callable[[int, int], None]  # (bytes just read, total bytes)


@dataclass
class ConvertSummary:
    scheme: str
    options: dict
    source: str
    out: str
    device: str
    files: list[str]
    bytes_in: int
    bytes_out: int
    quantized: int
    kept: list[tuple[str, str]]
    warnings: list[str]
    seconds: float
    manifest: str
    resumed_shards: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["kept"] = [list(k) for k in self.kept]
        d["mb_per_s"] = round(self.mb_per_s, 1)
        return d


def pick_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise LowbitError(f"--device {device!r}: choose auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    from lowbit.quantize import gpu

    if gpu.available():
        return "cuda"
    if device == "cuda":
        raise LowbitError("--device cuda: no CUDA GPU with cupy is available here; use --device cpu or auto")
    return "cpu"


def _check_out(out: Path, src: Path, overwrite: bool) -> None:
    if out.resolve() == src.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise LowbitError(f"{out}: the output would overwrite the source {src}; choose another -o")
    if out.is_file():
        raise LowbitError(f"{out}: exists and is a file; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LowbitError(f"{out}: exists and is not empty; pass --overwrite or choose another -o")


def _write_shard(ck: Checkpoint, plan: Plan, shard: Shard, path: Path, pool, amax: dict,
                 quantize_fn, progress: Progress, total: int) -> None:
    with ShardWriter(path, shard.layout()) as writer:
        for it in shard.items:
            if not it.quantize:
                stream.copy_item(ck, it, writer, pool)
            else:
                g = None
                if plan.scheme == "nvfp4":
                    key = it.group or it.source
                    if key not in amax:
                        members = plan.groups.get(key, [it.source])
                        amax[key] = max(stream.tensor_amax(ck, m, pool) for m in members)
                    g = amax[key]
                stream.quantize_item(ck, it, writer, pool, plan.scheme, plan.opts, g, quantize_fn,
                                     1 if quantize_fn is stream.cpu_quantize else 16)
            progress(it.in_bytes, total)


def _copy_aux(src: Path, dst: Path) -> list[str]:
    names = sorted({p.name for pat in AUX_PATTERNS for p in src.glob(pat) if p.is_file()})
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return names


def _finish(ck: Checkpoint, plan: Plan, partial: Path, source_id: str, shard_sha: dict[str, str]) -> Path:
    weight_map = {name: s.file for s in plan.shards for name in s.layout()}
    total = sum(it.out_bytes for it in plan.items)
    checkpoint.write_index(partial, weight_map, total)
    config = with_quantization_config(ck.config, plan.scheme, plan.ignore, **plan.opts)
    (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _copy_aux(ck.path, partial)
    return write_manifest(partial, plan, source_id, known=shard_sha)


def _fsync(path: Path) -> None:
    """Force a file (or a directory entry) to disk. Directories cannot be opened or synced on some
    platforms (Windows): there it is skipped, files are always synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _hash_and_sync(path: Path) -> str:
    """sha256 of a finished shard, then its bytes forced to disk (in the hashing thread, overlapping
    the next shard's work), so the final rename never publishes data that a crash could still lose."""
    digest = sha256_file(path)
    _fsync(path)
    return digest


def _publish(partial: Path, out: Path) -> None:
    """Make the finished directory durable (small files and the directory entry; shards were synced
    as they were hashed), then rename it into place; a replaced OUT is removed only after that."""
    for p in partial.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors"):
            _fsync(p)
    _fsync(partial)
    old = None
    if out.exists():
        old = out.with_name(out.name + ".lowbit-old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    partial.rename(out)
    _fsync(out.parent)
    if old is not None:
        shutil.rmtree(old)


def _source_stamp(ck: Checkpoint, ident: str) -> str:
    """What a resume must match besides the plan: the source and its shards' size and mtime (a
    source rewritten in place between two runs must not mix with shards made from the old one)."""
    stats = [(f, (ck.path / f).stat()) for f in ck.files()]
    return ident + "|" + ";".join(f"{f}:{st.st_size}:{st.st_mtime_ns}" for f, st in stats)


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def convert(src, out, scheme: str, *, group_size: int = 128, asymmetric: bool = False, ignore=(),
            generic: bool = False, device: str = "auto", max_shard_size="5GB", overwrite: bool = False,
            resume: bool = True, progress: Progress | None = None) -> ConvertSummary:
    """Convert checkpoint `src` (directory or hub id) into `out`; see the module docstring."""
    t0 = time.perf_counter()
    source = resolve_source(str(src))
    ck = open_checkpoint(source.path, trusted_root=source.trusted_root)
    plan = make_plan(ck, scheme, group_size=group_size, asymmetric=asymmetric, ignore=ignore,
                     generic=generic, max_shard_bytes=parse_size(max_shard_size))
    out = Path(out).absolute()
    with _exclusive(out):  # one writer per OUT: a second one would corrupt the first's output
        _check_out(out, ck.path, overwrite)
        dev = pick_device(device)
        if dev == "cuda":
            from lowbit.quantize.gpu import gpu_quantize as quantize_fn
        else:
            quantize_fn = stream.cpu_quantize
        partial = out.with_name(out.name + ".lowbit-partial")
        journal = Journal(partial, plan.fingerprint(_source_stamp(ck, source.ident)), resume)
        progress = progress or (lambda n, total: None)
        total = sum(it.in_bytes for it in plan.items)
        try:
            reused = _run(ck, plan, partial, journal, quantize_fn, progress, total)
            manifest = _finish(ck, plan, partial, source.ident, dict(journal.shards))
            journal.remove()
            _publish(partial, out)
        except LowbitError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        except OSError as e:  # disk full, permissions, I/O: one clear line; finished shards kept to resume
            raise _os_error(e, out, partial) from None
        files = sorted(p.name for p in out.iterdir())
        return ConvertSummary(
            scheme=scheme, options=plan.opts, source=source.ident, out=str(out), device=dev, files=files,
            bytes_in=total, bytes_out=sum((out / f).stat().st_size for f in files if f.endswith(".safetensors")),
            quantized=sum(it.quantize for it in plan.items), kept=plan.kept, warnings=plan.warnings,
            seconds=time.perf_counter() - t0, manifest=str(out / manifest.name), resumed_shards=reused)


class OutputWriteError(LowbitError, OSError):
    """Writing the output failed (disk full, permissions, I/O): a LowbitError (one line in the CLI)
    that is still an OSError for callers that handle those."""


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock on `OUT.lowbit-lock` (fcntl.flock: the kernel releases it if the process
    dies) for the whole conversion; a second writer to the same OUT is refused at once."""
    lock = out.with_name(out.name + ".lowbit-lock")
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            f = open(lock, "a+")
        except OSError as e:
            raise OutputWriteError(f"{out}: cannot create {lock} ({e.strerror}); check that the output "
                                   "directory is writable") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise LowbitError(f"{out}: another lowbit process is writing this output (lock {lock}); "
                              "wait for it to finish or choose another -o") from None
        if lock.exists() and os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
            break  # still the lock file at that path (not one a finishing writer just removed)
        f.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        f.close()


def _os_error(e: OSError, out: Path, partial: Path) -> LowbitError:
    kept = len(list(partial.glob("*.safetensors"))) if partial.is_dir() else 0
    if not kept:  # nothing worth resuming: leave nothing behind
        shutil.rmtree(partial, ignore_errors=True)
    what = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return OutputWriteError(f"{out}: writing failed: {what} (errno {e.errno}, {e.filename or partial}); "
                       f"{kept} finished shard(s) kept in {partial} to resume: free space or fix "
                       "permissions and re-run, or delete that directory")


def _run(ck: Checkpoint, plan: Plan, partial: Path, journal: Journal, quantize_fn, progress, total) -> int:
    """Write every shard not already done; each finished shard is hashed in a background thread
    (overlapping the next shard's work) and then recorded in the journal."""
    amax: dict[str, float] = {}
    reused = 0
    pending = None
    with ThreadPoolExecutor(_threads() if quantize_fn is stream.cpu_quantize else 1) as pool, \
            ThreadPoolExecutor(1) as hasher:
        for shard in plan.shards:
            path = partial / shard.file
            if journal.done(shard.file, path):
                reused += 1
                progress(sum(it.in_bytes for it in shard.items), total)
                continue
            try:
                _write_shard(ck, plan, shard, path, pool, amax, quantize_fn, progress, total)
            except BaseException:
                path.unlink(missing_ok=True)  # never leave a half-written shard behind
                if pending:  # the previous shard is complete: record it for the resume
                    journal.record(*pending.result())
                raise
            if pending:
                journal.record(*pending.result())
            pending = hasher.submit(lambda f=shard.file, p=path: (f, _hash_and_sync(p)))
        if pending:
            journal.record(*pending.result())
    return reused
