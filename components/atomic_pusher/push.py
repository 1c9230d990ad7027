"""Atomic-as-the-filesystem-allows pushes of a SavedModel into a TF Serving model base path.

TF Serving polls ``<base>/`` and loads children whose names parse as an int64 version
(FileSystemStoragePathSource: ParseVersionNumber; other names are skipped silently). So a
version is written under a temporary name that is not an integer, then published:

* Local / POSIX paths (no scheme or ``file://``): copy into ``<base>/.medtfx-push-<version>-<id>``
  (saved_model.pb last), then ``rename`` it to ``<base>/<version>``. rename(2) of a directory
  within one filesystem is atomic: a poller lists either no ``<version>`` or the complete one.
  GUARANTEE: no integer directory is ever visible without its saved_model.pb and every other file.
* Object stores (``gs://``, ``s3://``, any other scheme): "directories" are key prefixes and
  rename is a per-object copy, so true atomicity is impossible. We upload everything to the
  temporary prefix first (the slow part, and the part most likely to fail: a failure here
  never touches ``<base>/<version>``), then copy each object to ``<base>/<version>/`` with
  saved_model.pb LAST, then delete the temporary prefix. On s3 that copy is server-side
  (CopyObject); on gs TensorFlow 2.16's GCS filesystem has no CopyFile, so tf.io.gfile.copy
  reads each object and uploads it again (seen in tests/test_pusher_gcs.py's request log).
  GUARANTEE: saved_model.pb appears under ``<version>/`` only after every other file of the
  model is there, so a version that has saved_model.pb is complete. NOT guaranteed: during the
  copy phase (seconds for an s3 server-side copy; a full re-transfer on gs) ``<version>/`` is
  listed without saved_model.pb; a TF Serving
  poll in that window fails to load it and retries (model server flags max_num_load_retries /
  load_retry_interval_micros), and it never serves a partial model because loading needs
  saved_model.pb. If the copy phase fails, the partial ``<version>/`` objects are deleted
  (best effort) and the error is raised.
* A crash (SIGKILL) mid-push can leave a ``.medtfx-push-*`` directory behind; TF Serving
  ignores it, and :func:`stale_temporaries` lists them for cleanup.

``s3://`` needs tensorflow-io's filesystem plugin (imported on demand); ``gs://`` is built into
TensorFlow. All I/O goes through ``tf.io.gfile``. tensorflow-io 0.37.1's s3 plugin aborts the
process at interpreter exit ("pure virtual method called", exit code 134; tensorflow/io#2039),
which would fail a Kubeflow task after a successful push, so :func:`push_model` runs s3 pushes
in a child process that leaves with os._exit (no static destructors) and reports back as JSON.
That plugin refuses to copy a zero-byte object server-side ("Source is a directory or empty
file"), so empty files (an empty TFT vocabulary, say) are published into object stores by an
empty write instead. tests/test_pusher_s3.py runs all of this against moto's S3 server and
tests/test_pusher_gcs.py against a GCS emulator, both on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import subprocess
import sys
import time
import uuid
from typing import Callable, List, Optional

TEMP_PREFIX = ".medtfx-push-"
SAVED_MODEL_PB = "saved_model.pb"
_LOCAL_SCHEMES = ("", "file")


def scheme(path: str) -> str:
    """'gs', 's3', ... or '' for plain local paths."""
    head, sep, _ = path.partition("://")
    return head.lower() if sep else ""


def is_local(path: str) -> bool:
    """True for paths where directory rename is atomic (POSIX local filesystem)."""
    return scheme(path) in _LOCAL_SCHEMES


def register_filesystem(path: str) -> None:
    """Makes tf.io.gfile understand `path`'s scheme (s3:// lives in tensorflow-io)."""
    if scheme(path) == "s3":
        import tensorflow_io  # noqa: F401  (registers the s3 filesystem plugin)


def _join(base: str, *parts: str) -> str:
    # posixpath keeps '/' on object stores; os.path is the same on POSIX.
    return posixpath.join(base.rstrip("/"), *parts)


def list_model_files(src: str) -> List[str]:
    """Relative paths of every file under `src`, saved_model.pb last (the publish order)."""
    import tensorflow as tf

    files = []
    for dirpath, _, filenames in tf.io.gfile.walk(src):
        rel_dir = os.path.relpath(dirpath, src) if is_local(src) else dirpath[len(src.rstrip("/")) :].strip("/")
        for name in filenames:
            files.append(name if rel_dir in ("", ".") else posixpath.join(rel_dir, name))
    if SAVED_MODEL_PB not in files:
        raise FileNotFoundError(f"{src} is not a SavedModel directory: no {SAVED_MODEL_PB}")
    files.sort(key=lambda rel: (rel == SAVED_MODEL_PB, rel))
    return files


