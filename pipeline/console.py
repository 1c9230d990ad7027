"""Console output for the CLI: stage progress and real problems, not library chatter."""

from __future__ import annotations

import logging
import re
import sys
import time

# Harmless warnings TFX/TFMA/Beam print on every local run (they hide the ones that matter).
_HARMLESS = (
    "ArtifactQuery.property_predicate is not supported",
    "does not have payload_format custom property",
    "Couldn't find python-snappy",
    "tf_record_iterator (from tensorflow.python.lib.io.tf_record) is deprecated",
    "is deprecated and will be removed in a future version",
)
_STAGE = re.compile(r"^Component (\S+) is (running|finished)\.$")
_OWN_LOGGERS = ("components", "modules", "pipeline")


class ConsoleFilter(logging.Filter):
    """Passes stage start/finish lines, this project's INFO logs and non-harmless warnings."""

    def __init__(self):
        super().__init__()
        self._started = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        stage = _STAGE.match(message)
        if stage:
            name, state = stage.groups()
            now = time.time()
            if state == "running":
                self._started[name] = now
                record.msg, record.args = f"[{time.strftime('%H:%M:%S')}] {name} ...", ()
            else:
                took = now - self._started.get(name, now)
                record.msg, record.args = f"[{time.strftime('%H:%M:%S')}] {name} done ({took:.0f} s)", ()
            return True
        if record.levelno >= logging.WARNING:
            return not any(h in message for h in _HARMLESS)
        return record.name.split(".")[0] in _OWN_LOGGERS


class _BarAwareHandler(logging.StreamHandler):
    """Writes each record through tqdm.write, which lifts any progress bar drawn on the stream,
    prints the line and redraws the bar below it (a plain write would cut the bar in two)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def configure() -> None:
    """Routes Python and absl logging through ConsoleFilter to stderr."""
    from absl import logging as absl_logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _BarAwareHandler(sys.stderr)
    handler.addFilter(ConsoleFilter())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
