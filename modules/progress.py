"""Progress of long stages on stderr: a tqdm bar (rate and ETA) when stderr is a terminal, plain
periodic lines through `logging` otherwise (Kubeflow pod logs, CI, files), where a bar's carriage
returns would pile up into one unreadable line.

Shared by the CLI, the executors and the Trainer (a Keras callback), so it lives in modules/ and
imports nothing of this project. The line text is tqdm's own meter (`tqdm.format_meter`), so both
forms show the same counts, rate and ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TextIO, TypeVar

_log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds between plain lines: often enough to see a pod is alive, rare enough to read its log.
LINE_INTERVAL_S = 30.0
_LINE_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [elapsed {elapsed}, ETA {remaining}, {rate_fmt}{postfix}]"
)
_LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [elapsed {elapsed}, {rate_fmt}{postfix}]"
# The first line has no rate yet: one unit (often with start-up costs: tracing, loading) says little.
_FIRST_LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [elapsed {elapsed}{postfix}]"
_FIRST_LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [elapsed {elapsed}{postfix}]"


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """True when `stream` (default sys.stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams (pytest capture, pipes)
        return False


class Progress:
    """Progress of `total` units of work (None when unknown).

    update(n) / set(done) move it; postfix text (e.g. the loss) rides along; close() ends it (a
    last plain line with the totals). A terminal gets a tqdm bar on `stream`; anything else gets
    one INFO line from logger 'modules.progress' at the first update, then every `interval_s`
    seconds, and at close. Usable as a context manager.
    """

    def __init__(
        self,
        total: Optional[float],
        label: str,
        unit: str = "case",
        stream: Optional[TextIO] = None,
        bar: Optional[bool] = None,
        interval_s: float = LINE_INTERVAL_S,
    ):
        """bar: True/False forces the form; None picks the bar when `stream` is a terminal."""
        self.total = total
        self.label = label
        self.unit = unit
        self.n: float = 0
        self.postfix = ""
        self.interval_s = float(interval_s)
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._last_line: Optional[float] = None
        self._last_said: Optional[tuple] = None  # (n, postfix) of the last plain line
        self._closed = False
        self._bar = None
        if bar if bar is not None else is_terminal(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit=unit, file=self._stream, mininterval=0.5, dynamic_ncols=True)

    def set(self, done: float, postfix: str = "") -> None:
        """Marks `done` units finished (absolute count); `postfix` replaces the trailing text."""
        self.update(done - self.n, postfix)

    def update(self, n: float = 1, postfix: str = "") -> None:
        """Marks `n` more units finished."""
        if self._closed:
            return
        self.n += n
        if postfix:
            self.postfix = postfix
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= self.interval_s:
            self._line(now)

    def line(self, rate: Optional[float] = None, first: bool = False) -> str:
        """The current state as one line, e.g. 'cases:  40% 4/10 case [elapsed 00:02, ETA 00:03,
        2.00case/s]'; `rate` (units/s) defaults to the mean since the start; `first` leaves out
        rate and ETA."""
        from tqdm import tqdm

        if first:
            bar_format = _FIRST_LINE_FORMAT if self.total else _FIRST_LINE_FORMAT_NO_TOTAL
        else:
            bar_format = _LINE_FORMAT if self.total else _LINE_FORMAT_NO_TOTAL
        return tqdm.format_meter(
            self.n,
            self.total,
            time.monotonic() - self._start,
            prefix=self.label,
            unit=self.unit,
            postfix=self.postfix or None,
            bar_format=bar_format,
            rate=rate,
        )

    def _line(self, now: float, final: bool = False) -> None:
        """One plain line: the first without a rate, later ones with the rate since the line
        before (ETA from the current pace), the final one with the mean rate."""
        rate = None
        if self._last_said is not None and self._last_line is not None and not final and now > self._last_line:
            rate = (self.n - self._last_said[0]) / (now - self._last_line)
        text = self.line(rate=rate, first=self._last_said is None and not final)
        self._last_line, self._last_said = now, (self.n, self.postfix)
        _log.info("%s", text)

    def write(self, message: str) -> None:
        """Prints `message` on its own line above the bar (or as a plain line)."""
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            print(message, file=self._stream, flush=True)

    def close(self) -> None:
        """Ends the bar, or writes the final plain line (counts, elapsed time, mean rate)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._last_said != (self.n, self.postfix):  # the totals, unless the last line said them
            self._line(time.monotonic(), final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def echo(message: str, file: Optional[TextIO] = None) -> None:
    """print(message) to `file` (default stdout) without cutting through a bar on the terminal:
    tqdm lifts its bars, prints the line and redraws them."""
    from tqdm import tqdm

    tqdm.write(message, file=file if file is not None else sys.stdout)


def track(items: Iterable[T], label: str, total: Optional[int] = None, unit: str = "case", **kwargs) -> Iterator[T]:
    """Yields `items`, advancing a Progress by one per item (total: len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, label, unit, **kwargs) as progress:
        for item in items:
            yield item
            progress.update(1)


def callback(label: str, unit: str = "case", **kwargs) -> Callable[[int, int], None]:
    """A `report(done, total)` function (the phantom writers' progress hook) over a Progress that
    is created at the first call and closed when done reaches total."""
    progress: Optional[Progress] = None

    def report(done: int, total: int) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(total, label, unit, **kwargs)
        progress.set(done)
        if done >= total:
            progress.close()

    return report


def count_records(file_patterns: Iterable[str], compression: str = "GZIP") -> int:
    """Records in the TFRecord files matching `file_patterns` (ExampleGen and Transform write
    GZIP), counted without parsing: the total of a progress over cases. TensorFlow is imported
    here only, so the rest of this module stays light."""
    import tensorflow as tf

    files = [path for pattern in file_patterns for path in tf.io.gfile.glob(pattern)]
    if not files:
        return 0
    dataset = tf.data.TFRecordDataset(files, compression_type=compression)
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1).numpy())
