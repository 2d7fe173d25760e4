"""A background run of ``latentsr:superresolve`` on QGIS's task manager, and the result layers.

The dock hands over a parameter dict; the algorithm runs in a QgsProcessingAlgRunnerTask with its
own context (no project: the input is given by its source, so the worker thread never touches the
project's layers) and a feedback that carries progress and cancel and keeps the error text.
"""
from __future__ import annotations

import os

from qgis.core import (
    QgsApplication,
    QgsColorRampLegendNodeSettings,
    QgsColorRampShader,
    QgsGradientColorRamp,
    QgsMapLayerStyle,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QColor
from ..provider.i18n import tr

ALGORITHM = "latentsr:superresolve"
OUTPUTS = ("OUTPUT", "OUTPUT_UNCERTAINTY")
RUNNING: set = set()  # runs in flight: their context and feedback must outlive the task, whoever started them
SOURCE_PROPERTY = "latentsr/source"  # on a result layer: the id of the layer it was made from


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
    algorithm's results, or not with the error (or "Cancelled") message. It fires after the task
    manager has reported the task complete or terminated (QGIS's own "Task complete" / "Task failed"),
    so that what the dock then says is the message the analyst sees last."""

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
        self.task.taskCompleted.connect(self._report)
        self.task.taskTerminated.connect(self._report)
        self.done = False
        self.outcome: tuple[bool, dict, str] | None = None

    def start(self) -> None:
        RUNNING.add(self)
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        """Ask the run to stop; the engine stops before its next network call and writes nothing."""
        if not self.done:
            self.task.cancel()

    def _executed(self, successful: bool, results: dict) -> None:
        self.done = True
        RUNNING.discard(self)
        if self.feedback.isCanceled():
            discard(results)
            self.outcome = (False, {}, tr("Cancelled: nothing was written."))
        elif successful:
            self.outcome = (True, dict(results), "")
        else:
            message = self.feedback.errors[-1] if self.feedback.errors else tr("the algorithm failed (see the log)")
            self.outcome = (False, {}, message)

    def _report(self) -> None:
        """After the task manager's own handling of the end of the task (next turn of the event loop)."""
        if self.outcome is not None:
            outcome, self.outcome = self.outcome, None
            QTimer.singleShot(0, lambda: self.finished.emit(*outcome))


def discard(results: dict) -> None:
    """A cancel that came after the last tile: remove what the run had just written."""
    for key in OUTPUTS:
        path = results.get(key)
        if isinstance(path, str) and os.path.isfile(path):
            os.remove(path)


def add_result_layer(path: str, name: str, source_id: str, copy_style: bool) -> QgsRasterLayer | None:
    """Load ``path`` as ``name`` into the project above the layer ``source_id`` and above every earlier
    result made from it (top of the tree when that layer is gone), with that layer's style when
    ``copy_style``. None if it fails to load."""
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        return None
    project = QgsProject.instance()
    source = project.mapLayer(source_id)
    if source is not None and copy_style:
        style = QgsMapLayerStyle()
        style.readFromLayer(source)
        style.writeToLayer(layer)
    layer.setCustomProperty(SOURCE_PROPERTY, source_id)
    project.addMapLayer(layer, False)
    root = project.layerTreeRoot()
    node = root.findLayer(source_id) if source is not None else None
    if node is None:
        root.insertLayer(0, layer)
        return layer
    parent = node.parent()
    siblings = parent.children()
    above = [i for i, child in enumerate(siblings) if child is node or (
        hasattr(child, "layer") and child.layer() is not None
        and child.layer().customProperty(SOURCE_PROPERTY) == source_id)]
    parent.insertLayer(min(above), layer)
    return layer


def add_uncertainty_layer(path: str, name: str, result: QgsRasterLayer) -> QgsRasterLayer | None:
    """Load the uncertainty raster just below its result, hidden, styled as a single-band
    pseudocolour of its first band's standard deviation with a legend in DN."""
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        return None
    style_uncertainty(layer)
    layer.setCustomProperty(SOURCE_PROPERTY, result.customProperty(SOURCE_PROPERTY))
    project = QgsProject.instance()
    project.addMapLayer(layer, False)
    node = project.layerTreeRoot().findLayer(result.id())
    parent = node.parent() if node is not None else project.layerTreeRoot()
    index = parent.children().index(node) + 1 if node is not None else 0
    parent.insertLayer(index, layer).setItemVisibilityChecked(False)
    return layer


def style_uncertainty(layer: QgsRasterLayer) -> None:
    """Band 1 from its minimum to its maximum on a white-to-red ramp, labelled in DN."""
    stats = layer.dataProvider().bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    lo, hi = stats.minimumValue, max(stats.maximumValue, stats.minimumValue + 1e-6)
    ramp = QgsColorRampShader(lo, hi, QgsGradientColorRamp(QColor(255, 255, 255), QColor(200, 0, 0)),
                              QgsColorRampShader.Interpolated)
    ramp.classifyColorRamp(5)
    legend = QgsColorRampLegendNodeSettings()
    legend.setSuffix(tr(" DN"))
    ramp.setLegendSettings(legend)
    shader = QgsRasterShader(lo, hi)
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)
    layer.setRenderer(renderer)
