"""Work larger than one machine: a Classify batch over a whole dataset, and DreamBooth sweeps, here or on Ray.

Both run locally by default (the tabs' own path, one item after another on this process's model). Given a Ray
cluster (`Cluster`, from `--ray ADDRESS` or `RAY_ADDRESS`), the same work is cut into shards (a few images; one
sweep point) that Ray actors run, each actor holding one `ModelManager` with the model loaded once. Results come
back to this process, which writes each one as the local path does (a Classify batch's JSON-lines file, a sweep
point's LoRA folder and row), so an interrupted run resumes here or there, and both paths give identical results
for the same seeds on the same kind of device.

    cluster.py   the settings, the workers and the scheduler (retry on a lost worker, cancel stops them all)
    dataset.py   a Classify batch on the cluster
    sweep.py     DreamBooth sweeps: the grid of points, each trained and judged, here or on the cluster
    paper.py     the classifier paper's CIFAR-10-style evaluation: top-1 and cost, beside the paper's figure
    __main__.py  `python -m studio.batch classify|sweep|paper ...`

A runner, not a technique: it imports the techniques it runs (classify, trainer, generate). Ray is optional and
imported only when a cluster is used.
"""

from studio.batch.cluster import Cluster, Progress
from studio.batch.sweep import SweepParams

__all__ = ["Cluster", "Progress", "SweepParams"]
