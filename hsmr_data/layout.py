"""Where everything lives under a data root: the one place storage paths are spelled out.

    storage/                       DataRoot("storage"), the default (relative to where a command runs)
      models/                      body-model files in the standard layout (smpl/, skel/, hsmr/)
      datasets/{name}/             HMR2.0-style source datasets (shards/*.tar, truth/, manifest.json)
      labels/{name}/               label tables (Delta Lake), one per dataset; {table}-rounds/ beside
      shards/v{version}/           training shards exported from a table version (index.json)
      runs/{name}/                 training runs (checkpoint.pt, metrics.jsonl, predictions.parquet)
      predictions/                 predictions of a network on people outside training
      reports/                     evaluation reports, the label dashboard, learning curves
      bench/                       benchmark JSON
      quarantine/{dataset}/        quarantine reports of remote datasets (local ones keep theirs)
      prefect/                     PREFECT_HOME of the flows run on this machine
      demo/                        meshes and renders of `hsmr demo`

Paths are strings, as the configuration dataclasses and Prefect parameters carry them. Flows, the
`hsmr` command line and the pipeline take their defaults from `DEFAULT`; another root is
`DataRoot("/data/hsmr")` (the pipeline's `--root`). See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_DATASET = "synth"  # the synthetic world's dataset, the demo's default everywhere
DEMO_RUN = "hsmr-demo"  # the demo's training run


@dataclass(frozen=True)
class DataRoot:
    """The storage layout under one root folder."""

    root: str = "storage"

    def _join(self, *parts: str) -> str:
        return str(Path(self.root, *parts))

    @property
    def models(self) -> str:
        return self._join("models")

    def dataset(self, name: str = DEMO_DATASET) -> str:
        return self._join("datasets", name)

    def table(self, name: str = DEMO_DATASET) -> str:
        """The label table of a dataset."""
        return self._join("labels", name)

    @property
    def shards(self) -> str:
        return self._join("shards")

    def run(self, name: str = DEMO_RUN) -> str:
        return self._join("runs", name)

    def run_predictions(self, name: str = DEMO_RUN) -> str:
        """The predictions a training run writes at each checkpoint (what a refinement round reads)."""
        return self._join("runs", name, "predictions.parquet")

    @property
    def predictions(self) -> str:
        return self._join("predictions", "predictions.parquet")

    @property
    def reports(self) -> str:
        return self._join("reports")

    def report(self, name: str) -> str:
        return self._join("reports", name)

    @property
    def dashboard(self) -> str:
        return self._join("reports", "label_dashboard.html")

    def bench_file(self, name: str) -> str:
        """A benchmark's JSON (`make bench` writes them all here)."""
        return self._join("bench", name)

    def study(self, name: str) -> str:
        """A study's working folder (its synthetic world and tables, reused by reruns)."""
        return self._join("study", name)

    def quarantine(self, dataset: str) -> str:
        return self._join("quarantine", dataset)

    @property
    def prefect_home(self) -> str:
        return self._join("prefect")

    @property
    def demo(self) -> str:
        return self._join("demo")


DEFAULT = DataRoot()
