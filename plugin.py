"""Plugin entry: registers the Processing provider (also headless, for qgis_process) and, in the
desktop, a Raster menu entry that opens the super-resolution algorithm."""
from __future__ import annotations

import os

from qgis.core import QgsApplication

from .provider.provider import LatentSRProvider

ICON = os.path.join(os.path.dirname(__file__), "resources", "icon.png")


class LatentSRPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None

    def initProcessing(self):  # noqa: N802 - QGIS API
        if self.provider is None:
            self.provider = LatentSRProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        self.initProcessing()
        self.action = QAction(QIcon(ICON), "Super-resolve raster…", self.iface.mainWindow())
        self.action.triggered.connect(self.open_dialog)
        self.iface.addPluginToRasterMenu("LatentSR", self.action)
        self.iface.addRasterToolBarIcon(self.action)

    def open_dialog(self):
        import processing

        processing.execAlgorithmDialog("latentsr:superresolve")

    def unload(self):
        if self.action is not None:
            self.iface.removePluginRasterMenu("LatentSR", self.action)
            self.iface.removeRasterToolBarIcon(self.action)
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
