"""DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store) for PACS input and output.

A thin layer on `dicomweb-client` that adds what a pipeline needs from a PACS connection:
  * credentials from the environment only (a Kubernetes Secret exposed as environment variables):
    MEDTFX_DICOMWEB_TOKEN (bearer token) or MEDTFX_DICOMWEB_USER + MEDTFX_DICOMWEB_PASSWORD
    (HTTP basic); a URL carrying user:password@ is refused, so secrets never reach a command
    line, a config file or pipeline metadata;
  * timeouts on every request and retries with exponential backoff on transient failures
    (connection errors, timeouts, HTTP 408/429/502/503/504), one retry layer (the library's own
    is switched off so attempts do not multiply);
  * WADO-RS asks for `transfer-syntax=*`: instances come back as stored. Servers that cannot
    transcode (Orthanc without its GDCM plugin and JPEG 2000) answer 500 to any other request,
    and the readers decode compressed pixels themselves;
  * `dicomweb+http(s)://HOST/PATH?KEY=VALUE` dataset URLs: the DICOMweb root plus QIDO-RS
    matching keys (StudyDate=20240101-20241231, SeriesDescription=*AX*, Modality=CT).
Errors raise DicomWebError with the URL path and HTTP status; patient attributes never appear
in messages (only UIDs, which a PACS administrator needs to find the object).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlsplit, urlunsplit

_log = logging.getLogger(__name__)

SCHEME_PREFIX = "dicomweb+"
TOKEN_ENV = "MEDTFX_DICOMWEB_TOKEN"
USER_ENV = "MEDTFX_DICOMWEB_USER"
PASSWORD_ENV = "MEDTFX_DICOMWEB_PASSWORD"
# HTTP statuses worth another try: the request may succeed unchanged a moment later.
TRANSIENT_HTTP_STATUSES = (408, 429, 502, 503, 504)
# (connect, read) seconds: connecting is quick or never; a large series may stream for minutes.
DEFAULT_TIMEOUT_S = (10.0, 300.0)
# Modalities of series that hold no images to segment or train on.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "FID", "RWV", "AU", "ECG"}
)
# WADO-RS Accept: any transfer syntax, as stored.
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


class DicomWebError(Exception):
    """A DICOMweb request failed (after retries, when transient); the message names the request
    path and the HTTP status or network error."""


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One series as QIDO-RS describes it (no patient attributes kept)."""

    study_uid: str
    series_uid: str
    modality: str
    description: str = ""
    number_of_instances: int = 0

    @property
    def is_image(self) -> bool:
        return self.modality.upper() not in NON_IMAGE_MODALITIES


def is_dicomweb_url(text: str) -> bool:
    """True for `dicomweb+http://...` / `dicomweb+https://...` dataset locations."""
    return str(text).lower().startswith((SCHEME_PREFIX + "http://", SCHEME_PREFIX + "https://"))


