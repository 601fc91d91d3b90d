"""The project folder: stage sub-folders written atomically, each with a ``manifest.json``.

A stage writes into a temporary sibling folder and swaps it into place only when everything is
written, so a crash never leaves a half-written stage. The manifest records inputs (with hashes),
the config that mattered, tool versions, row counts and timings; its ``fingerprint`` (a hash of
inputs + config) lets a rerun with unchanged inputs be a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.errors import StageMissingError

DEFAULT_PROJECT = "thresher-project"
MANIFEST = "manifest.json"
RECORDS = "records.parquet"
EMBEDDING_CACHE = Path(".cache") / "embeddings"
SPLIT = Path("tune") / "split.parquet"
ANNOTATIONS = Path("review") / "annotations.parquet"
TRAFFIC = Path("serve") / "traffic"
REGISTRY = Path("tune") / "registry.json"
PRODUCTION_RECORDS = Path("review") / "production.parquet"
HASH_CHUNK = 1 << 22


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temp file next to ``path`` to write (by any writer); it replaces ``path`` when the block
    ends and is removed if the block raises, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``.

    ``mode`` defaults to 0o666 less the umask (like ``open``); pass 0o600 for secrets."""
    with atomic_output(path) as tmp:
        os.chmod(tmp, mode if mode is not None else 0o666 & ~current_umask())
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def path_sha256(path: str | Path) -> str:
    """Hash of a file, or of every file under a folder (relative names + contents)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def tool_versions(packages: Iterable[str] = ()) -> dict[str, str]:
    """thresher, Python and the given distributions' versions (those installed)."""
    from importlib import metadata

    from thresher import __version__

    versions = {"thresher": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class Project:
    """Paths of one project folder."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None) -> Project:
        return cls(Path(root if root is not None else DEFAULT_PROJECT))

    @property
    def embedding_cache(self) -> Path:
        """``DIR/.cache/embeddings``: sentence embeddings by text hash, shared by every stage."""
        return self.root / EMBEDDING_CACHE

    @property
    def split_path(self) -> Path:
        """``DIR/tune/split.parquet``: the project's train/val/test/held assignment
        (``thresher.split``)."""
        return self.root / SPLIT

    @property
    def annotations_path(self) -> Path:
        """``DIR/review/annotations.parquet``: what reviewers decided (``review pull``)."""
        return self.root / ANNOTATIONS

    @property
    def traffic_dir(self) -> Path:
        """``DIR/serve/traffic``: the requests ``thresher serve`` answered (``thresher.traffic``),
        read by ``thresher monitor`` and ``thresher round --from-traffic``."""
        return self.root / TRAFFIC

    @property
    def registry_path(self) -> Path:
        """``DIR/tune/registry.json``: which run is the production model, and its history
        (``thresher tune promote``)."""
        return self.root / REGISTRY

    @property
    def production_records_path(self) -> Path:
        """``DIR/review/production.parquet``: served texts sent back to annotators
        (``thresher round --from-traffic``), records of the project (``thresher.production``)."""
        return self.root / PRODUCTION_RECORDS

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / MANIFEST

    def records_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / RECORDS

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def is_fresh(self, stage: str, stage_fingerprint: str) -> bool:
        """True when ``stage`` was completed with exactly this fingerprint."""
        manifest = self.read_manifest(stage)
        return bool(manifest) and manifest.get("fingerprint") == stage_fingerprint

    def require(self, stage: str, hint: str) -> Path:
        """The records file of an earlier stage, or a one-line error saying how to make it."""
        path = self.records_path(stage)
        if not path.exists():
            raise StageMissingError(f"{path} not found; run `{hint}` first")
        return path

    def latest_records(self, stages: Iterable[str]) -> tuple[str, Path]:
        """The first stage of ``stages`` (most-downstream first) whose records exist."""
        stages = list(stages)
        for stage in stages:
            path = self.records_path(stage)
            if path.exists():
                return stage, path
        raise StageMissingError(
            f"no records in {self.root} (looked for {', '.join(stages)}); "
            "run `thresher curate ingest SRC -p DIR` first"
        )


@dataclass
class StageRun:
    """What a stage reports into its manifest while it runs."""

    stage: str
    tmp_dir: Path
    fingerprint: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    packages: tuple[str, ...] = ()
    started: float = field(default_factory=time.time)

    def path(self, name: str) -> Path:
        return self.tmp_dir / name

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = round(time.perf_counter() - t0, 4)


@contextmanager
def stage_output(
    project: Project,
    stage: str,
    stage_fingerprint: str,
    *,
    inputs: list[dict[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    packages: Iterable[str] = (),
) -> Iterator[StageRun]:
    """Collect a stage's outputs in a temp folder; on success write the manifest and swap it in.

    On any exception the temp folder is removed and the previous output (if any) stays intact.
    """
    project.root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{stage}.tmp-", dir=project.root))
    tmp_dir.chmod(0o777 & ~current_umask())
    run = StageRun(
        stage=stage,
        tmp_dir=tmp_dir,
        fingerprint=stage_fingerprint,
        inputs=list(inputs or []),
        config=dict(config or {}),
        packages=tuple(packages),
    )
    try:
        yield run
        manifest = {
            "stage": stage,
            "fingerprint": stage_fingerprint,
            "inputs": run.inputs,
            "config": run.config,
            "counts": run.counts,
            "timings": {**run.timings, "total": round(time.time() - run.started, 4)},
            "versions": tool_versions(run.packages),
            "outputs": {p.name: file_sha256(p) for p in sorted(tmp_dir.iterdir()) if p.is_file()},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **run.extra,
        }
        atomic_write_json(tmp_dir / MANIFEST, manifest)
        _swap_into_place(tmp_dir, project.stage_dir(stage))
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _swap_into_place(tmp_dir: Path, final: Path) -> None:
    """Replace ``final`` with ``tmp_dir``; the old folder is moved aside first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    os.replace(tmp_dir, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def upstream_input(project: Project, stage: str) -> dict[str, Any]:
    """Describe an earlier stage's records as an input (path + hash from its manifest)."""
    manifest = project.read_manifest(stage) or {}
    digest = manifest.get("outputs", {}).get(RECORDS) or file_sha256(project.records_path(stage))
    return {"stage": stage, "path": str(project.records_path(stage)), "sha256": digest}
