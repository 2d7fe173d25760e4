"""The "Install dependencies" dialog: pip installs pinned PyTorch / ONNX Runtime into the plugin's
private ``deps`` folder, with its output shown live, and that folder is put on sys.path."""
from __future__ import annotations

import html
import platform

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import QProcess, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from . import deps
from ..provider.i18n import tr

LOG_TAG = "LatentSR"


class InstallDialog(QDialog):
    """Choose packages, run pip, follow its log. ``finished_install(ok)`` fires when pip ends."""

    finished_install = pyqtSignal(bool)

    def __init__(self, parent=None, python: str | None = None, target: str = deps.DEPS_DIR):
        super().__init__(parent)
        self.setWindowTitle(tr("LatentSR: install dependencies"))
        self.resize(720, 480)
        self.python = python or deps.python_executable()  # None: QGIS's Python was not found
        self.target = target
        self.process: QProcess | None = None
        found = deps.detect()

        layout = QVBoxLayout(self)
        using = (tr("using <tt>{python}</tt>").format(python=html.escape(self.python)) if self.python else
                 tr("but QGIS's own Python interpreter could not be found, so pip cannot be started from here: run "
                    "<tt>python -m pip install --target</tt> with that folder from QGIS's Python (OSGeo4W Shell on "
                    "Windows)"))
        intro = QLabel(tr("Installs pinned packages with pip into the plugin's private folder<br><tt>{folder}"
                          "</tt><br>{using}. QGIS's own Python packages are not touched.").format(
            folder=html.escape(target), using=using))
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.choices: dict[str, QCheckBox] = {}
        for key, label in deps.packages().items():
            if key == "torch-cuda" and platform.system() != "Linux":
                continue
            note = deps.installed_note(key)
            box = QCheckBox(label + (f"  ({note})" if note else ""))
            box.setChecked(key == "torch" and not found["torch"])
            layout.addWidget(box)
            self.choices[key] = box
        self.choices["torch"].toggled.connect(lambda on: on and self._uncheck("torch-cuda"))
        if "torch-cuda" in self.choices:
            self.choices["torch-cuda"].toggled.connect(lambda on: on and self._uncheck("torch"))

        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        layout.addWidget(self.log, 1)
        self.status = QLabel()
        layout.addWidget(self.status)

        self.buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.install_button = QPushButton(tr("Install"))
        self.buttons.addButton(self.install_button, QDialogButtonBox.ActionRole)
        self.install_button.clicked.connect(self.install)
        self.install_button.setEnabled(self.python is not None)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def _uncheck(self, key: str) -> None:
        if key in self.choices:
            self.choices[key].setChecked(False)

    def selected(self) -> list[str]:
        return [key for key, box in self.choices.items() if box.isChecked()]

    def install(self) -> None:
        choices = self.selected()
        if not choices:
            self.status.setText(tr("Choose at least one package."))
            return
        self.run_command(self.python, deps.pip_arguments(choices, self.target))

    def run_command(self, program: str, arguments: list[str]) -> None:
        """Start ``program arguments`` and stream its merged output into the log."""
        self.log.appendPlainText("$ " + " ".join([program] + arguments))
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._error)
        self.install_button.setEnabled(False)
        self.status.setText(tr("Installing… this can take several minutes."))
        self.process.start(program, arguments)

    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def _read_output(self) -> None:
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", errors="replace")
        for line in text.splitlines():
            self.log.appendPlainText(line)

    def _error(self, error) -> None:
        if error == QProcess.FailedToStart:
            self._done(False, tr("Could not start {python}: is pip available for QGIS's Python?").format(
                python=self.python))

    def _finished(self, code: int, status) -> None:
        if status == QProcess.NormalExit and code == 0:
            deps.add_to_path()
            self._done(True, tr("Installed. The learned methods are available now (restart QGIS if they fail to load)."))
        else:
            self._done(False, tr("pip failed (exit code {code}): see the log above.").format(code=code))

    def _done(self, ok: bool, message: str) -> None:
        self.status.setText(message)
        self.install_button.setEnabled(True)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Success if ok else Qgis.Critical)
        self.finished_install.emit(ok)

    def reject(self) -> None:
        """Close; a running pip is stopped first."""
        if self.running():
            self.process.kill()
            self.process.waitForFinished(3000)
        super().reject()