def parse_dataset_url(text: str) -> Tuple[str, Dict[str, str]]:
    """`dicomweb+http://HOST/dicom-web?StudyDate=2024...` -> ('http://HOST/dicom-web',
    {'StudyDate': '2024...'}): the DICOMweb root and the QIDO-RS matching keys.

    Plain http(s) URLs are accepted too. Raises ValueError for other schemes and for URLs
    carrying credentials (user:password@host): those belong in the environment."""
    url = text[len(SCHEME_PREFIX) :] if is_dicomweb_url(text) else text
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a DICOMweb URL (dicomweb+http(s)://HOST/PATH): {text!r}")
    if parts.username or parts.password:
        raise ValueError(
            f"DICOMweb URL carries credentials; set {TOKEN_ENV} or {USER_ENV}/"
            f"{PASSWORD_ENV} in the environment instead (e.g. from a Kubernetes Secret)"
        )
    query = {key: value for key, value in parse_qsl(parts.query, keep_blank_values=False)}
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")), query


def session_from_env(environ: Optional[Mapping[str, str]] = None):
    """A requests.Session authenticated from the environment: bearer token (MEDTFX_DICOMWEB_TOKEN)
    or basic (MEDTFX_DICOMWEB_USER + MEDTFX_DICOMWEB_PASSWORD); unauthenticated when none is set.
    Raises ValueError when only one of user/password is set."""
    import requests

    environ = os.environ if environ is None else environ
    session = requests.Session()
    token = environ.get(TOKEN_ENV, "").strip()
    user, password = environ.get(USER_ENV, ""), environ.get(PASSWORD_ENV, "")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user or password:
        if not (user and password):
            raise ValueError(f"set both {USER_ENV} and {PASSWORD_ENV} (only one is set)")
        session.auth = (user, password)
    return session


def is_transient(error: BaseException) -> bool:
    """True for network errors, timeouts and HTTP statuses in TRANSIENT_HTTP_STATUSES."""
    import requests

    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return True
    response = getattr(error, "response", None)
    return (
        isinstance(error, requests.HTTPError)
        and response is not None
        and response.status_code in TRANSIENT_HTTP_STATUSES
    )


def _describe(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if response is not None:
        path = urlsplit(response.url or "").path
        return f"HTTP {response.status_code} {response.reason or ''} for {path}".strip()
    return f"{type(error).__name__}: {error}"


def _dataset_value(item: dict, tag: str, default=""):
    """First value of `tag` (8 hex digits) in a DICOM JSON object, or `default`."""
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


class DicomWebClient:
    """QIDO-RS / WADO-RS / STOW-RS against one DICOMweb root.

    Args:
      url: DICOMweb root (http(s)://HOST/PATH), or a dicomweb+ dataset URL (its query is ignored).
      timeout_s: seconds per request, a number or (connect, read).
      attempts: tries per request; transient failures sleep initial_backoff * 2**i (capped at
        max_backoff) between tries.
      environ: where credentials are read (default: os.environ).
      sleep: the sleeping function (tests pass a recorder).
    Raises ValueError for a malformed URL or incomplete credentials.
    """

    def __init__(
        self,
        url: str,
        timeout_s=DEFAULT_TIMEOUT_S,
        attempts: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        environ: Optional[Mapping[str, str]] = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        from dicomweb_client.api import DICOMwebClient

        self.url, _ = parse_dataset_url(url)
        self._client = DICOMwebClient(self.url, session=session_from_env(environ), timeout=timeout_s)
        self._client.set_http_retry_params(retry=False)  # retries happen in _call, once
        self.attempts, self.initial_backoff, self.max_backoff = max(1, attempts), initial_backoff, max_backoff
        self._sleep = sleep
        self.retries = 0  # transient failures retried so far (reports, tests)

    def _call(self, what: str, fn: Callable[[], object]):
        import requests

        for attempt in range(self.attempts):
            try:
                return fn()
            except (requests.RequestException, OSError) as exc:
                if not is_transient(exc) or attempt == self.attempts - 1:
                    raise DicomWebError(f"{what}: {_describe(exc)}") from None
                delay = min(self.max_backoff, self.initial_backoff * (2**attempt))
                self.retries += 1
                _log.warning("%s: %s; retry %d in %.1f s", what, _describe(exc), attempt + 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    # ---- QIDO-RS ----------------------------------------------------------------------------

    def search_series(
        self, study_uid: Optional[str] = None, filters: Optional[Mapping[str, str]] = None
    ) -> List[SeriesInfo]:
        """Every series of `study_uid` (or of the whole archive) matching `filters` (QIDO-RS
        matching keys by keyword, e.g. {'StudyDate': '20240101-20241231'}), in a stable order."""
        fields = ["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances", "StudyInstanceUID"]
        found = self._call(
            f"QIDO-RS series of {'study ' + study_uid if study_uid else 'the archive'}",
            lambda: self._client.search_for_series(
                study_instance_uid=study_uid, fields=fields, search_filters=dict(filters or {}), get_remaining=True
            ),
        )
        series = []
        for item in found:
            series.append(
                SeriesInfo(
                    study_uid=str(_dataset_value(item, "0020000D", study_uid or "")),
                    series_uid=str(_dataset_value(item, "0020000E")),
                    modality=str(_dataset_value(item, "00080060")),
                    description=str(_dataset_value(item, "0008103E")),
                    number_of_instances=int(_dataset_value(item, "00201209", 0) or 0),
                )
            )
        return sorted(series, key=lambda s: (s.study_uid, s.series_uid))

    def search_instances(self, study_uid: str, series_uid: str) -> List[str]:
        """SOPInstanceUIDs of one series."""
        found = self._call(
            f"QIDO-RS instances of series {series_uid}",
            lambda: self._client.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid, get_remaining=True
            ),
        )
        return sorted(str(_dataset_value(item, "00080018")) for item in found)

    # ---- WADO-RS ----------------------------------------------------------------------------

    def retrieve_series(self, study_uid: str, series_uid: str) -> list:
        """The series' instances (pydicom Datasets with file meta) in their stored transfer
        syntax."""
        return self._call(
            f"WADO-RS series {series_uid}",
            lambda: list(self._client.retrieve_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX)),
        )

    def retrieve_series_to_folder(self, study_uid: str, series_uid: str, folder: str) -> List[str]:
        """Writes the series' instances as <folder>/<n>.dcm (PS3.10 files, stored transfer
        syntax); returns their paths. File names carry no identifiers."""
        os.makedirs(folder, exist_ok=True)
        paths = []
        for n, ds in enumerate(self.retrieve_series(study_uid, series_uid)):
            path = os.path.join(folder, f"{n:05d}.dcm")
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    # ---- STOW-RS ----------------------------------------------------------------------------

    def store(self, datasets: Sequence, study_uid: Optional[str] = None) -> List[str]:
        """STOW-RS `datasets` (pydicom Datasets), into `study_uid` when given. Returns the stored
        SOPInstanceUIDs. Raises DicomWebError when the server refuses any of them."""
        response = self._call(
            "STOW-RS", lambda: self._client.store_instances(list(datasets), study_instance_uid=study_uid)
        )
        failed = list(getattr(response, "FailedSOPSequence", []) or [])
        if failed:
            reasons = ", ".join(
                f"{item.ReferencedSOPInstanceUID} (reason {getattr(item, 'FailureReason', '?')})" for item in failed
            )
            raise DicomWebError(f"STOW-RS: the server refused {reasons}")
        stored = getattr(response, "ReferencedSOPSequence", []) or []
        return [str(item.ReferencedSOPInstanceUID) for item in stored]
