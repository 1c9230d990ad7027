"""The container command of every compiled KFP task:

    python -m pipeline.runners.kfp_entrypoint tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor ARGS

runs TFX's container module (the executor entrypoint, or the ExampleGen driver) as `python -m`
would, after adding KFP's dashboard types to the title -> class map TFX's entrypoint imports
artifact types by (tfx.orchestration.kubeflow.v2.compiler_utils.TITLE_TO_CLASS_PATH, read by
kubeflow_v2_entrypoint_utils._retrieve_class_path). Without it a `system.Markdown` output would
be imported as a module named `system`. See components/dashboard/artifacts.py.
"""

from __future__ import annotations

import runpy
import sys
from typing import List, Optional

# Only TFX's own KFP container modules are run.
TFX_CONTAINER_PACKAGE = "tfx.orchestration.kubeflow.v2."


def register_dashboard_types() -> None:
    """Lets TFX's entrypoint import system.Markdown / system.HTML / system.Metrics by title."""
    from tfx.orchestration.kubeflow.v2 import compiler_utils

    from components.dashboard import artifacts

    compiler_utils.TITLE_TO_CLASS_PATH.update(artifacts.TITLE_TO_CLASS_PATH)


def main(argv: Optional[List[str]] = None) -> None:
    """argv: [this program, TFX module, its arguments...].

    Raises:
        SystemExit: 2 with one line when the module is not one of TFX's KFP container modules.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or not argv[1].startswith(TFX_CONTAINER_PACKAGE):
        sys.stderr.write(f"usage: python -m pipeline.runners.kfp_entrypoint {TFX_CONTAINER_PACKAGE}<module> ARGS...\n")
        raise SystemExit(2)
    register_dashboard_types()
    sys.argv = argv[1:]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
