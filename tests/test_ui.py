"""The dock, its background runs, the dependency notice and installer, and the plugin's start-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from qgis.core import Qgis, QgsApplication, QgsProject, QgsRasterLayer, QgsSettings, QgsVectorLayer
from qgis.PyQt.QtCore import Qt

from tests.conftest import PLUGINS, ROOT, SAMPLE, write_raster

TIMEOUT = 60


def wait_for(condition, timeout=TIMEOUT):
    """Process Qt events until ``condition()`` holds; False on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QgsApplication.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def fresh_settings():
    QgsSettings().remove("latentsr/dock")
    yield
    QgsSettings().remove("latentsr/dock")


@pytest.fixture
def make_dock(provider, qgis_iface, qgis_new_project, fresh_settings):
    """A factory of docks on the test iface; they are shut down and deleted after the test."""
    from latentsr.ui.dock import SuperResolveDock

    docks = []

    def make():
        dock = SuperResolveDock(qgis_iface)
        docks.append(dock)
        return dock

    yield make
    for dock in docks:
        dock.shutdown()
        dock.deleteLater()
    QgsApplication.processEvents()


@pytest.fixture
def small_raster(tmp_path_factory):
    """A 100×50 4-band Byte raster, 10 m pixels, UTM 14N."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("input") / "small.tif"
    return write_raster(path, rng.integers(0, 255, (4, 50, 100), dtype=np.uint8))


def add_raster(path, name):
    layer = QgsRasterLayer(path, name, "gdal")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def result_layers(name_prefix):
    return [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().startswith(name_prefix + " ×")]


def test_dock_lists_only_raster_layers(make_dock, small_raster):
    vector = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    QgsProject.instance().addMapLayer(vector)
    raster = add_raster(small_raster, "small")
    dock = make_dock()
    combo = dock.layer_combo
    assert combo.count() == 1
    assert combo.layer(0) is raster
    assert dock.bands.count() == 4
    assert dock.method.currentIndex() == 0  # LCMSR by default
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()


def test_size_label_follows_scale(make_dock, small_raster):
    add_raster(small_raster, "small")
    dock = make_dock()
    dock.scale.setValue(2.5)
    assert dock.size_label.text().startswith("250 × 125 px, pixel 4 × 4 m")
    dock.scale.setValue(3)
    assert dock.size_label.text().startswith("300 × 150 px, pixel 3.33333 × 3.33333 m")
    dock.by_resolution.setChecked(True)
    dock.resolution.setValue(5.0)
    assert dock.size_label.text() == "200 × 100 px, pixel 5 × 5 m\n×2 of 100 × 50 px"
    assert dock.parameters()["TARGET_RESOLUTION"] == 5.0
    dock.resolution.setValue(3.0)  # 1000 m × 500 m in whole 3 m pixels: grown to 1002 m × 501 m
    assert dock.size_label.text().startswith("334 × 167 px, pixel 3 × 3 m")
    assert dock.run_button.isEnabled()
    dock.resolution.setValue(20.0)
    assert "out of range" in dock.size_label.text() and not dock.run_button.isEnabled()
    dock.resolution.setValue(4.0)
    assert dock.run_button.isEnabled()


def test_controls_and_settings_persist(make_dock, small_raster, qgis_iface):
    source = add_raster(small_raster, "small")
    qgis_iface.mapCanvas().setDestinationCrs(source.crs())
    dock = make_dock()
    assert dock.steps.isEnabled() and not dock.uncertainty.isEnabled()
    dock.method.setCurrentIndex(3)
    assert not dock.steps.isEnabled() and not dock.samples.isEnabled()
    dock.samples.setValue(4)
    assert not dock.uncertainty.isEnabled() and dock.parameters()["SAMPLES"] == 1  # Bicubic does not sample
    dock.method.setCurrentIndex(1)
    assert dock.uncertainty.isEnabled()
    dock.scale.setValue(3.5)
    dock.tile.setValue(128)
    dock.preview.setChecked(True)
    params = dock.parameters()
    assert params["METHOD"] == 1 and params["SAMPLES"] == 4 and params["TILE_SIZE"] == 128
    assert params["OUTPUT_UNCERTAINTY"] == "TEMPORARY_OUTPUT" and params["OUTPUT"] == "TEMPORARY_OUTPUT"
    assert params["EXTENT"].crs() == source.crs()
    again = make_dock()
    assert (again.method.currentIndex(), again.scale.value(), again.tile.value(), again.samples.value()) == (1, 3.5, 128, 4)
    assert again.preview.isChecked()


def test_run_adds_layer_above_source(make_dock, small_raster, tmp_path, qgis_iface):
    source = add_raster(small_raster, "small")
    below = add_raster(small_raster, "other")
    dock = make_dock()
    dock.layer_combo.setLayer(source)
    dock.method.setCurrentIndex(3)
    dock.scale.setValue(2.5)
    out = str(tmp_path / "sr.tif")
    dock.output.setFilePath(out)
    dock.run_button.click()
    assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
    assert wait_for(lambda: dock.run is None), "the run did not finish"
    layers = result_layers("small")
    assert [lyr.name() for lyr in layers] == ["small ×2.5 Bicubic"], qgis_iface.messageBar().get_messages(Qgis.Critical)
    layer = layers[0]
    assert layer.source() == out
    assert (layer.width(), layer.height()) == (250, 125)
    assert layer.extent() == source.extent()
    assert layer.renderer().type() == source.renderer().type()
    order = [node.layerId() for node in QgsProject.instance().layerTreeRoot().findLayers()]
    assert order.index(layer.id()) == order.index(source.id()) - 1
    assert below.id() in order
    assert dock.progress.value() == 100
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()


def run_dock(dock):
    dock.run_button.click()
    assert wait_for(lambda: dock.run is None), "the run did not finish"


def tree_names():
    return [node.name() for node in QgsProject.instance().layerTreeRoot().findLayers()]


def test_new_results_stack_above_older_ones_with_distinct_names(make_dock, small_raster, tmp_path):
    from qgis.core import QgsLayerTreeLayer

    source = add_raster(small_raster, "small")
    add_raster(small_raster, "other")  # on top of the source
    dock = make_dock()
    dock.layer_combo.setLayer(source)
    dock.method.setCurrentIndex(3)
    dock.scale.setValue(2.5)
    dock.output.setFilePath(str(tmp_path / "one.tif"))
    run_dock(dock)
    dock.output.setFilePath(str(tmp_path / "two.tif"))
    run_dock(dock)
    assert tree_names() == ["other", "small ×2.5 Bicubic #2", "small ×2.5 Bicubic", "small"]
    # with its uncertainty: the newest result on top, its σ layer hidden just below it
    dock.method.setCurrentIndex(0)
    dock.samples.setValue(2)
    dock.seed.setValue(7)
    dock.output.setFilePath(str(tmp_path / "three.tif"))
    dock.uncertainty.setFilePath(str(tmp_path / "three_std.tif"))
    run_dock(dock)
    from engine.methods import card_default_detail

    name = f"small ×2.5 LCMSR D{card_default_detail('lcmsr'):g} s7"  # the bundled card's default detail
    assert tree_names()[1:4] == [name, name + " σ", "small ×2.5 Bicubic #2"]
    root = QgsProject.instance().layerTreeRoot()
    (sigma,) = [n for n in root.findLayers() if n.name().endswith("σ")]
    assert isinstance(sigma, QgsLayerTreeLayer) and not sigma.itemVisibilityChecked()
    assert all(n.itemVisibilityChecked() for n in root.findLayers() if n is not sigma)
    renderer = sigma.layer().renderer()
    assert renderer.type() == "singlebandpseudocolor" and renderer.band() == 1
    legend = renderer.shader().rasterShaderFunction().legendSettings()
    assert legend.suffix() == " DN"
    # a result whose source sits in a group goes into that group, above the earlier results
    group = root.addGroup("scenes")
    source_node = root.findLayer(source.id())
    group.addChildNode(source_node.clone())
    root.removeChildNode(source_node)
    dock.method.setCurrentIndex(3)
    dock.samples.setValue(1)
    dock.output.setFilePath(str(tmp_path / "four.tif"))
    run_dock(dock)
    assert [n.name() for n in group.findLayers()] == ["small ×2.5 Bicubic #3", "small"]


def test_preview_runs_on_the_visible_extent(make_dock, small_raster, tmp_path, qgis_iface):
    from qgis.core import QgsRectangle

    source = add_raster(small_raster, "small")
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(source.crs())
    canvas.setExtent(QgsRectangle(500100, 3999700, 500300, 3999900))
    dock = make_dock()
    dock.method.setCurrentIndex(3)
    dock.scale.setValue(3)
    dock.preview.setChecked(True)
    label = dock.size_label.text()
    dock.output.setFilePath(str(tmp_path / "preview.tif"))
    dock.run_button.click()
    assert wait_for(lambda: dock.run is None)
    (layer,) = result_layers("small")
    assert layer.name() == "small ×3 Bicubic preview"
    assert source.extent().contains(layer.extent()) and layer.width() < 3 * source.width()
    px = layer.rasterUnitsPerPixelX()
    assert label.startswith(f"{layer.width()} × {layer.height()} px, pixel {px:.6g} × {px:.6g} m")  # what it wrote
    assert layer.height() == 60  # 200 m of 10 m pixels at ×3 (the width follows the canvas's shape)
    canvas.setExtent(QgsRectangle(500100, 3999800, 500200, 3999900))
    assert dock.size_label.text().split(" px")[0].endswith(" × 30")  # it follows the map


def test_run_with_band_subset_keeps_default_style(make_dock, small_raster, tmp_path):
    source = add_raster(small_raster, "small")
    dock = make_dock()
    dock.method.setCurrentIndex(3)
    dock.bands.setItemCheckState(2, Qt.Checked)  # band 3 only
    assert dock.parameters()["BANDS"] == [3]
    dock.output.setFilePath(str(tmp_path / "band3.tif"))
    dock.run_button.click()
    assert wait_for(lambda: dock.run is None)
    (layer,) = result_layers("small")
    assert layer.bandCount() == 1 and layer.renderer().type() == "singlebandgray"
    assert source.renderer().type() == "multibandcolor"


def test_error_goes_to_message_bar(make_dock, small_raster, tmp_path, qgis_iface):
    add_raster(small_raster, "small")
    dock = make_dock()
    dock.method.setCurrentIndex(3)
    dock.tile.setValue(32)
    dock.overlap.setValue(40)
    dock.output.setFilePath(str(tmp_path / "bad.tif"))
    dock.run_button.click()
    assert wait_for(lambda: dock.run is None)
    assert any("smaller than the tile" in m for m in qgis_iface.messageBar().get_messages(Qgis.Critical))
    assert result_layers("small") == [] and os.listdir(tmp_path) == []


def start_long_run(make_dock, tmp_path_factory, name):
    """A dock running bicubic on a 1024² raster in 16-pixel tiles, caught while it is running:
    (dock, run, layer id, output folder)."""
    rng = np.random.default_rng(2)
    big = write_raster(tmp_path_factory.mktemp("input") / f"{name}.tif", rng.integers(0, 255, (1, 1024, 1024), dtype=np.uint8))
    layer_id = add_raster(big, name).id()
    out_dir = tmp_path_factory.mktemp("out")
    dock = make_dock()
    dock.method.setCurrentIndex(3)
    dock.tile.setValue(16)
    dock.overlap.setValue(0)
    dock.output.setFilePath(str(out_dir / "sr.tif"))
    dock.run_button.click()
    run = dock.run
    assert wait_for(lambda: run.feedback.progress() > 0 or dock.run is None)
    assert dock.run is run, "the run ended before the test could interrupt it"
    return dock, run, layer_id, out_dir


def assert_stopped_cleanly(dock, run, name, out_dir):
    assert wait_for(lambda: dock.run is None)
    assert run.feedback.isCanceled()
    assert result_layers(name) == []
    assert os.listdir(out_dir) == []


def test_cancel_leaves_nothing(make_dock, tmp_path_factory, qgis_iface):
    dock, run, _, out_dir = start_long_run(make_dock, tmp_path_factory, "big")
    dock.cancel_button.click()
    assert_stopped_cleanly(dock, run, "big", out_dir)
    assert any("Cancelled" in m for m in qgis_iface.messageBar().get_messages(Qgis.Info))


def test_the_plugins_message_comes_after_the_task_managers(make_dock, tmp_path_factory, qgis_iface, monkeypatch):
    """QGIS reports a task's end from the task manager's statusChanged (a cancel reads as a failed
    task); the dock's own message must come after it, so that it is the one on top."""
    from qgis.core import QgsTask

    events = []
    manager = QgsApplication.taskManager()

    def task_ended(task_id, status):
        if status in (QgsTask.Complete, QgsTask.Terminated):
            events.append(("task manager", status))

    manager.statusChanged.connect(task_ended)
    bar = qgis_iface.messageBar()
    push = bar.pushMessage
    monkeypatch.setattr(bar, "pushMessage", lambda *a, **k: events.append(("plugin", a[1])) or push(*a, **k))
    try:
        dock, run, _, out_dir = start_long_run(make_dock, tmp_path_factory, "stopped")
        dock.cancel_button.click()
        assert_stopped_cleanly(dock, run, "stopped", out_dir)
    finally:
        manager.statusChanged.disconnect(task_ended)
    assert events == [("task manager", QgsTask.Terminated), ("plugin", "Cancelled: nothing was written.")]


