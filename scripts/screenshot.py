"""Screenshot of the LatentSR dock in a real QGIS: `make screenshots` starts QGIS under Xvfb with
``qgis --code scripts/screenshot.py``. The script loads the sample raster, opens the dock, runs it
(LCMSR when a bundled model and a backend are there, else Bicubic), waits for the result layer to
be drawn, saves the main window to $LATENTSR_SCREENSHOT (default docs/dock.png) and quits QGIS
with exit status 0, or 1 when anything fails (the reason goes to stderr). The dock keeps the width
and the state it has in a fresh profile (Advanced collapsed); the log says that width and the width
its content needs."""
import logging
import os
import sys

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, loadPlugin, plugins, startPlugin


def shoot():
    root = os.environ["LATENTSR_ROOT"]
    target = os.environ.get("LATENTSR_SCREENSHOT", os.path.join(root, "docs", "dock.png"))
    log = logging.getLogger("latentsr.screenshot")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="screenshot: %(message)s")
    window = iface.mainWindow()
    timers = []

    def later(ms, func):
        timer = QTimer(window)
        timer.setSingleShot(True)
        timer.timeout.connect(func)
        timer.start(ms)
        timers.append(timer)

    def quit_with(code, message):
        (log.info if code == 0 else log.error)("%s", message)
        QgsProject.instance().clear()  # while the GUI is alive: QGIS crashes clearing it during its teardown
        later(500, lambda: QgsApplication.exit(code))

    if "latentsr" not in plugins and not (loadPlugin("latentsr") and startPlugin("latentsr")):
        quit_with(1, "the latentsr plugin could not be started")
        return
    window.showNormal()
    window.resize(1440, 900)
    source = iface.addRasterLayer(os.path.join(root, "resources", "sample", "naip_2020_crop.tif"), "naip_2020_crop")
    dock = plugins["latentsr"].dock
    dock.show()
    dock.raise_()
    dock.layer_combo.setLayer(source)
    models = os.path.join(root, "resources", "models")
    learned = os.path.isdir(models) and bool(os.listdir(models)) and dock.deps_frame.isHidden()
    dock.method.setCurrentIndex(0 if learned else 3)
    dock.scale.setValue(2.5)
    dock.start()
    if dock.run is None:
        quit_with(1, "the run did not start")
        return
    later(240000, lambda: quit_with(1, "timed out"))

    def grab():
        dock.widget().verticalScrollBar().setValue(0)
        body = dock.widget().widget()
        log.info("the dock is %d px wide; its content needs %d px (the view %d px)", dock.width(),
                 body.minimumSizeHint().width(), dock.widget().viewport().width())
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not window.grab().save(target):
            quit_with(1, f"could not write {target}")
        else:
            quit_with(0, target)

    def finished(ok, results, message):
        if not ok:
            quit_with(1, f"the run failed: {message}")
            return
        iface.mapCanvas().setExtent(source.extent())
        iface.mapCanvas().refresh()
        later(3000, grab)  # the result layer is added by the dock's own slot; then the canvas draws

    dock.run.finished.connect(finished)


shoot()
