from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .evaluate import EvaluateAlgorithm
from .superresolve import SuperResolveAlgorithm
from .train import TrainAlgorithm
from .i18n import tr

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.png")


class LatentSRProvider(QgsProcessingProvider):
    def id(self):
        return "latentsr"

    def name(self):
        return tr("LatentSR")

    def longName(self):  # noqa: N802 - QGIS API
        return tr("LatentSR super-resolution")

    def icon(self):
        return QIcon(ICON)

    def loadAlgorithms(self):  # noqa: N802 - QGIS API
        self.addAlgorithm(SuperResolveAlgorithm())
        self.addAlgorithm(EvaluateAlgorithm())
        self.addAlgorithm(TrainAlgorithm())

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 - QGIS API
        return ["tif"]
