"""TEST DOUBLE for Google Cloud Storage as TensorFlow's BUILT-IN gs:// filesystem sees it.

TensorFlow 2.16's GCS filesystem (tsl/platform/cloud/gcs_file_system.cc) has its endpoints
hard-coded (https://www.googleapis.com/storage/v1/, https://www.googleapis.com/upload/storage/v1/,
https://storage.googleapis.com/<bucket>/<object> for reads) and no emulator variable. It talks
through libcurl, which honours ``HTTPS_PROXY`` and, in TF's curl_http_request, ``CURL_CA_BUNDLE``;
``GOOGLE_AUTH_TOKEN_FOR_TESTING`` makes tsl's GoogleAuthProvider skip every credential lookup.
So the double is:

* :class:`Emulator` - gcp-storage-emulator (an in-memory GCS JSON API: resumable/multipart
  uploads, rewriteTo, list, delete, ranged reads) on 127.0.0.1, plain HTTP.
* :class:`InterceptProxy` - an HTTPS CONNECT proxy on 127.0.0.1 that accepts tunnels ONLY to the
  two Google API host names, terminates TLS with a throwaway CA's certificate for them, and
  forwards each HTTP request to the emulator. It logs every request (method, host, path, status).
* :class:`GcsDoubleProcess` - both servers in a separate process (TF blocks some gs:// I/O
  while holding the GIL, which would deadlock in-process Python servers).
* :func:`run_in_loopback_netns` - runs a command inside a fresh network namespace
  (``unshare -n``) whose only interface is loopback, so nothing can ever reach a real Google
  host even if the proxy settings were ignored: a miss fails (no route / DNS), it never leaks.

It is NOT GCS: no auth, no preconditions, no generation semantics, no 429/503s, one request at a
time. Known emulator gap: a zero-byte media upload (what ``tf.io.gfile.makedirs('gs://...')``
sends for its ``dir/`` marker object) crashes the emulator's handler (``len(None)``); the proxy
turns that into a 502. What it proves: the HTTP API calls TF's real GCS client makes (resumable
uploads, listings, stats, deletes, ranged reads) succeed and leave the right objects, over TLS
that TF verifies against the given CA.
"""

from __future__ import annotations

import datetime
import fcntl
import http.client
import json
import os
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from functools import partial
from http import server as http_server
from typing import Dict, List, Optional, Sequence, Tuple

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


# --------------------------------------------------------------------------- network namespace
def loopback_netns_available() -> Tuple[bool, str]:
    """(True, '') when `unshare -n` can create a network namespace here, else (False, why)."""
    if shutil.which("unshare") is None:
        return False, "the unshare binary (util-linux) is not installed"
    proc = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if proc.returncode != 0:
        return False, f"`unshare -n` is not permitted here: {proc.stderr.strip()}"
    return True, ""


def run_in_loopback_netns(
    argv: Sequence[str], timeout_s: float, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None
) -> subprocess.CompletedProcess:
    """Runs `argv` under `unshare -n` (a new, empty network namespace). The child must call
    :func:`enter_loopback_only` first to bring `lo` up."""
    return subprocess.run(
        ["unshare", "-n", "--", *argv], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd
    )


def enter_loopback_only() -> None:
    """In a fresh `unshare -n` namespace: brings `lo` up and checks it is the ONLY interface
    (else raises, so a test never runs where it could reach a real host)."""
    # if_nameindex asks the kernel about the CURRENT namespace (/sys/class/net would show the
    # namespace sysfs was mounted in).
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise RuntimeError(f"not in a loopback-only network namespace: interfaces {interfaces}")
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH22x", b"lo", 0)  # struct ifreq: name + flags, 40 bytes
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, ifreq))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


