"""Deploy every flow to a Prefect work pool, for workers to run: the production path beyond `make serve`.

    prefect server start                                   # or a Prefect server you already run
    python -m flows.deploy --pool hsmr                     # creates a `process` pool if missing
    prefect worker start --pool hsmr                       # on each machine that should run flows
    prefect deployment run convert-smpl-to-skel/hsmr -p config='{"dataset_dir": "...", "table_uri": "..."}'

`serve` (flows/serve.py) runs the flows inside the serving process; a work pool decouples the two: the
server queues runs, any number of workers (on this machine, on cluster nodes, in containers) pick them
up. The deployments point at this repository's folder (`--source`), so a worker must see the same
path (a shared file system) or be given another with `--source`.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from uuid import UUID

from prefect import Flow

from flows.serve import FLOWS
from flows.settings import REPO_ROOT


def entrypoint(pipeline_flow: Flow, source: Path = REPO_ROOT) -> str:
    """`path/to/module.py:function` of a flow, relative to `source`, as Prefect's deployments name it."""
    module_file = Path(inspect.getsourcefile(pipeline_flow.fn)).resolve()
    return f"{module_file.relative_to(source.resolve()).as_posix()}:{pipeline_flow.fn.__name__}"


def ensure_process_pool(pool: str) -> None:
    """Create the work pool `pool` of type `process` unless it exists (of any type)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def deploy_to_pool(pool: str, name: str | None = None, source: Path = REPO_ROOT) -> dict[str, UUID]:
    """Register a deployment `name` (default: the pool's name) of every flow on work pool `pool`.

    Returns "flow-name/deployment-name" → deployment id. Needs PREFECT_API_URL pointing at a server.
    """
    ensure_process_pool(pool)
    name = name or pool
    ids = {}
    for pipeline_flow in FLOWS:
        remote = Flow.from_source(source=str(source), entrypoint=entrypoint(pipeline_flow, source))
        ids[f"{pipeline_flow.name}/{name}"] = remote.deploy(
            name=name, work_pool_name=pool, build=False, push=False, print_next_steps=False
        )
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True, help="work pool name (a `process` pool is created if missing)")
    parser.add_argument("--name", help="deployment name (default: the pool's name)")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="the repository folder workers run from")
    args = parser.parse_args(argv)
    for deployment in deploy_to_pool(args.pool, args.name, args.source):
        print(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
