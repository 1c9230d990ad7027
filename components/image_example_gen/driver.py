"""ImageExampleGen's driver: TFX's FileBasedDriver, with a PACS or object-store input
fingerprinted by its listing.

The driver records an input fingerprint on the examples artifact and the execution; with caching
on (the Kubeflow default), an unchanged fingerprint reuses the last examples. TFX fingerprints
the files under input_base; a dicomweb+ URL names no file, so every listing would get the same
empty fingerprint and a PACS that gained studies would still be served the old examples. For such
a URL the fingerprint is what QIDO-RS lists instead (pacs_source.listing_fingerprint). s3:// and
gs:// datasets are listed through modules.io.storage: TFX globs through tf.io.gfile, which has no
s3 without tensorflow-io (whose plugin aborts the process at exit).
"""

from __future__ import annotations

from typing import Iterable, Optional

from tfx.components.example_gen import driver, input_processor
from tfx.proto import example_gen_pb2, range_config_pb2

from components.image_example_gen import pacs_source
from modules.io import dicomweb, storage


class PacsInputProcessor(input_processor.InputProcessor):
    """One span (0), no versions, the archive listing as fingerprint."""

    def __init__(self, url: str, splits: Iterable[example_gen_pb2.Input.Split], range_config=None):
        super().__init__(splits, range_config)
        self._url = url

    def get_pattern_for_span_version(self, pattern: str, span: int, version: Optional[int]) -> str:
        return pattern

    def get_latest_span(self) -> int:
        return 0

    def get_input_fingerprint(self, span: int, version: Optional[int]) -> Optional[str]:
        return pacs_source.listing_fingerprint(self._url)


class ObjectStoreInputProcessor(input_processor.FileBasedInputProcessor):
    """An s3:// or gs:// dataset: one span, no versions, the listing (modules.io.storage) as
    fingerprint, as for local folders."""

    def resolve_span_and_version(self):
        self._fingerprint = f"split:all,{storage.tree_fingerprint(self._input_base_uri)}"
        return 0, None


class ImageExampleGenDriver(driver.FileBasedDriver):
    """FileBasedDriver for folders and files; PacsInputProcessor for dicomweb+ URLs,
    ObjectStoreInputProcessor for s3:// and gs://."""

    def get_input_processor(
        self,
        splits: Iterable[example_gen_pb2.Input.Split],
        range_config: Optional[range_config_pb2.RangeConfig] = None,
        input_base_uri: Optional[str] = None,
    ) -> input_processor.InputProcessor:
        if input_base_uri and dicomweb.is_dicomweb_url(input_base_uri):
            return PacsInputProcessor(input_base_uri, splits, range_config)
        if input_base_uri and storage.is_remote(input_base_uri):
            return ObjectStoreInputProcessor(input_base_uri, splits, range_config)
        return super().get_input_processor(splits, range_config, input_base_uri)
