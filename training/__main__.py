import signal
import sys

from .cli import main

try:
    code = main()
except KeyboardInterrupt:  # a stop that lands after main() has reported, while it returns: once seen in CI as an
    code = 130             # exit by SIGINT after the one-line error of a stopped ONNX export
finally:  # a stop that lands while the process winds down must not change its exit code
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.exit(code)
