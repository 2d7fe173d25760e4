"""The LatentSR dock: builds the parameters of ``latentsr:superresolve`` and runs that algorithm in
the background (ui.task). No raster or model logic here."""
from __future__ import annotations

import functools
import math

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsProcessing,
    QgsProject,
    QgsProviderRegistry,
    QgsReferencedRectangle,
    QgsSettings,
    QgsUnitTypes,
)
from qgis.gui import (
    QgsCheckableComboBox,
    QgsCollapsibleGroupBox,
    QgsDockWidget,
    QgsDoubleSpinBox,
    QgsFileWidget,
    QgsMapLayerComboBox,
    QgsSpinBox,
)
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ..engine import raster
from ..engine.errors import LatentSRError
from ..engine.methods import (DEFAULTS, DETAIL_HELP, DETAIL_RANGE, MAX_SAMPLES, MAX_SEED, RunOptions,
                              card_default_detail, steps_help)
from ..engine.registry import METHODS, REGISTRY
from ..engine.pipeline import MAX_SCALE, MIN_TILE, output_plan
from ..provider import user_models
from ..provider.algorithm import run_parameters
from . import deps
from .task import SOURCE_PROPERTY, SuperResolveRun, add_result_layer, add_uncertainty_layer
from ..provider.i18n import tr

SETTINGS = "latentsr/dock/"
DETAIL_TICKS = 100  # the detail slider's steps over the engine's DETAIL_RANGE
LOG_TAG = "LatentSR"
NAME_CHARS = 24  # a source name longer than this is shortened in result names
SCALE_TYPED = (1.0, 100.0)  # what the Scale box lets one type; the engine's range (MAX_SCALE) decides if it runs
SPIN_MAX = 2**31 - 1  # the largest value a Qt spin box holds
NARROW_COMBO = 10  # characters a combo of long entries asks room for (the dock must fit a fresh profile's width)


class DeviceComboBox(QComboBox):
    """A combo that says when its list is about to open (the CUDA probe waits for that)."""

    popup_requested = pyqtSignal()

    def showPopup(self):  # noqa: N802 - Qt API
        self.popup_requested.emit()
        super().showPopup()


