"""A real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) for the DICOMweb tests.

`start_orthanc()` runs /usr/sbin/Orthanc with a JSON configuration of its own: a free HTTP port,
a temporary storage/index folder, the DICOMweb plugin at /dicom-web/, the DICOM (DIMSE) server
off, remote access refused (Orthanc has no bind-address option: it listens on every interface
but answers only loopback clients) and HTTP basic authentication with a test user, so the
client's credentials-from-environment path is exercised for real. `make test` installs the
packages when missing; otherwise the tests skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

import pytest
import requests

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
USER, PASSWORD = "medtfx-test", "not-a-real-secret"
START_TIMEOUT_S = 60.0


@dataclasses.dataclass
class Orthanc:
    """A running Orthanc. rest: its REST root (http://127.0.0.1:PORT); dicomweb: the DICOMweb
    root; auth: (user, password) for requests."""

    rest: str
    dicomweb: str
    auth: tuple
    process: subprocess.Popen
    workdir: str

    def upload(self, paths: List[str]) -> List[dict]:
        """POSTs each DICOM file to /instances (Orthanc's REST upload); returns Orthanc's answers.
        Raises requests.HTTPError when Orthanc refuses a file."""
        answers = []
        for path in paths:
            with open(path, "rb") as fh:
                response = requests.post(
                    f"{self.rest}/instances",
                    data=fh.read(),
                    auth=self.auth,
                    headers={"Content-Type": "application/dicom"},
                    timeout=60,
                )
            response.raise_for_status()
            answers.append(response.json())
        return answers

    def instance_transfer_syntax(self, sop_instance_uid: str) -> str:
        """The transfer syntax UID Orthanc stored an instance in."""
        found = requests.post(
            f"{self.rest}/tools/find",
            auth=self.auth,
            timeout=30,
            json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
        ).json()
        (orthanc_id,) = found
        return requests.get(
            f"{self.rest}/instances/{orthanc_id}/metadata/TransferSyntax", auth=self.auth, timeout=30
        ).text

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _missing(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the real Orthanc is required; `make test` installs it)")
    pytest.skip(f"{reason}: install with `apt-get install -y orthanc orthanc-dicomweb` (or `make test` as root)")


def find_orthanc() -> Optional[tuple]:
    """(binary, DICOMweb plugin path), or None when either is not installed."""
    binary = next((b for b in ORTHANC_BINARIES if os.access(b, os.X_OK)), shutil.which("Orthanc"))
    plugin = next(
        (os.path.join(d, DICOMWEB_PLUGIN) for d in PLUGIN_DIRS if os.path.exists(os.path.join(d, DICOMWEB_PLUGIN))),
        None,
    )
    return (binary, plugin) if binary and plugin else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_orthanc() -> Orthanc:
    """Starts Orthanc and waits until its REST API answers. Skips (fails in CI) when Orthanc or
    its DICOMweb plugin is not installed; raises RuntimeError when it does not come up."""
    found = find_orthanc()
    if found is None:
        _missing("Orthanc or its DICOMweb plugin (orthanc-dicomweb) is not installed")
    binary, plugin = found
    workdir = tempfile.mkdtemp(prefix="medtfx-orthanc-")
    port = _free_port()
    config = {
        "Name": "medtfx-test",
        "StorageDirectory": os.path.join(workdir, "storage"),
        "IndexDirectory": os.path.join(workdir, "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [plugin],
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        # Store what is uploaded as is: the JPEG 2000 round trip depends on it.
        "StorageCompression": False,
        "OverwriteInstances": True,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "Host": f"127.0.0.1:{port}",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }
    config_path = os.path.join(workdir, "orthanc.json")
    with open(config_path, "w") as fh:
        json.dump(config, fh, indent=1)
    log = open(os.path.join(workdir, "orthanc.log"), "wb")
    process = subprocess.Popen(["nice", "-n", "19", binary, config_path], stdout=log, stderr=subprocess.STDOUT)
    rest = f"http://127.0.0.1:{port}"
    server = Orthanc(rest, f"{rest}/dicom-web", (USER, PASSWORD), process, workdir)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{rest}/system", auth=server.auth, timeout=2).ok:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    with open(os.path.join(workdir, "orthanc.log"), errors="replace") as fh:
        tail = fh.read()[-2000:]
    server.stop()
    raise RuntimeError(f"Orthanc did not start within {START_TIMEOUT_S:.0f} s:\n{tail}")


@pytest.fixture(scope="module")
def orthanc():
    """A fresh Orthanc per test module (empty storage)."""
    server = start_orthanc()
    yield server
    server.stop()
