import signal
import sys

from .cli import main

code = main()
if code:  # reported in one line: a stop that lands while the process winds down must not change its exit code
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.exit(code)
