"""Client clustering: HFLDD's KL similarity, K-Means and ClusterSampling."""

from fldistill.cluster.hfldd import (
    choose_heads,
    cluster_sampling,
    kl_matrix,
    kl_matrix_reference,
    kmeans_rows,
    label_coverage,
    load_clustering,
    plot_topology,
    purity,
    save_clustering,
)

__all__ = [
    "choose_heads",
    "cluster_sampling",
    "kl_matrix",
    "kl_matrix_reference",
    "kmeans_rows",
    "label_coverage",
    "load_clustering",
    "plot_topology",
    "purity",
    "save_clustering",
]