def test_removing_the_input_layer_mid_run_cancels_cleanly(make_dock, tmp_path_factory, qgis_iface):
    dock, run, layer_id, out_dir = start_long_run(make_dock, tmp_path_factory, "doomed")
    QgsProject.instance().removeMapLayer(layer_id)
    assert_stopped_cleanly(dock, run, "doomed", out_dir)
    assert any("input layer was removed" in m for m in qgis_iface.messageBar().get_messages(Qgis.Info))
    assert dock.layer_combo.currentLayer() is None or dock.layer_combo.currentLayer().id() != layer_id


def test_missing_dependencies_are_explained(make_dock, monkeypatch, small_raster):
    add_raster(small_raster, "small")
    dock = make_dock()
    assert dock.deps_frame.isHidden()  # the test environment has torch and onnxruntime
    for name in ("torch", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    dock = make_dock()
    assert not dock.deps_frame.isHidden()
    assert "Neither PyTorch nor ONNX Runtime" in dock.deps_label.text()
    assert [dock.backend.itemData(i) for i in range(dock.backend.count())] == ["auto"]
    monkeypatch.undo()
    dock.refresh_dependencies()
    assert dock.deps_frame.isHidden() and dock.backend.count() == 3


def test_cuda_probe_is_lazy(make_dock, monkeypatch, small_raster):
    from latentsr.ui import deps

    calls = []
    monkeypatch.setattr(deps, "cuda_available", lambda backend, model=None: calls.append(backend) or True)
    add_raster(small_raster, "small")
    dock = make_dock()
    assert calls == [] and dock.device.findData("cuda") == -1
    dock.device.popup_requested.emit()
    dock.device.popup_requested.emit()
    assert calls == ["auto"] and dock.device.findData("cuda") == 2


def test_device_list_has_no_cuda_without_a_gpu(make_dock, small_raster):
    """The test machine has no GPU, though its onnxruntime-gpu lists CUDAExecutionProvider."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    add_raster(small_raster, "small")
    dock = make_dock()
    for backend in ("auto", "torch", "onnx"):
        dock.backend.setCurrentIndex(dock.backend.findData(backend))
        dock.device.popup_requested.emit()
        assert [dock.device.itemData(i) for i in range(dock.device.count())] == ["auto", "cpu"], backend


def test_every_control_has_a_tooltip_and_the_runner_is_named(make_dock, small_raster):
    from qgis.PyQt.QtWidgets import QAbstractButton, QComboBox, QLabel, QProgressBar, QWidget

    add_raster(small_raster, "small")
    dock = make_dock()
    controls = [w for w in dock.widget().widget().findChildren(QWidget)
                if isinstance(w, (QAbstractButton, QComboBox, QProgressBar)) or w.objectName() in ("sizeLabel", "runnerLabel")
                or type(w).__name__ in ("QgsFileWidget", "QgsDoubleSpinBox", "QgsSpinBox", "QgsMapLayerComboBox",
                                        "QgsCheckableComboBox", "QgsCollapsibleGroupBox")]
    inner = {w for c in controls for w in c.findChildren(QWidget)}  # a file widget's own line edit and button
    missing = [(type(w).__name__, w.text() if isinstance(w, (QAbstractButton, QLabel)) else "")
               for w in controls if w not in inner and not w.toolTip()]
    assert len(controls) > 20 and missing == []
    assert dock.consistency.parent() is dock.advanced and dock.model.parent() is dock.advanced
    dock.backend.setCurrentIndex(dock.backend.findData("onnx"))
    dock.device.popup_requested.emit()  # probed: no GPU here
    assert dock.runner_label.text() == f"ONNX Runtime on CPU, {os.cpu_count()} threads"
    dock.method.setCurrentIndex(3)
    assert "NumPy" in dock.runner_label.text()
    dock.consistency.setChecked(True)
    assert dock.parameters()["CONSISTENCY"] is True and "MODEL" not in dock.parameters()


def test_installer_runs_pip_pinned_with_live_log(qgis_app, tmp_path):
    from latentsr.ui import deps
    from latentsr.ui.installer import InstallDialog

    args = deps.pip_arguments(["torch", "onnxruntime"], str(tmp_path))
    assert args[:3] == ["-m", "pip", "install"] and args[args.index("--target") + 1] == str(tmp_path)
    assert {"torch==2.13.0+cpu", "safetensors==0.8.0", "onnxruntime==1.31.1"} <= set(args)
    assert not any(a.startswith("torch") for a in deps.pip_arguments(["onnxruntime"], str(tmp_path)))
    assert "dask[distributed]==2026.8.0" in deps.pip_arguments(["dask"], str(tmp_path))
    assert not any(a.startswith("dask") for a in args)
    dialog = InstallDialog(python=sys.executable, target=str(tmp_path))
    assert dialog.selected() in ([], ["torch"])
    outcome = []
    dialog.finished_install.connect(outcome.append)
    dialog.run_command(sys.executable, ["-c", "import sys; sys.stdout.write('Collecting torch==2.13.0\\nInstalled\\n')"])
    assert wait_for(lambda: outcome, 30)
    assert outcome == [True]
    assert "Collecting torch==2.13.0" in dialog.log.toPlainText()
    assert deps.DEPS_DIR in sys.path
    dialog.run_command(sys.executable, ["-c", "raise SystemExit(3)"])
    assert wait_for(lambda: len(outcome) == 2, 30)
    assert outcome[1] is False and "exit code 3" in dialog.status.text()
    dialog.deleteLater()


def test_plugin_loads_without_heavy_imports_and_unloads(tmp_path):
    """In a fresh Python: the plugin's load and initGui import neither torch nor onnxruntime, add the
    dock and menu entries, and unload removes them."""
    script = """
import sys
from qgis.core import QgsApplication
app = QgsApplication([], True)
app.initQgis()
from qgis.gui import QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtWidgets import QMainWindow


class Iface:
    def __init__(self):
        self.window, self.canvas, self.bar, self.menu, self.tools = QMainWindow(), QgsMapCanvas(), QgsMessageBar(), [], []
        self.mainWindow, self.mapCanvas, self.messageBar = lambda: self.window, lambda: self.canvas, lambda: self.bar
        self.addDockWidget, self.removeDockWidget = self.window.addDockWidget, self.window.removeDockWidget
        self.addPluginToRasterMenu = lambda menu, action: self.menu.append(action)
        self.removePluginRasterMenu = lambda menu, action: self.menu.remove(action)
        self.addToolBarIcon, self.removeToolBarIcon = self.tools.append, self.tools.remove  # the Plugins toolbar


iface = Iface()
import latentsr
plugin = latentsr.classFactory(iface)
plugin.initGui()
assert QgsApplication.processingRegistry().algorithmById("latentsr:superresolve") is not None
assert plugin.dock.parent() is iface.window and len(iface.menu) == 2 and len(iface.tools) == 1
heavy = [m for m in ("torch", "onnxruntime") if m in sys.modules]
plugin.unload()
assert plugin.dock is None and iface.menu == [] and iface.tools == []
assert QgsApplication.processingRegistry().providerById("latentsr") is None
assert not heavy, heavy
sys.stdout.write("ok\\n")
"""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path),
               PYTHONPATH=os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_detail_slider(make_dock, small_raster):
    """The detail slider: a tooltip, the model card's default at first, sent as DETAIL for the diffusion
    methods only, and remembered like the other choices."""
    from qgis.PyQt.QtWidgets import QSlider

    from latentsr.engine.methods import card_default_detail

    add_raster(small_raster, "small")
    dock = make_dock()
    slider = dock.widget().widget().findChild(QSlider, "detailSlider")
    assert slider is dock.detail and "faithful" in slider.toolTip().lower()
    assert dock.detail_value() == card_default_detail("lcmsr")
    slider.setValue(30)
    assert dock.detail_label.text() == "0.30" and dock.parameters()["DETAIL"] == pytest.approx(0.3)
    dock.method.setCurrentIndex(2)  # regression: no sampler
    assert not slider.isEnabled() and "DETAIL" not in dock.parameters()
    dock.method.setCurrentIndex(1)
    assert slider.isEnabled() and dock.parameters()["DETAIL"] == pytest.approx(0.3)
    assert make_dock().detail_value() == pytest.approx(0.3)
    from latentsr.engine.methods import DETAIL_RANGE

    for end, detail in zip((slider.minimum(), slider.maximum()), DETAIL_RANGE):  # the engine's range, end to end
        slider.setValue(end)
        assert dock.detail_value() == detail


FRESH_DOCK_WIDTH = 298  # what QGIS 3.22 gives the dock in a fresh profile (offscreen fonts are wider than the desktop's)


def test_dock_fits_its_default_width_and_scrolls_both_ways(make_dock, small_raster):
    add_raster(small_raster, "small")
    dock = make_dock()
    scroll = dock.widget()
    body = scroll.widget()
    assert scroll.horizontalScrollBarPolicy() != Qt.ScrollBarAlwaysOff  # never clipped out of reach
    for collapsed in (True, False):
        dock.advanced.setCollapsed(collapsed)
        body.layout().activate()
        QgsApplication.processEvents()
        assert body.minimumSizeHint().width() <= FRESH_DOCK_WIDTH, collapsed


def test_cancel_inside_a_single_tile_answers_within_seconds(make_dock, tmp_path, qgis_iface):
    """E²DiffSR, 8 samples, one tile of the bundled sample: progress moves inside the tile, and
    Cancel says "Cancelling…" and ends the run within 5 s, writing nothing."""
    add_raster(SAMPLE, "sample")
    dock = make_dock()
    dock.method.setCurrentIndex(dock.method.findData("e2diffsr"))
    dock.scale.setValue(2)
    dock.samples.setValue(8)
    dock.tile.setValue(512)  # the whole 256² raster in one tile
    dock.output.setFilePath(str(tmp_path / "sr.tif"))
    dock.run_button.click()
    run = dock.run
    # past the first of the 8 samples (95 % of the run is the tiles), still inside the only tile
    wait_for(lambda: dock.progress.value() >= 11 or dock.run is None, 20)
    assert dock.run is run, "the run ended before the test could cancel it"
    moved = dock.progress.value()
    dock.cancel_button.click()
    clicked = time.monotonic()
    meanwhile = (dock.cancel_button.text(), dock.progress.format(), dock.cancel_button.isEnabled(),
                 dock.run_button.isEnabled())
    assert wait_for(lambda: dock.run is None, 60)
    assert time.monotonic() - clicked < 5
    assert meanwhile == ("Cancelling…", "Cancelling…", False, False)
    assert moved > 0  # the bar moved inside the only tile
    assert os.listdir(tmp_path) == [] and result_layers("sample") == []
    assert any("Cancelled" in m for m in qgis_iface.messageBar().get_messages(Qgis.Info))
    assert dock.cancel_button.text() == "Cancel" and dock.run_button.isEnabled()


def test_interpreter_is_qgis_own_python_not_a_decoy_first_on_path(tmp_path, monkeypatch):
    """sys.executable inside QGIS can be another python3 found on PATH (a pyenv shim): pip and the
    Dask workers must get this process's own Python."""
    import multiprocessing
    import multiprocessing.spawn

    from latentsr.engine import cluster, interpreter
    from latentsr.ui import deps
    from latentsr.ui.installer import InstallDialog

    decoy = tmp_path / "python3"
    decoy.write_text(f"#!/bin/sh\ntouch {tmp_path / 'decoy-ran'}\nexec /bin/false\n")
    decoy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sys, "executable", str(decoy))
    interpreter.python_executable.cache_clear()
    try:
        python = deps.python_executable()
        assert python and python != str(decoy)
        probe = subprocess.run([python, "-c", "import sys, _csv; print(sys.prefix, sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60)
        assert probe.stdout.split()[0] == sys.prefix and probe.stdout.strip().endswith(str(tuple(sys.version_info[:2])))
        dialog = InstallDialog(target=str(tmp_path))
        assert dialog.python == python
        dialog.deleteLater()
        before = multiprocessing.spawn.get_executable()
        try:
            cluster.use_python_for_workers()
            assert os.fsdecode(multiprocessing.spawn.get_executable()) == python
        finally:
            multiprocessing.set_executable(before)
    finally:
        interpreter.python_executable.cache_clear()


def test_installer_names_the_installed_torch_build_and_offers_the_training_packages(qgis_app, tmp_path):
    from latentsr.engine.methods import cpu_only_torch
    from latentsr.ui import deps
    from latentsr.ui.installer import InstallDialog

    assert cpu_only_torch()  # the test environment's torch is 2.13.0+cpu
    dialog = InstallDialog(python=sys.executable, target=str(tmp_path))
    try:
        labels = {key: box.text() for key, box in dialog.choices.items()}
    finally:
        dialog.deleteLater()
    assert labels["torch-cuda"].endswith("(PyTorch 2.13.0+cpu is installed (CPU build))")  # was "(installed)"
    assert labels["torch"].endswith("(installed: 2.13.0+cpu)")
    assert "onnx 1.19.0 and tqdm 4.70.1" in labels["training"] and labels["training"].endswith("(installed: 1.19.0, 4.70.1)")
    args = deps.pip_arguments(["training"], str(tmp_path))
    assert {"onnx==1.19.0", "tqdm==4.70.1"} <= set(args)


def test_out_of_range_values_disable_run_with_the_engines_reason(make_dock, small_raster):
    from latentsr.engine.methods import MAX_SAMPLES
    from latentsr.engine.registry import REGISTRY

    add_raster(small_raster, "small")
    dock = make_dock()
    dock.scale.lineEdit().setText("× 9")  # typed
    dock.scale.interpretText()
    assert dock.scale.value() == 9 and not dock.run_button.isEnabled()
    assert "out of range" in dock.size_label.text() and "at most 8" in dock.size_label.text()
    dock.scale.setValue(1)
    assert dock.scale.value() == 1 and not dock.run_button.isEnabled() and "above 1" in dock.size_label.text()
    dock.scale.setValue(8)
    assert dock.run_button.isEnabled()
    for name in ("lcmsr", "e2diffsr"):
        dock.method.setCurrentIndex(dock.method.findData(name))
        assert dock.steps.maximum() == REGISTRY[name].max_steps
    assert dock.samples.maximum() == MAX_SAMPLES


def test_result_names_tell_detail_and_model_apart(make_dock, small_raster):
    from latentsr.engine import modelfile

    add_raster(small_raster, "small")
    dock = make_dock()
    dock.method.setCurrentIndex(dock.method.findData("e2diffsr"))
    dock.seed.setValue(3)
    dock.detail.setValue(0)
    assert dock.result_name() == "small ×2 E²DiffSR D0"  # the seed does not matter at D = 0
    dock.detail.setValue(100)
    assert dock.result_name() == "small ×2 E²DiffSR D1 s3"
    dock.model.setFilePath(str(modelfile.MODELS_DIR / modelfile.DEFAULT_MODEL))
    assert dock.result_name() == f"small ×2 E²DiffSR D1 s3 {modelfile.DEFAULT_MODEL}"
    dock.method.setCurrentIndex(dock.method.findData("bicubic"))
    assert dock.result_name() == "small ×2 Bicubic"


def test_model_list_drops_trained_folders_that_are_gone(make_dock, tmp_path):
    import shutil

    from latentsr.engine import modelfile
    from latentsr.provider import user_models

    kept, gone = tmp_path / "kept", tmp_path / "gone"
    for folder in (kept, gone):  # the card is what the list reads
        folder.mkdir()
        shutil.copy(modelfile.MODELS_DIR / modelfile.DEFAULT_MODEL / modelfile.CARD, folder)
    settings = QgsSettings()
    old = settings.value(user_models.TRAINED, [], type=list)
    try:
        user_models.register(str(kept))
        user_models.register(str(gone))
        shutil.rmtree(gone)
        dock = make_dock()
        dock.fill_model_list()
        folders = [dock.model_list.itemData(i) for i in range(dock.model_list.count())]
        assert str(kept) in folders and str(gone) not in folders
        assert settings.value(user_models.TRAINED, [], type=list) == [str(kept)] + [f for f in old if os.path.isdir(f)]
    finally:
        settings.setValue(user_models.TRAINED, old)