# --------------------------------------------------------------------------- certificates
def make_ca_and_server_cert(out_dir: str, hosts: Sequence[str] = GOOGLE_HOSTS) -> Dict[str, str]:
    """Writes a throwaway CA and a server certificate for `hosts` (EC P-256, valid 1 day).
    Returns paths {'ca': ca.pem, 'cert': server.pem, 'key': server.key}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medtfx test CA (throwaway)")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        name: os.path.join(out_dir, f) for name, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"))
    }
    with open(paths["ca"], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return paths


# --------------------------------------------------------------------------- emulator
class Emulator:
    """gcp-storage-emulator's request handler over an in-memory store, on 127.0.0.1:<port>."""

    def __init__(self, buckets: Sequence[str] = ()):
        from gcp_storage_emulator.handlers.buckets import create_bucket
        from gcp_storage_emulator.server import RequestHandler
        from gcp_storage_emulator.storage import Storage

        self.storage = Storage(use_memory_fs=True)
        for name in buckets:
            create_bucket(name, self.storage)
        self._httpd = http_server.HTTPServer(("127.0.0.1", 0), partial(RequestHandler, self.storage))
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Emulator":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _emulator_get(port: int, path: str) -> bytes:
    # Direct plain-HTTP call to the emulator; never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read()


def list_objects(emulator_port: int, bucket: str, prefix: str = "") -> List[str]:
    """Every object name under `prefix`, as the emulator (not TF) sees it."""
    query = urllib.parse.urlencode({"prefix": prefix})
    listing = json.loads(_emulator_get(emulator_port, f"/storage/v1/b/{bucket}/o?{query}"))
    return sorted(item["name"] for item in listing.get("items") or [])


def read_object(emulator_port: int, bucket: str, name: str) -> bytes:
    """The stored bytes of one object, as the emulator (not TF) sees them."""
    quoted = urllib.parse.quote(name, safe="")
    return _emulator_get(emulator_port, f"/download/storage/v1/b/{bucket}/o/{quoted}?alt=media")


# --------------------------------------------------------------------------- TLS-intercepting proxy
class _ForwardHandler(http_server.BaseHTTPRequestHandler):
    """Serves the decrypted HTTP/1.1 requests of one CONNECT tunnel by forwarding each to the
    emulator. `proxy` and `tunnel_host` are set on the subclass made per tunnel."""

    protocol_version = "HTTP/1.1"
    proxy: "InterceptProxy"
    tunnel_host: str

    def _forward(self) -> None:
        # TF's curl sends 'Transfer-Encoding: chunked' AND a Content-Length on upload PUTs;
        # chunked wins (RFC 9112 6.3), as on the real front end.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("transfer-encoding", "connection", "proxy-connection", "expect")
        }
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.emulator_port, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            status, payload, out_headers = resp.status, resp.read(), resp.getheaders()
        except (OSError, http.client.HTTPException) as exc:
            # The emulator crashed on this request: answer 502 so the client sees an HTTP error
            # (and the log says which request) instead of a dropped connection.
            status, payload = 502, f"emulator failed: {type(exc).__name__}: {exc}".encode()
            out_headers = [("Content-Type", "text/plain")]
        finally:
            conn.close()
        self.proxy.record(self.command, self.tunnel_host, self.path, status)
        self.send_response(status)
        for name, value in out_headers:
            lname = name.lower()
            if lname in ("content-length", "connection", "transfer-encoding", "date", "server"):
                continue
            if lname == "location":
                # The emulator builds http:// URLs from Host; real GCS hands out https:// ones.
                value = value.replace("http://", "https://", 1)
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

    def log_message(self, format, *args) -> None:  # request log is kept in proxy.log instead
        pass


