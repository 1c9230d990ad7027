"""Beam's portable runner on one machine: the job API, runner API and SDK-harness protocol the
Flink and Spark runners use, with Beam's own local job service as the "cluster".

`LocalPortableRunner` is `PortableRunner` whose default job server (used when no
`--job_endpoint` is given) is Beam's in-process `LocalJobServicer`, exactly as FlinkRunner and
SparkRunner are PortableRunners whose default job server is the Flink / Spark one. The one
change: Beam's local job service always runs one SDK worker per environment, whatever
`--sdk_worker_parallelism` says; here it runs that many, so elements are partitioned across
several worker processes (with `--environment_type=beam:env:harness_subprocess_python:v1`),
which is what exercises pickling, side inputs and file access as a cluster would.

Selected by `runner.beam_profile=portable` (pipeline/config.py).
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PortableOptions
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.portability import job_server, local_job_service, portable_runner
from apache_beam.runners.portability.fn_api_runner import fn_runner


class _ParallelBeamJob(local_job_service.BeamJob):
    """Beam's local job, run with `--sdk_worker_parallelism` SDK workers per environment."""

    def _invoke_runner(self):
        self.set_state(beam_job_api_pb2.JobState.RUNNING)
        options = self.pipeline_options()
        runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
        # FnApiRunner reads its worker count only from DirectRunner options (run_pipeline), not
        # on the job-service path (run_via_runner_api): set it from the portable option.
        runner._num_workers = max(1, int(options.view_as(PortableOptions).sdk_worker_parallelism or 1))
        return runner.run_via_runner_api(self._pipeline_proto, options)


class _LocalJobServer(job_server.JobServer):
    """Beam's embedded job server (job_server.EmbeddedJobServer) with `_ParallelBeamJob`."""

    def start(self):
        return local_job_service.LocalJobServicer(beam_job_type=_ParallelBeamJob)

    def stop(self):
        pass


class LocalPortableRunner(portable_runner.PortableRunner):
    """PortableRunner with Beam's local job service as its default job server (no Java, no
    containers); `--job_endpoint=host:port` still sends the job to a real job server."""

    def default_job_server(self, options):
        return _LocalJobServer()
