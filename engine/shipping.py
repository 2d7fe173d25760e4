"""The Dask plugins that carry the client's engine to a cluster's scheduler and workers.

engine.cluster zips the engine package at the client's version and registers one plugin of each
kind under a name made of that version: the scheduler (which unpickles the tasks, so it imports the
engine too) and every worker, present or joining later, write the zip into their local directory
and put it at the end of sys.path. A process that already imports an engine of its own keeps it
(engine.cluster.check_worker then refuses it if its version differs from the client's).

This module imports nothing of the engine: engine.cluster sends it by value (cloudpickle), so
that a stock ``dask scheduler`` or ``dask worker`` can unpickle these plugins without having the
engine yet.
"""
from __future__ import annotations

import importlib
import os
import sys
import uuid

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin


def install(folder: str, filename: str, data: bytes) -> str:
    """Write ``data`` as ``filename`` in ``folder`` (unless a file of that size is there: the name
    holds the engine's version), put it at the end of sys.path, and return its path."""
    path = os.path.join(folder, filename)
    if not (os.path.isfile(path) and os.path.getsize(path) == len(data)):
        scratch = f"{path}.{uuid.uuid4().hex[:8]}.part"
        with open(scratch, "wb") as f:
            f.write(data)
        os.replace(scratch, path)
    if path not in sys.path:
        sys.path.append(path)
        importlib.invalidate_caches()
    return path


class EngineOnScheduler(SchedulerPlugin):
    """The engine's zip, installed on the scheduler when the plugin is registered."""

    idempotent = True  # registered once per scheduler and engine version (the name holds the version)

    def __init__(self, filename: str, data: bytes):
        self.filename, self.data = filename, data

    async def start(self, scheduler) -> None:
        install(scheduler.local_directory, self.filename, self.data)


class EngineOnWorker(WorkerPlugin):
    """The engine's zip, installed on every worker, those that join later too."""

    idempotent = True

    def __init__(self, filename: str, data: bytes):
        self.filename, self.data = filename, data

    def setup(self, worker) -> None:
        install(worker.local_directory, self.filename, self.data)