class _ConnectHandler(socketserver.StreamRequestHandler):
    """One client connection to the proxy: CONNECT host:443, then a TLS-terminated tunnel."""

    def handle(self) -> None:
        proxy: InterceptProxy = self.server.proxy  # type: ignore[attr-defined]
        request_line = self.rfile.readline(65537).decode("latin-1").strip()
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # proxy request headers: none needed
        parts = request_line.split()
        target = parts[1] if len(parts) == 3 else ""
        host, _, port = target.rpartition(":")
        if parts[:1] != ["CONNECT"] or host not in proxy.allowed_hosts or port != "443":
            # Only tunnels to the Google API hosts are served; anything else is refused and logged.
            proxy.record(parts[0] if parts else "", target, "", 403)
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        try:
            tls = proxy.tls_context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            proxy.record("TLS", host, str(exc), 0)
            return
        handler = type("_Tunnel", (_ForwardHandler,), {"proxy": proxy, "tunnel_host": host})
        try:
            handler(tls, self.client_address, self.server)
        except (ConnectionError, ssl.SSLError, socket.timeout):
            pass  # client went away; curl reconnects on its own
        finally:
            try:
                tls.close()
            except OSError:
                pass


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class InterceptProxy:
    """HTTPS CONNECT proxy on 127.0.0.1 that terminates TLS for `allowed_hosts` with the
    certificate from :func:`make_ca_and_server_cert` and forwards requests to the emulator.
    `log` holds [method, host, path, status] per forwarded request (403: a refused CONNECT;
    'TLS': a failed handshake), also appended as JSON lines to `log_path` when given."""

    def __init__(
        self,
        emulator_port: int,
        cert: str,
        key: str,
        allowed_hosts: Sequence[str] = GOOGLE_HOSTS,
        log_path: Optional[str] = None,
    ):
        self.emulator_port = emulator_port
        self.log_path = log_path
        self._log_lock = threading.Lock()
        self.allowed_hosts = tuple(allowed_hosts)
        self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls_context.load_cert_chain(cert, key)
        self.log: List[list] = []
        self._server = _ThreadingServer(("127.0.0.1", 0), _ConnectHandler)
        self._server.proxy = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "InterceptProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, method: str, host: str, path: str, status: int) -> None:
        """Appends one request to the log (and the log file)."""
        entry = [method, host, path, status]
        with self._log_lock:
            self.log.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")


# --------------------------------------------------------------------------- separate process
class GcsDoubleProcess:
    """Emulator + proxy in a CHILD process (`python -m tests.gcs_double WORKDIR BUCKET...`).

    They must not share a process with TensorFlow: some TF calls block on I/O while holding the
    GIL (tf.saved_model.load -> NewCheckpointReader on gs://), so in-process Python servers
    could never answer and the load would hang. The child lives until its stdin closes."""

    def __init__(self, workdir: str, buckets: Sequence[str], start_timeout_s: float = 30.0):
        self.workdir = workdir
        self.buckets = list(buckets)
        self.start_timeout_s = start_timeout_s
        self.info: Dict[str, object] = {}
        self._proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "GcsDoubleProcess":
        info_path = os.path.join(self.workdir, "gcs_double.json")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gcs_double", self.workdir, *self.buckets], stdin=subprocess.PIPE, cwd=repo
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not os.path.exists(info_path):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"GCS double did not start (exit code {self._proc.returncode})")
            time.sleep(0.05)
        with open(info_path) as f:
            self.info = json.load(f)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        self._proc.stdin.close()  # the child's signal to stop
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    @property
    def emulator_port(self) -> int:
        return int(self.info["emulator_port"])

    def environment(self) -> Dict[str, str]:
        """tf_gcs_environment for this double."""
        return tf_gcs_environment(int(self.info["proxy_port"]), str(self.info["ca"]))

    def log(self) -> List[list]:
        """The proxy's request log so far: [method, host, path, status] per request."""
        path = str(self.info["log"])
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]


def _serve(workdir: str, buckets: Sequence[str]) -> None:
    """Child of GcsDoubleProcess: starts both servers, publishes their ports in
    WORKDIR/gcs_double.json, and serves until stdin reaches EOF."""
    certs = make_ca_and_server_cert(workdir)
    log_path = os.path.join(workdir, "proxy_log.jsonl")
    with Emulator(buckets) as emu, InterceptProxy(emu.port, certs["cert"], certs["key"], log_path=log_path) as proxy:
        info = {"emulator_port": emu.port, "proxy_port": proxy.port, "ca": certs["ca"], "log": log_path}
        tmp = os.path.join(workdir, "gcs_double.json.tmp")
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, os.path.join(workdir, "gcs_double.json"))  # readers never see half a file
        sys.stdin.read()


def tf_gcs_environment(proxy_port: int, ca_path: str) -> Dict[str, str]:
    """Environment variables that route TF's built-in GCS client to the proxy (set them before
    TensorFlow first touches gs://)."""
    proxy = f"http://127.0.0.1:{proxy_port}"
    return {
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "",
        "no_proxy": "",
        "CURL_CA_BUNDLE": ca_path,
        # tsl GoogleAuthProvider: use this bearer token, skip ADC files and the GCE metadata server.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "medtfx-test-token",
        "NO_GCE_CHECK": "true",
        # Fail fast on an emulator error instead of TF's default 10 retries with backoff.
        "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "10000",
    }


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2:])
