"""A background run of ``latentsr:superresolve`` on QGIS's task manager, and the result layers.

The dock hands over a parameter dict; the algorithm runs in a QgsProcessingAlgRunnerTask with its
own context (no project: the input is given by its source, so the worker thread never touches the
project's layers) and a feedback that carries progress and cancel and keeps the error text.
"""
from __future__ import annotations

import os

from qgis.core import (
    QgsApplication,
    QgsMapLayerStyle,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QObject, pyqtSignal

ALGORITHM = "latentsr:superresolve"
OUTPUTS = ("OUTPUT", "OUTPUT_UNCERTAINTY")
RUNNING: set = set()  # runs in flight: their context and feedback must outlive the task, whoever started them


class RunFeedback(QgsProcessingFeedback):
    """Processing feedback that remembers the errors the algorithm reported."""

    def __init__(self):
        super().__init__()
        self.errors: list[str] = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 - QGIS API
        self.errors.append(error)
        super().reportError(error, fatalError)


class SuperResolveRun(QObject):
    """One run. ``finished(ok, results, message)`` fires once, in the main thread: ``ok`` with the
    algorithm's results, or not with the error (or "cancelled") message."""

    finished = pyqtSignal(bool, dict, str)

    def __init__(self, parameters: dict, parent=None):
        super().__init__(parent)
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM)
        if algorithm is None:
            raise RuntimeError(f"the Processing algorithm {ALGORITHM} is not registered")
        self.parameters = parameters
        self.context = QgsProcessingContext()
        self.feedback = RunFeedback()
        self.task = QgsProcessingAlgRunnerTask(algorithm, parameters, self.context, self.feedback)
        self.task.executed.connect(self._executed)
        self.done = False

    def start(self) -> None:
        RUNNING.add(self)
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        """Ask the run to stop; the engine stops at the next tile and writes nothing."""
        if not self.done:
            self.task.cancel()

    def _executed(self, successful: bool, results: dict) -> None:
        self.done = True
        RUNNING.discard(self)
        if self.feedback.isCanceled():
            discard(results)
            self.finished.emit(False, {}, "Cancelled: nothing was written.")
        elif successful:
            self.finished.emit(True, dict(results), "")
        else:
            message = self.feedback.errors[-1] if self.feedback.errors else "the algorithm failed (see the log)"
            self.finished.emit(False, {}, message)


def discard(results: dict) -> None:
    """A cancel that came after the last tile: remove what the run had just written."""
    for key in OUTPUTS:
        path = results.get(key)
        if isinstance(path, str) and os.path.isfile(path):
            os.remove(path)


def add_result_layer(path: str, name: str, source_id: str, copy_style: bool) -> QgsRasterLayer | None:
    """Load ``path`` as ``name`` into the project, just above the layer ``source_id`` (top of the
    tree when that layer is gone), with that layer's style when ``copy_style``. None if it fails to load."""
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        return None
    project = QgsProject.instance()
    source = project.mapLayer(source_id)
    if source is not None and copy_style:
        style = QgsMapLayerStyle()
        style.readFromLayer(source)
        style.writeToLayer(layer)
    project.addMapLayer(layer, False)
    root = project.layerTreeRoot()
    node = root.findLayer(source_id) if source is not None else None
    if node is None:
        root.insertLayer(0, layer)
    else:
        parent = node.parent()
        parent.insertLayer(parent.children().index(node), layer)
    return layer