class SuperResolveDock(QgsDockWidget):
    """Two clicks: pick a raster, press Run. ``install_requested`` asks the plugin for the installer."""

    install_requested = pyqtSignal()

    def __init__(self, iface, parent=None):
        super().__init__(tr("LatentSR super-resolution"), parent)
        self.setObjectName("LatentSRDock")
        self.iface = iface
        self.run: SuperResolveRun | None = None
        self.result_info: tuple[str, str, bool] = ("", "", False)  # name, source layer id, copy the style
        self.input_removed = False  # the run's input layer left the project, so the run was cancelled
        self.found = deps.detect()
        self.cuda_probed = False
        self._build()
        self.refresh_dependencies()
        self.restore_settings()
        QgsProject.instance().layersWillBeRemoved.connect(self.layers_removed)
        self._connect()
        self.layer_changed()

    # ---------------------------------------------------------------- widgets
    def _build(self) -> None:
        """The dock's widgets, top to bottom, in a scroll area."""
        body = QWidget()
        layout = QVBoxLayout(body)
        self._build_dependencies(layout)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)  # a narrow dock puts a field below its label
        self._build_input(form)
        self._build_method(form)
        self._build_outputs(form)
        layout.addLayout(form)
        self._build_advanced(layout)
        self._build_run(layout)
        self.set_tooltips()
        layout.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)  # never clipped out of reach
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setWidget(body)
        self.setWidget(scroll)

    def _build_dependencies(self, layout: QVBoxLayout) -> None:
        """The notice of missing dependencies and its install button."""
        self.deps_frame = QFrame()
        self.deps_frame.setFrameShape(QFrame.StyledPanel)
        deps_layout = QVBoxLayout(self.deps_frame)
        self.deps_label = QLabel()
        self.deps_label.setWordWrap(True)
        self.deps_label.setObjectName("dependencyNotice")
        self.install_button = QPushButton(tr("Install dependencies…"))
        deps_layout.addWidget(self.deps_label)
        deps_layout.addWidget(self.install_button)
        layout.addWidget(self.deps_frame)

    def _build_input(self, form: QFormLayout) -> None:
        """The input raster, its bands, the scale or target resolution, and the output size."""
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.setExcludedProviders(
            [p for p in QgsProviderRegistry.instance().providerList() if p != "gdal"])
        form.addRow(tr("Raster"), self.layer_combo)
        self.bands = QgsCheckableComboBox()
        self.bands.setDefaultText(tr("All bands"))
        form.addRow(tr("Bands"), self.bands)

        self.by_scale = QRadioButton(tr("Scale"))
        self.by_resolution = QRadioButton(tr("Resolution"))  # the target resolution (its tooltip says so)
        self.scale = QgsDoubleSpinBox()
        self.scale.setRange(*SCALE_TYPED)
        self.scale.setDecimals(2)
        self.scale.setSingleStep(0.5)
        self.scale.setClearValue(2.0)
        self.scale.setPrefix("× ")
        self.resolution = QgsDoubleSpinBox()
        self.resolution.setRange(0.0001, 1e6)
        self.resolution.setDecimals(4)
        self.resolution.setValue(1.0)
        form.addRow(self.by_scale, self.scale)
        form.addRow(self.by_resolution, self.resolution)
        self.size_label = QLabel()
        self.size_label.setWordWrap(True)
        self.size_label.setObjectName("sizeLabel")
        form.addRow(tr("Output"), self.size_label)

    def _build_method(self, form: QFormLayout) -> None:
        """The method and its steps, detail and samples."""
        self.method = QComboBox()
        self.method.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.method.setMinimumContentsLength(NARROW_COMBO)
        for name in METHODS:
            self.method.addItem(REGISTRY[name].label, name)
        form.addRow(tr("Method"), self.method)
        self.steps = QgsSpinBox()
        self.steps.setRange(0, REGISTRY[DEFAULTS.method].max_steps)  # per method: method_changed
        self.steps.setSpecialValueText(tr("method default"))
        self.steps.setClearValue(0)
        form.addRow(tr("Steps"), self.steps)
        detail_row = QHBoxLayout()
        self.detail = QSlider(Qt.Horizontal)
        self.detail.setObjectName("detailSlider")
        self.detail.setRange(0, DETAIL_TICKS)
        self.detail.setSingleStep(5)
        self.detail.setPageStep(25)
        self.detail.setTickPosition(QSlider.TicksBelow)
        self.detail.setTickInterval(25)
        self.detail_label = QLabel()
        self.detail_label.setMinimumWidth(self.detail_label.fontMetrics().horizontalAdvance("0.00") + 4)
        detail_row.addWidget(self.detail)
        detail_row.addWidget(self.detail_label)
        form.addRow(tr("Detail"), detail_row)
        self.samples = QgsSpinBox()
        self.samples.setRange(1, min(MAX_SAMPLES, SPIN_MAX))
        self.samples.setClearValue(1)
        form.addRow(tr("Samples"), self.samples)

    def _build_outputs(self, form: QFormLayout) -> None:
        """The uncertainty output, the output file and the preview switch."""
        self.uncertainty = QgsFileWidget()
        self.uncertainty.setStorageMode(QgsFileWidget.SaveFile)
        self.uncertainty.setFilter(tr("GeoTIFF (*.tif *.tiff)"))
        self.uncertainty.lineEdit().setPlaceholderText(tr("[Save to temporary file]"))
        self.uncertainty.setToolTip(tr("Per-pixel standard deviation of the samples (needs 2 or more samples)"))
        form.addRow(tr("Uncertainty"), self.uncertainty)
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter(tr("GeoTIFF (*.tif *.tiff)"))
        self.output.lineEdit().setPlaceholderText(tr("[Save to temporary file]"))
        form.addRow(tr("Output file"), self.output)
        self.preview = QCheckBox(tr("Visible map extent only"))
        form.addRow(tr("Preview"), self.preview)

    def _build_advanced(self, layout: QVBoxLayout) -> None:
        """The collapsed Advanced group: backend, device, tiles, seed, consistency, model, COG."""
        self.advanced = QgsCollapsibleGroupBox(tr("Advanced"))
        self.advanced.setObjectName("latentsrAdvanced")
        self.advanced.setCollapsed(True)
        advanced = QFormLayout(self.advanced)
        advanced.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.backend = QComboBox()
        advanced.addRow(tr("Backend"), self.backend)
        self.device = DeviceComboBox()
        advanced.addRow(tr("Device"), self.device)
        self.tile = QgsSpinBox()
        self.tile.setRange(MIN_TILE, 8192)
        self.tile.setValue(DEFAULTS.tile)
        self.tile.setClearValue(DEFAULTS.tile)
        self.tile.setSuffix(tr(" px"))
        advanced.addRow(tr("Tile size"), self.tile)
        self.overlap = QgsSpinBox()
        self.overlap.setRange(0, 1024)
        self.overlap.setValue(DEFAULTS.overlap)
        self.overlap.setClearValue(DEFAULTS.overlap)
        self.overlap.setSuffix(tr(" px"))
        advanced.addRow(tr("Tile overlap"), self.overlap)
        self.seed = QgsSpinBox()
        self.seed.setRange(0, min(MAX_SEED, SPIN_MAX))
        self.seed.setClearValue(0)
        advanced.addRow(tr("Random seed"), self.seed)
        self.consistency = QCheckBox(tr("Radiometric consistency"))
        advanced.addRow(self.consistency)
        self.model_list = DeviceComboBox()
        self.model_list.setObjectName("modelList")
        self.model_list.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)  # long folder names
        self.model_list.setMinimumContentsLength(NARROW_COMBO)
        advanced.addRow(tr("Model"), self.model_list)
        self.model = QgsFileWidget()
        self.model.setStorageMode(QgsFileWidget.GetDirectory)
        self.model.lineEdit().setPlaceholderText(tr("[Bundled model]"))
        advanced.addRow(tr("Model folder"), self.model)
        self.cog = QCheckBox(tr("Cloud Optimized GeoTIFF"))
        advanced.addRow(self.cog)
        layout.addWidget(self.advanced)

    def _build_run(self, layout: QVBoxLayout) -> None:
        """The progress bar, the Run and Cancel buttons and the runner line."""
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        buttons = QHBoxLayout()
        self.run_button = QPushButton(tr("Run"))
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton(tr("Cancel"))
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.runner_label = QLabel()
        self.runner_label.setObjectName("runnerLabel")
        self.runner_label.setWordWrap(True)
        layout.addWidget(self.runner_label)

    def set_tooltips(self) -> None:
        """Every control says what it does (the toolbox's parameter help, in short)."""
        tips = {
            self.layer_combo: tr("The raster layer to super-resolve (GDAL rasters only)"),
            self.bands: tr("Bands to super-resolve, in output order; none checked means all bands"),
            self.by_scale: tr("Give the output as a scale of the input"),
            self.scale: tr("Continuous scale, above 1 and at most {max_scale:g} (for example 2.5)").format(
                max_scale=MAX_SCALE),
            self.by_resolution: tr("Target resolution: give the output pixel size instead of a scale"),
            self.resolution: tr("Output pixel size in the layer's map units: the pixels are exactly this size, "
                                "the extent grows by less than one pixel"),
            self.size_label: tr("The size and pixel size the run will write"),
            self.method: tr("LCMSR samples in one step; E²DiffSR runs a few diffusion steps; Regression is "
                            "deterministic; Bicubic is the classic baseline"),
            self.steps: tr("Steps of the diffusion methods ({defaults}; at most {limits})").format(
                defaults=steps_help(),
                limits=", ".join(tr("{steps} for {method}").format(steps=REGISTRY[m].max_steps, method=REGISTRY[m].short)
                                 for m in METHODS if REGISTRY[m].max_steps)),
            self.detail: tr("Faithful (left, 0) to detailed (right, 1). ") + DETAIL_HELP,
            self.detail_label: tr("The detail D of the diffusion methods"),
            self.samples: tr("Number of diffusion samples: with more than one the output is their mean"),
            self.uncertainty: tr("Per-pixel standard deviation of the samples (needs 2 or more samples)"),
            self.output: tr("The output GeoTIFF (.tif); empty: a temporary file"),
            self.preview: tr("Super-resolve only the part shown on the map, on the full run's pixel grid"),
            self.advanced: tr("Backend, device, tiling, seed, consistency, model and output format"),
            self.backend: tr("auto: PyTorch on a CUDA GPU, else ONNX Runtime when the model has ONNX graphs, else "
                             "PyTorch"),
            self.device: tr("auto uses a CUDA GPU when the backend can, else the CPU; cuda is listed only when it "
                            "works"),
            self.tile: tr("Tiles of this many input pixels; smaller tiles use less memory"),
            self.overlap: tr("Neighbouring tiles overlap by this many input pixels and are blended there"),
            self.seed: tr("The same seed gives the same result for the diffusion methods"),
            self.consistency: tr("Project the result so that its bicubic downsampling gives back the input "
                                 "exactly"),
            self.model_list: tr("The bundled models and the ones you trained (LatentSR → Train); other folders "
                                "below"),
            self.model: tr("A model bundle folder (model.json + model.safetensors); empty: the bundled model"),
            self.cog: tr("Write a Cloud Optimized GeoTIFF (with overviews) instead of a tiled GeoTIFF"),
            self.progress: tr("Progress of the run"),
            self.run_button: tr("Run the super-resolution in the background"),
            self.cancel_button: tr("Stop the run before its next network call: nothing is written"),
            self.runner_label: tr("The backend and device that will run the chosen method"),
            self.install_button: tr("Install PyTorch or ONNX Runtime into the plugin's folder"),
            self.deps_label: tr("What the learned methods need"),
        }
        for widget, tip in tips.items():
            widget.setToolTip(tip)

    def runner_text(self) -> str:
        """Which backend and device will run (engine.methods.describe_runner); no heavy import here."""
        from ..engine.methods import describe_runner

        name = self.method_name()
        cuda = self.device.findData("cuda") >= 0 if self.cuda_probed else None
        return describe_runner(name, self.backend.currentData() or "auto", self.device.currentData() or "auto",
                               self.model.filePath() or None, cuda)

    def _connect(self) -> None:
        self.layer_combo.layerChanged.connect(self.layer_changed)
        for radio in (self.by_scale, self.by_resolution):
            radio.toggled.connect(self.update_state)
        for spin in (self.scale, self.resolution):
            spin.valueChanged.connect(self.update_state)
        self.bands.checkedItemsChanged.connect(self.update_state)
        self.method.currentIndexChanged.connect(self.method_changed)
        self.samples.valueChanged.connect(self.update_state)
        self.preview.toggled.connect(self.update_state)
        self.iface.mapCanvas().extentsChanged.connect(self.canvas_moved)
        self.backend.currentIndexChanged.connect(self.backend_changed)
        self.device.popup_requested.connect(self.probe_cuda)
        for spin in (self.steps, self.tile, self.overlap, self.seed):
            spin.valueChanged.connect(self.save_settings)
        self.detail.valueChanged.connect(self.detail_changed)
        self.device.currentIndexChanged.connect(self.save_settings)
        self.cog.toggled.connect(self.save_settings)
        self.consistency.toggled.connect(self.save_settings)
        self.model.fileChanged.connect(self.update_state)
        self.model.fileChanged.connect(self.select_listed_model)
        self.model_list.popup_requested.connect(self.fill_model_list)
        self.model_list.activated.connect(self.model_chosen)
        self.device.currentIndexChanged.connect(self.update_state)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.install_button.clicked.connect(self.install_requested)

    # ---------------------------------------------------------------- models
    def fill_model_list(self) -> None:
        """The bundled and the trained models (provider.user_models), then "Other folder"."""
        self.model_list.blockSignals(True)
        self.model_list.clear()
        for label, folder in user_models.listed():
            self.model_list.addItem(label, folder)
        self.model_list.addItem(tr("Other folder (below)"), None)
        self.model_list.blockSignals(False)
        self.select_listed_model()

    def select_listed_model(self) -> None:
        """Show the model folder's entry in the list (or "Other folder")."""
        index = self.model_list.findData(self.model.filePath())
        self.model_list.setCurrentIndex(index if index >= 0 else self.model_list.count() - 1)

    def model_chosen(self, index: int) -> None:
        folder = self.model_list.itemData(index)
        if folder is not None:
            self.model.setFilePath(folder)

    # ---------------------------------------------------------- dependencies
    def refresh_dependencies(self) -> None:
        """Detect torch / onnxruntime again (cheap) and offer only the backends found."""
        self.found = deps.detect()
        message = deps.missing_message(self.found)
        self.deps_label.setText(message)
        self.deps_frame.setVisible(bool(message))
        current = self.backend.currentData()
        self.backend.blockSignals(True)
        self.backend.clear()
        for name in deps.backends(self.found):
            self.backend.addItem(name, name)
        index = self.backend.findData(current)
        self.backend.setCurrentIndex(max(index, 0))
        self.backend.blockSignals(False)
        self.cuda_probed = False
        self._fill_devices(cuda=self.device.currentData() == "cuda")

    def _fill_devices(self, cuda: bool) -> None:
        current = self.device.currentData()
        self.device.blockSignals(True)
        self.device.clear()
        for name in ("auto", "cpu") + (("cuda",) if cuda else ()):
            self.device.addItem(name, name)
        self.device.setCurrentIndex(max(self.device.findData(current), 0))
        self.device.blockSignals(False)

    def probe_cuda(self) -> None:
        """Offer cuda only when the backend sees a GPU; asked once per backend, when the list opens."""
        if self.cuda_probed:
            return
        self.cuda_probed = True
        try:
            cuda = deps.cuda_available(self.backend.currentData() or "auto", self.model.filePath() or None)
        except (ImportError, OSError, RuntimeError) as exc:
            QgsMessageLog.logMessage(f"CUDA probe failed: {exc}", LOG_TAG, Qgis.Warning)
            cuda = False
        self._fill_devices(cuda)
        self.update_state()

    def backend_changed(self) -> None:
        self.cuda_probed = False
        self.update_state()

    # ----------------------------------------------------------------- state
    def layer_changed(self) -> None:
        layer = self.layer_combo.currentLayer()
        self.bands.clear()
        if layer is not None:
            for band in range(1, layer.bandCount() + 1):
                self.bands.addItemWithCheckState(layer.bandName(band), Qt.Unchecked, band)
            if not self.by_resolution.isChecked():
                self.resolution.setValue(self.pixel_size(layer) / self.scale.value())
            units = QgsUnitTypes.toAbbreviatedString(layer.crs().mapUnits())
            self.resolution.setSuffix(f" {units}" if units else "")
        self.update_state()

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def geotransform(source: str) -> tuple[float, ...] | None:
        try:
            return raster.open_raster(source).GetGeoTransform(can_return_null=True)
        except LatentSRError:
            return None

    def pixel_size(self, layer) -> float:
        """The layer's ground pixel size (geometric mean of columns and rows) as the run computes it
        (engine.raster.pixel_size: rotation-safe); QGIS's own figures where GDAL has no geotransform."""
        gt = self.geotransform(layer.source())
        px, py = raster.pixel_size(gt) if gt else (layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY())
        return math.sqrt(px * py)

    def effective_scale(self) -> float | None:
        """The scale the run will use (from the target resolution when that is chosen)."""
        if not self.by_resolution.isChecked():
            return self.scale.value()
        layer = self.layer_combo.currentLayer()
        if layer is None:
            return None
        return self.pixel_size(layer) / self.resolution.value()

    def preview_extent(self, layer) -> tuple[float, float, float, float] | None:
        """The visible map extent in the layer's CRS (as Processing reads EXTENT), or None when not previewing."""
        if not self.preview.isChecked():
            return None
        canvas = self.iface.mapCanvas()
        transform = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), layer.crs(), QgsProject.instance())
        try:
            rect = transform.transformBoundingBox(canvas.extent())
        except Exception:  # noqa: BLE001 - QgsCsException: the view does not map onto the layer
            return None
        return rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()

    def size_text(self) -> tuple[str, bool]:
        """What the run will write (the engine's own plan: size and pixel size, the preview's part
        included), and whether it can run."""
        layer = self.layer_combo.currentLayer()
        if layer is None:
            return tr("Choose a raster layer."), False
        scale = self.effective_scale()
        if not 1.0 < scale <= MAX_SCALE:
            return tr("Scale ×{scale:.4g} is out of range: it must be above 1 and at most {max_scale:g}.").format(
                scale=scale, max_scale=MAX_SCALE), False
        target = self.resolution.value() if self.by_resolution.isChecked() else None
        try:
            width, height, px, py = output_plan(layer.source(), scale, target, self.preview_extent(layer))
        except LatentSRError as exc:
            return tr("Cannot run: {exc}.").format(exc=exc), False
        units = QgsUnitTypes.toAbbreviatedString(layer.crs().mapUnits())
        pixel = tr("pixel {px:.6g} × {py:.6g} {units}").format(
            px=px, py=py, units=units) if px else tr("no georeferencing")
        text = tr("{width} × {height} px, {pixel}\n×{scale:.4g} of {in_width} × {in_height} px").format(
            width=width, height=height, pixel=pixel, scale=scale, in_width=layer.width(), in_height=layer.height())
        if self.preview.isChecked():
            text += tr(", preview: the visible part")
        return text, True

    def detail_value(self) -> float:
        lo, hi = DETAIL_RANGE
        return lo + (hi - lo) * self.detail.value() / DETAIL_TICKS

    def detail_changed(self) -> None:
        self.detail_label.setText(f"{self.detail_value():.2f}")
        self.save_settings()

    def canvas_moved(self) -> None:
        if self.preview.isChecked():
            self.update_state()

    def fit_steps(self) -> None:
        """The Steps box takes the diffusion method's own range (engine.registry); for the other
        methods it is disabled and keeps its value."""
        if REGISTRY[self.method_name()].stochastic:
            self.steps.setMaximum(REGISTRY[self.method_name()].max_steps)

    def method_changed(self) -> None:
        self.fit_steps()
        self.update_state()

    def update_state(self) -> None:
        self.scale.setEnabled(not self.by_resolution.isChecked())
        self.resolution.setEnabled(self.by_resolution.isChecked())
        stochastic = REGISTRY[self.method_name()].stochastic
        self.steps.setEnabled(stochastic)
        self.detail.setEnabled(stochastic)
        self.samples.setEnabled(stochastic)
        self.uncertainty.setEnabled(stochastic and self.samples.value() > 1)
        text, runnable = self.size_text()
        self.size_label.setText(text)
        self.runner_label.setText(self.runner_text())
        idle = self.run is None
        self.run_button.setEnabled(idle and runnable)
        self.cancel_button.setEnabled(not idle and not self.run.feedback.isCanceled())
        self.save_settings()

    # -------------------------------------------------------------- settings
    def save_settings(self) -> None:
        s = QgsSettings()
        s.setValue(SETTINGS + "method", self.method_name())
        s.setValue(SETTINGS + "scale", self.scale.value())
        s.setValue(SETTINGS + "by_resolution", self.by_resolution.isChecked())
        s.setValue(SETTINGS + "resolution", self.resolution.value())
        s.setValue(SETTINGS + "steps", self.steps.value())
        s.setValue(SETTINGS + "detail", self.detail_value())
        s.setValue(SETTINGS + "samples", self.samples.value())
        s.setValue(SETTINGS + "preview", self.preview.isChecked())
        s.setValue(SETTINGS + "backend", self.backend.currentData() or "auto")
        s.setValue(SETTINGS + "device", self.device.currentData() or "auto")
        s.setValue(SETTINGS + "tile", self.tile.value())
        s.setValue(SETTINGS + "overlap", self.overlap.value())
        s.setValue(SETTINGS + "seed", self.seed.value())
        s.setValue(SETTINGS + "cog", self.cog.isChecked())
        s.setValue(SETTINGS + "consistency", self.consistency.isChecked())
        s.setValue(SETTINGS + "model", self.model.filePath())

    def restore_settings(self) -> None:
        """The last choices; a saved cuda device is kept until the device list is opened and probed."""
        s = QgsSettings()
        method = self.method.findData(s.value(SETTINGS + "method", DEFAULTS.method))
        self.method.setCurrentIndex(method if method >= 0 else self.method.findData(DEFAULTS.method))
        self.fit_steps()
        self.scale.setValue(s.value(SETTINGS + "scale", 2.0, type=float))
        by_resolution = s.value(SETTINGS + "by_resolution", False, type=bool)
        (self.by_resolution if by_resolution else self.by_scale).setChecked(True)
        self.resolution.setValue(s.value(SETTINGS + "resolution", 1.0, type=float))
        self.steps.setValue(s.value(SETTINGS + "steps", 0, type=int))
        detail = s.value(SETTINGS + "detail", -1.0, type=float)
        lo, hi = DETAIL_RANGE
        if not lo <= detail <= hi:  # never chosen (or damaged): the bundled model's default
            detail = card_default_detail(DEFAULTS.method)
        self.detail.setValue(round((detail - lo) / (hi - lo) * DETAIL_TICKS))
        self.detail_label.setText(f"{self.detail_value():.2f}")
        self.samples.setValue(s.value(SETTINGS + "samples", 1, type=int))
        self.preview.setChecked(s.value(SETTINGS + "preview", False, type=bool))
        self.backend.setCurrentIndex(max(self.backend.findData(s.value(SETTINGS + "backend", "auto")), 0))
        device = s.value(SETTINGS + "device", "auto")
        self._fill_devices(cuda=device == "cuda")
        self.device.setCurrentIndex(max(self.device.findData(device), 0))
        self.tile.setValue(s.value(SETTINGS + "tile", DEFAULTS.tile, type=int))
        self.overlap.setValue(s.value(SETTINGS + "overlap", DEFAULTS.overlap, type=int))
        self.seed.setValue(s.value(SETTINGS + "seed", DEFAULTS.seed, type=int))
        self.cog.setChecked(s.value(SETTINGS + "cog", False, type=bool))
        self.consistency.setChecked(s.value(SETTINGS + "consistency", False, type=bool))
        self.model.setFilePath(s.value(SETTINGS + "model", "", type=str))
        self.fill_model_list()

    # ------------------------------------------------------------------- run
    def method_name(self) -> str:
        return self.method.currentData() or DEFAULTS.method

    def selected_bands(self) -> list[int]:
        """The checked bands; empty when none or all are checked (all bands, in order)."""
        bands = [int(b) for b in self.bands.checkedItemsData()]
        return [] if len(bands) == self.bands.count() else bands

    def run_options(self) -> RunOptions:
        """The run options of the current choices (engine.methods.RunOptions, which checks them): steps,
        detail and samples only for a method that samples (their widgets are disabled for the others)."""
        stochastic = REGISTRY[self.method_name()].stochastic
        return RunOptions(method=self.method_name(), steps=(self.steps.value() or None) if stochastic else None,
                          detail=self.detail_value() if stochastic else None,
                          backend=self.backend.currentData() or DEFAULTS.backend,
                          device=self.device.currentData() or DEFAULTS.device, model=self.model.filePath() or None,
                          consistency=self.consistency.isChecked(), seed=self.seed.value(),
                          samples=self.samples.value() if stochastic else 1)

    def parameters(self, options: RunOptions | None = None) -> dict:
        """The ``latentsr:superresolve`` parameters for the current choices (their run options: ``options``)."""
        options = options or self.run_options()
        layer = self.layer_combo.currentLayer()
        params = {
            "INPUT": layer.source(),
            "SCALE": self.scale.value(),
            "TILE_SIZE": self.tile.value(),
            "OVERLAP": self.overlap.value(),
            "COG": self.cog.isChecked(),
            "OUTPUT": self.output.filePath() or QgsProcessing.TEMPORARY_OUTPUT,
            **run_parameters(options),
        }
        if self.selected_bands():
            params["BANDS"] = self.selected_bands()
        if self.by_resolution.isChecked():
            params["TARGET_RESOLUTION"] = self.resolution.value()
        if options.samples > 1:
            params["OUTPUT_UNCERTAINTY"] = self.uncertainty.filePath() or QgsProcessing.TEMPORARY_OUTPUT
        if self.preview.isChecked():
            canvas = self.iface.mapCanvas()
            params["EXTENT"] = QgsReferencedRectangle(canvas.extent(), canvas.mapSettings().destinationCrs())
        return params

    def result_name(self, options: RunOptions | None = None) -> str:
        """A short name, distinct from earlier results of the same source: "<source> ×2.5 LCMSR D0.25 s0",
        then "… #2", "#3": the method as its run options name it (RunOptions.label), and the model's name
        when it is not the bundled default."""
        options = options or self.run_options()
        layer = self.layer_combo.currentLayer()
        source = layer.name() if len(layer.name()) <= NAME_CHARS else layer.name()[:NAME_CHARS - 1] + "…"
        name = f"{source} ×{self.effective_scale():.3g} {options.label()}"
        if REGISTRY[options.method].learned and options.model:
            model = user_models.card_name(options.model) or options.model
            name += " " + (model if len(model) <= NAME_CHARS else model[:NAME_CHARS - 1] + "…")
        if self.preview.isChecked():
            name += " preview"
        taken = {lyr.name() for lyr in QgsProject.instance().mapLayers().values()
                 if lyr.customProperty(SOURCE_PROPERTY) == layer.id()}
        runs = 1
        while (name if runs == 1 else f"{name} #{runs}") in taken:
            runs += 1
        return name if runs == 1 else f"{name} #{runs}"

    def start(self) -> None:
        """Run the algorithm in the background with the current choices."""
        layer = self.layer_combo.currentLayer()
        if layer is None or self.run is not None:
            return
        self.save_settings()
        try:
            options = self.run_options()
            self.run = SuperResolveRun(self.parameters(options))
        except (RuntimeError, LatentSRError) as exc:
            self.iface.messageBar().pushMessage(tr("LatentSR"), str(exc), level=Qgis.Critical)
            return
        self.result_info = (self.result_name(options), layer.id(), not self.selected_bands())
        self.input_removed = False
        self.run.feedback.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.run.finished.connect(self.finished)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.update_state()
        self.run.start()

    def cancel(self) -> None:
        """Ask the run to stop; until it has, the dock says it is cancelling."""
        if self.run is not None:
            self.run.cancel()
            self.cancel_button.setEnabled(False)
            self.cancel_button.setText(tr("Cancelling…"))
            self.progress.setFormat(tr("Cancelling…"))

    def layers_removed(self, layer_ids) -> None:
        """A run whose input layer leaves the project stops: its result would have no place."""
        if self.run is not None and self.result_info[1] in layer_ids:
            self.input_removed = True
            self.cancel()

    def finished(self, ok: bool, results: dict, message: str) -> None:
        run, self.run = self.run, None
        self.cancel_button.setText(tr("Cancel"))
        self.progress.setFormat("%p%")
        self.update_state()
        if not ok:
            self.progress.setValue(0)
            cancelled = run.feedback.isCanceled()
            if cancelled and self.input_removed:
                message = tr("The input layer was removed from the project during the run: it was cancelled and nothing was "
                             "written.")
            self.iface.messageBar().pushMessage(tr("LatentSR"), message, level=Qgis.Info if cancelled else Qgis.Critical,
                                                duration=5 if cancelled else 0)
            return
        self.progress.setValue(100)
        name, source_id, copy_style = self.result_info
        layer = add_result_layer(results["OUTPUT"], name, source_id, copy_style)
        if layer is None:
            self.iface.messageBar().pushMessage(tr("LatentSR"), tr("The result {output} could not be loaded.").format(
                output=results["OUTPUT"]), level=Qgis.Critical)
            return
        uncertainty = results.get("OUTPUT_UNCERTAINTY")
        if uncertainty:
            add_uncertainty_layer(uncertainty, f"{name} σ", layer)
        self.iface.messageBar().pushMessage(tr("LatentSR"), tr("Added “{name}”.").format(
            name=name), level=Qgis.Success, duration=5)

    def shutdown(self) -> None:
        """Cancel a running job (plugin unload); it ends on its own and loads nothing."""
        QgsProject.instance().layersWillBeRemoved.disconnect(self.layers_removed)
        self.iface.mapCanvas().extentsChanged.disconnect(self.canvas_moved)
        if self.run is not None:
            self.run.finished.disconnect(self.finished)
            self.run.cancel()
            self.run = None
