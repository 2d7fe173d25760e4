"""Plugin entry: registers the Processing provider (also headless, for qgis_process) and, in the
desktop, the LatentSR dock with its Raster menu entry and Plugins toolbar button and the dependency installer.

At load the plugin-private ``deps`` folder (where the installer puts PyTorch / ONNX Runtime) is added
to sys.path and the dependencies are detected with find_spec only: nothing heavy is imported."""
from __future__ import annotations

import os

from qgis.core import Qgis, QgsApplication, QgsMessageLog

from .provider.provider import LatentSRProvider
from .ui import deps

ICON = os.path.join(os.path.dirname(__file__), "resources", "icon.png")
MENU = "LatentSR"


class LatentSRPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.dock = None
        self.actions = []
        deps.add_to_path()
        missing = deps.missing_message(deps.detect())
        if missing:
            QgsMessageLog.logMessage(missing, MENU, Qgis.Warning)

    def initProcessing(self):  # noqa: N802 - QGIS API
        if self.iface is None:  # qgis_process: the process runs the engine only (see engine/allocator.py)
            from .engine.allocator import fix_mmap_threshold

            fix_mmap_threshold()
        if self.provider is None:
            self.provider = LatentSRProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API
        from qgis.PyQt.QtCore import Qt
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        from .ui.dock import SuperResolveDock

        self.initProcessing()
        self.dock = SuperResolveDock(self.iface, self.iface.mainWindow())
        self.dock.install_requested.connect(self.install_dependencies)
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.hide()
        toggle = self.dock.toggleViewAction()
        toggle.setIcon(QIcon(ICON))
        toggle.setText("Super-resolution dock")
        install = QAction("Install dependencies…", self.iface.mainWindow())
        install.triggered.connect(self.install_dependencies)
        self.actions = [toggle, install]
        for action in self.actions:
            self.iface.addPluginToRasterMenu(MENU, action)
        self.iface.addToolBarIcon(toggle)  # the Plugins toolbar: shown in a fresh profile, unlike the Raster one

    def install_dependencies(self):
        from .ui.installer import InstallDialog

        dialog = InstallDialog(self.iface.mainWindow())
        dialog.finished_install.connect(lambda ok: ok and self.dock.refresh_dependencies())
        dialog.exec_()

    def unload(self):
        if self.actions:
            for action in self.actions:
                self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(self.actions[0])
            self.actions = []
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
