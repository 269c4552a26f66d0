"""Resumable pipeline stages: each stage runs once per input fingerprint and records what it produced.

A stage is skipped when its marker (`<run>/stages/<name>.json`) holds the same fingerprint and every output it
listed still exists. Fingerprints chain: a stage's fingerprint includes those of the stages it reads, so changing an
upstream setting re-runs everything downstream and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (dict keys sorted; paths and other objects as `str`)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON through a temporary file and `os.replace`, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class StageRecord:
    name: str
    fingerprint: str
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False


class StageRunner:
    """Runs named stages in a run folder, skipping those whose recorded output is up to date.

    Args:
        run_dir: the run folder; markers go to `run_dir/stages/`.
        force: stage names to re-run even when up to date (`"all"` re-runs everything).
    """

    def __init__(self, run_dir: str | os.PathLike, force: set[str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.marker_dir = self.run_dir / "stages"
        self.force = force or set()
        self.records: dict[str, StageRecord] = {}

    def _marker(self, name: str) -> Path:
        return self.marker_dir / f"{name}.json"

    def up_to_date(self, name: str, stage_fingerprint: str) -> dict[str, Any] | None:
        """The recorded outputs of `name` if its fingerprint matches and its listed paths exist, else `None`."""
        marker = self._marker(name)
        if name in self.force or "all" in self.force or not marker.is_file():
            return None
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            logger.warning("Stage marker %s is unreadable; re-running stage %r.", marker, name)
            return None
        if record.get("fingerprint") != stage_fingerprint:
            logger.info("Stage %r: settings or inputs changed since the last run; re-running.", name)
            return None
        missing = [path for path in record.get("paths", []) if not Path(path).exists()]
        if missing:
            logger.warning("Stage %r: recorded outputs are missing (%s); re-running.", name, ", ".join(missing))
            return None
        return record.get("outputs", {})

    def run(
        self,
        name: str,
        inputs: Mapping[str, Any],
        work: Callable[[], Mapping[str, Any]],
        paths: Callable[[Mapping[str, Any]], list[str]] | None = None,
        upstream: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Run `work()` unless the stage is up to date; return its outputs (a JSON-serialisable mapping).

        Args:
            name: stage name (marker file name).
            inputs: the settings this stage depends on (hashed into its fingerprint).
            work: does the stage and returns its outputs (paths, counts, ...).
            paths: which of the outputs are files/folders that must still exist for the stage to count as done.
            upstream: stages whose fingerprints this one depends on.
        """
        missing = [stage for stage in upstream if stage not in self.records]
        if missing:
            raise RuntimeError(f"Stage {name!r} needs {missing} to run first.")
        stage_fingerprint = fingerprint(name, dict(inputs), [self.records[s].fingerprint for s in upstream])
        recorded = self.up_to_date(name, stage_fingerprint)
        if recorded is not None:
            logger.info("Stage %-16s up to date (fingerprint %s), skipped.", name, stage_fingerprint)
            self.records[name] = StageRecord(name, stage_fingerprint, dict(recorded), skipped=True)
            return dict(recorded)
        logger.info("Stage %-16s running ...", name)
        start = time.perf_counter()
        outputs = dict(work())
        seconds = time.perf_counter() - start
        listed = [str(p) for p in (paths(outputs) if paths else [])]
        write_json_atomic(
            self._marker(name),
            {"fingerprint": stage_fingerprint, "outputs": outputs, "paths": listed, "seconds": round(seconds, 2)},
        )
        logger.info("Stage %-16s done in %.1f s.", name, seconds)
        self.records[name] = StageRecord(name, stage_fingerprint, outputs, seconds=seconds)
        return outputs

    def timings(self) -> dict[str, float | str]:
        return {name: ("skipped" if r.skipped else round(r.seconds, 1)) for name, r in self.records.items()}