def integer_versions(base: str) -> List[int]:
    """The version numbers TF Serving would see under `base` (children named as integers)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(base):
        return []
    versions = []
    for child in tf.io.gfile.listdir(base):
        name = child.rstrip("/")
        if name.isdigit():
            versions.append(int(name))
    return sorted(versions)


def next_version(base: str, now: Optional[float] = None) -> int:
    """A UNIX-timestamp version (as TFX's Pusher uses) that is also larger than every existing
    version, so the new model is the one TF Serving's 'latest' policy serves even if clocks
    moved backwards."""
    stamp = int(now if now is not None else time.time())
    existing = integer_versions(base)
    return max([stamp] + [v + 1 for v in existing])


def stale_temporaries(base: str) -> List[str]:
    """Leftover temporary push directories under `base` (from crashed pushes)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(base):
        return []
    return [_join(base, c.rstrip("/")) for c in tf.io.gfile.listdir(base) if c.startswith(TEMP_PREFIX)]


def _copy_files(src: str, dst: str, files: List[str], copy: Callable[[str, str], None]) -> None:
    """Copies relative `files` from src to dst in order (creating local parent directories;
    object stores need none: keys imply their prefixes)."""
    import tensorflow as tf

    local = is_local(dst)
    for rel in files:
        target = _join(dst, rel)
        if local:
            tf.io.gfile.makedirs(posixpath.dirname(target))
        copy(_join(src, rel), target)


def _gfile_copy(src: str, dst: str) -> None:
    import tensorflow as tf

    if not is_local(dst) and tf.io.gfile.stat(src).length == 0:
        # The s3 plugin's CopyFile refuses empty sources; a write of b"" creates the object
        # (a GFile closed without any write creates nothing there).
        if tf.io.gfile.exists(dst):
            raise FileExistsError(f"{dst} already exists")
        with tf.io.gfile.GFile(dst, "wb") as fh:
            fh.write(b"")
        return
    tf.io.gfile.copy(src, dst, overwrite=False)


def _remove_tree(path: str) -> None:
    import tensorflow as tf

    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    except Exception as exc:  # cleanup must not hide the original error
        logging.warning("could not remove %s: %s", path, exc)


def atomic_push(
    src: str,
    base: str,
    version: Optional[int] = None,
    strategy: str = "auto",
    copy: Optional[Callable[[str, str], None]] = None,
) -> str:
    """Publishes the SavedModel at `src` as `<base>/<version>` (see the module docstring).

    Args:
      src: SavedModel directory (saved_model.pb, variables/, assets/ ...).
      base: TF Serving model base path (local, gs://, s3://).
      version: integer version; default :func:`next_version`.
      strategy: 'rename' (local default), 'copy' (object-store default) or 'auto'.
      copy: file copy function (src, dst), injectable so tests can simulate failures.
    Returns:
      The published version directory `<base>/<version>`.
    Raises:
      FileExistsError if that version already exists; the copy error if the push failed (then
      nothing new is visible as an integer directory, on local paths).
    """
    import tensorflow as tf

    register_filesystem(src)
    register_filesystem(base)
    copy = copy or _gfile_copy
    if strategy == "auto":
        strategy = "rename" if is_local(base) else "copy"
    if strategy not in ("rename", "copy"):
        raise ValueError(f"unknown push strategy {strategy!r}")
    files = list_model_files(src)
    version = int(version if version is not None else next_version(base))
    final = _join(base, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"model version {final} already exists")
    if is_local(base):
        tf.io.gfile.makedirs(base)
    temp = _join(base, f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        _copy_files(src, temp, files, copy)
    except BaseException:
        _remove_tree(temp)
        raise
    if strategy == "rename":
        try:
            tf.io.gfile.rename(temp, final, overwrite=False)
        except BaseException:
            _remove_tree(temp)
            raise
        return final
    try:
        _copy_files(temp, final, files, copy)  # saved_model.pb last
    except BaseException:
        _remove_tree(final)
        _remove_tree(temp)
        raise
    _remove_tree(temp)
    return final


# Schemes whose filesystem plugin must not be loaded into a long-lived process (see above).
ISOLATED_SCHEMES = ("s3",)


def _push_and_report(src: str, base: str) -> dict:
    path = atomic_push(src, base)
    return {
        "path": path,
        "version": posixpath.basename(path.rstrip("/")),
        "strategy": "rename" if is_local(base) else "copy",
        "stale": stale_temporaries(base),
    }


def push_model(src: str, base: str, timeout_s: float = 3600.0) -> dict:
    """atomic_push with the default version, then a look for stale temporaries. Returns
    {'path', 'version', 'strategy', 'stale'}. s3:// runs in a child process (module docstring);
    its error comes back as RuntimeError with the child's message."""
    if scheme(base) not in ISOLATED_SCHEMES and scheme(src) not in ISOLATED_SCHEMES:
        return _push_and_report(src, base)
    proc = subprocess.run(
        [sys.executable, "-m", "components.atomic_pusher.push", src, base],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = (
        json.loads(lines[-1])
        if lines
        else {"error": f"push process exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    )
    if "error" in result:
        raise RuntimeError(f"push of {src} to {base} failed: {result['error']}")
    return result


def _main(argv: List[str]) -> None:
    """Child process of push_model: prints one JSON line, then os._exit (skips the s3 plugin's
    crashing static destructors)."""
    try:
        result = _push_and_report(argv[0], argv[1])
        code = 0
    except Exception as exc:  # reported to the parent, which raises
        result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _main(sys.argv[1:])
