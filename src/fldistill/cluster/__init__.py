"""Client clustering, independent of any method.

- :mod:`~fldistill.cluster.similarity`: HFLDD's soft-label KL matrix, cosine similarity of updates;
- :mod:`~fldistill.cluster.algorithms`: K-Means and agglomerative clustering, HFLDD's
  heterogeneous clusters (ClusterSampling) and their heads;
- :mod:`~fldistill.cluster.scores`: purity and adjusted Rand index against true groups,
  label coverage of clusters;
- :mod:`~fldistill.cluster.knowledge`: label-knowledge clustering as a protocol step
  (soft labels on a public set -> KL -> K-Means -> heterogeneous clusters), shared by
  HFLDD and FedSeq;
- :mod:`~fldistill.cluster.io`: clustering files.

The topology plot is :func:`fldistill.report.topology.plot_topology`.
"""

from fldistill.cluster.algorithms import agglomerative, choose_heads, cluster_sampling, kmeans_rows, labels_from_clusters
from fldistill.cluster.io import load_clustering, save_clustering
from fldistill.cluster.scores import adjusted_rand, label_coverage, purity
from fldistill.cluster.similarity import cosine_matrix, kl_matrix, kl_matrix_reference

__all__ = [
    "adjusted_rand",
    "agglomerative",
    "choose_heads",
    "cluster_sampling",
    "cosine_matrix",
    "kl_matrix",
    "kl_matrix_reference",
    "kmeans_rows",
    "label_coverage",
    "labels_from_clusters",
    "load_clustering",
    "purity",
    "save_clustering",
]
