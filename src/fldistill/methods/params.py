"""Every built-in method's parameters (``config.params``), as pydantic models without torch.

The single definition of each method's ``Params``: the method classes take them from
their catalog card (:mod:`fldistill.methods.catalog`), and the CLI validates ``params.*``
and lists them without importing torch or numpy. Only the standard library and pydantic
may be imported here.

Every model derives from :class:`MethodParams`: unknown keys and NaN or infinite floats
are refused, and every field carries a one-line ``description``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Choices shared with the torch code that implements them (distill.datafree, cluster.encrypt).
LabelMode = Literal["proportional", "balanced", "uniform"]
WeightMode = Literal["class", "uniform"]
Scheme = Literal["orthogonal", "jl", "none"]


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown keys and NaN/inf floats are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoParams(MethodParams):
    """A method without parameters of its own."""


# -- FedAvg family -------------------------------------------------------------------


class FedProxParams(MethodParams):
    """FedProx's proximal term."""

    mu: float = Field(0.01, ge=0, description="weight of the proximal term")


class ScaffoldParams(MethodParams):
    """SCAFFOLD's control variates (option II by default, or I)."""

    correction: bool = Field(True, description="use control variates; False is exactly FedAvg (nothing extra sent)")
    steps: Literal["momentum", "plain"] = Field(
        "momentum",
        description="K in option II: 'momentum' = effective steps under SGD momentum (K when momentum=0), 'plain' = K",
    )
    global_lr: float = Field(1.0, gt=0, description="server step size eta_g: x <- x + eta_g * (mean_i y_i - x) (1 = FedAvg's average)")
    variate: Literal["II", "I"] = Field(
        "II",
        description="c_i+ by option II (from the model's displacement) or I (the local gradient at the global model: one extra pass)",
    )


class MoonParams(MethodParams):
    """MOON's model-contrastive loss."""

    # Tuned with `fldistill tune` on mnist1d (N=100, 30 rounds, validation split): IID mu 0.1/1/5 ->
    # 0.607/0.606/0.357 (FedAvg 0.605); classes:2 0.336/0.326/0.359. mu=5 (the MOON paper's
    # CIFAR-10 value, KDIA's code) costs 25 points on IID data; at 100 rounds (IID, 3 seeds) mu 1
    # ended 2.0 points under FedAvg, so the signal default is 0.1, the best in both settings
    # (in the paper's grid too). Images: mu 1 (methods.catalog, family_params).
    mu: float = Field(
        0.1, ge=0, description="weight of the model-contrastive loss (1 on images; the MOON paper: 5 on CIFAR-10, 1 on CIFAR-100)"
    )
    temperature: float = Field(0.5, gt=0, description="temperature tau of the contrastive loss")


# -- clustered methods ---------------------------------------------------------------


class IFCAParams(MethodParams):
    """IFCA's cluster models."""

    clusters: int = Field(4, ge=1, description="p, the number of cluster models")
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="per-cluster average: by sample counts, or the official scripts' plain mean"
    )
    init: Literal["random", "search"] = Field(
        "random", description="search = find_good_initializer: re-draw until every cluster holds init_share of the clients"
    )
    init_share: float = Field(0.1, gt=0, le=1, description="smallest share of clients per cluster that init=search accepts")
    init_tries: int = Field(20, ge=1, description="most initialisations init=search draws")


class CFLParams(MethodParams):
    """CFL's split criterion."""

    criterion: Literal["relative", "absolute"] = Field(
        "relative", description="relative: scale-free ratios of update norms; absolute: eps1/eps2 norms (official)"
    )
    eps1: float = Field(0.4, gt=0, description="absolute: split when ||mean dW|| < eps1 (notebook 0.4)")
    eps2: float = Field(1.6, gt=0, description="absolute: ... and max ||dW_i|| > eps2 (notebook 1.6)")
    rel_eps1: float = Field(0.4, gt=0, description="relative: split when ||mean dW|| / mean ||dW_i|| < rel_eps1")
    rel_eps2: float = Field(1.0, ge=0, description="relative: ... and max ||dW_i|| / mean ||dW_i|| > rel_eps2")
    warmup: int = Field(20, ge=0, description="no split before this round (notebook: 20)")
    min_separation: float | None = Field(
        0.25, description="accept a split only if mean cosine within the halves - mean cosine across > this (None: always)"
    )
    min_size: int = Field(2, ge=2, description="split only clusters with more than this many participating clients")
    max_clusters: int | None = Field(None, ge=1, description="stop splitting at this many clusters (default: no cap)")
    weighting: Literal["samples", "uniform"] = Field("samples", description="per-cluster average: by samples, or plain mean")


class CFLHKDParams(MethodParams):
    """CFLHKD's edge clusters and multi-teacher distillation (reconstructed)."""

    k: int = Field(4, ge=1, description="number of clusters (edge servers)")
    edge_rounds: int = Field(2, ge=1, description="R_e: edge rounds (intra-cluster FedAvg) per cloud round")
    warmup_rounds: int = Field(10, ge=0, description="R0: FedAvg rounds before clustering [INFERRED]")
    clustering: Literal["agglomerative", "kmeans"] = Field("agglomerative", description="on the cosine similarity of updates")
    recluster_every: int = Field(0, ge=0, description="re-cluster every M cloud rounds (0: never) [INFERRED, from HC3FL]")
    lam: float = Field(0.5, ge=0, description="weight of the multi-teacher KD term [INFERRED]")
    tau: float = Field(2.0, gt=0, description="distillation temperature [INFERRED]")
    lam_warmup: int = Field(0, ge=0, description="ramp lam linearly over this many cloud rounds (0: at once)")
    beta_global: float = Field(0.5, ge=0, le=1, description="teacher weight of the global model [INFERRED]")
    beta_rest: Literal["size", "uniform"] = Field("size", description="how the other clusters share 1 - beta_global")
    edge_init: Literal["keep", "global"] = Field(
        "keep", description="an edge's model at a cloud round's start: its own (keep) or the global model [INFERRED]"
    )
    variant: Literal["a", "b"] = Field("a", description="b: also distil w_g on the cloud from the edge models (public set)")
    distill_steps: int = Field(100, ge=1, description="variant b: Adam steps of the cloud distillation")
    distill_batch: int = Field(128, ge=1, description="variant b: batch of the cloud distillation")
    distill_lr: float = Field(1e-3, gt=0, description="variant b: Adam learning rate of the cloud distillation")


# -- label-knowledge clustering: HFLDD and FedSeq --------------------------------------


class ClusteringParams(MethodParams):
    """HFLDD's label-knowledge clustering (shared with FedSeq, which reuses its clusters)."""

    # The paper's K=10 is for N=100. With K >= N/2 most homogeneous clusters are single
    # clients, ClusterSampling then makes one or two heterogeneous clusters and nearly all
    # data reaches the heads only distilled: on real Fashion-MNIST, IID, N=10, K=10 (one head)
    # ended at 0.840 (mean of the last 5 of 20 rounds, seed 0), K=5 (two heads) at 0.878.
    k: int | None = Field(None, ge=1, description="K of K-Means (homogeneous clusters); null: min(10, N // 2), the paper's 10 at N >= 20")
    pretrain_epochs: int = Field(10, ge=1, description="E1, the clients' pre-training before the soft labels, in pretrain_unit (paper: 10)")
    pretrain_unit: Literal["epochs", "steps"] = Field(
        "epochs", description="unit of pretrain_epochs: epochs (the paper's tables) or local SGD steps (the paper's wording)"
    )
    pretrain_lr: float = Field(0.01, gt=0, description="SGD learning rate of the pre-training")
    # The paper says plain SGD; on mnist1d's small clients (2 steps/epoch) that leaves the
    # soft labels near uniform and K-Means purity at 0.7. Momentum 0.9 gives purity 1.0.
    pretrain_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the pre-training (paper: plain SGD)")
    pretrain_batch: int = Field(64, ge=1, description="batch size of the pre-training")


class HFLDDParams(ClusteringParams):
    """HFLDD's own parameters (paper defaults unless noted)."""

    distiller: Literal["kip", "dm", "random", "none"] = Field(
        "kip", description="how members condense their data for the head: kip (paper), dm, random real subset, none (all data)"
    )
    distill_size: int = Field(400, ge=1, description="|D~_i|, capped at the member's sample count")
    # KIP's "fast" preset (500 steps x 128 targets) by default, not the paper's 3000 x 10: 3-5x
    # less distillation time (KIP runs only where a member holds more than distill_size samples)
    distill_params: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="KIPConfig/DMConfig fields, on top of preset='fast' (unless given) or 'paper' (KIP: 3000 steps x 10 targets)",
    )

    @field_validator("distill_params")
    @classmethod
    def _fast_unless_a_preset_is_given(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # {"iterations": 800} means the fast preset with 800 steps, recorded as such in config.json;
        # random and none take no parameters
        if info.data.get("distiller") in ("kip", "dm") and "preset" not in v:
            return {"preset": "fast", **v}
        return v

    # A head that does not answer in a round is a lost Flower node: "skip" sits its
    # cluster out that round (it may come back); "reassign" also makes a seeded random
    # live member the head, to which the other members send their data again.
    on_lost_head: Literal["skip", "reassign"] = Field(
        "skip", description="a head lost in a round: skip its cluster that round, or reassign a random live member as head"
    )


class FedSeqParams(ClusteringParams):
    """FedSeq's clusters: HFLDD's (the clustering fields above) or random."""

    clusters: Literal["hfldd", "random"] = Field(
        "hfldd", description="hfldd: HFLDD's heterogeneous clusters (public set); random: n_clusters equal random clusters"
    )
    n_clusters: int = Field(10, ge=1, description="number of random clusters (clusters='random')")


# -- DynaFed ---------------------------------------------------------------------------

# Synthesis lengths per preset; explicit ``iterations`` / ``syn_steps`` win.
PRESETS: dict[str, dict[str, int]] = {
    "paper": {"iterations": 3000, "syn_steps": 20},
    "cpu": {"iterations": 300, "syn_steps": 10},
}


class DynaFedParams(MethodParams):
    """DynaFed's parameters (the code's experiment scripts unless noted)."""

    preset: Literal["paper", "cpu"] = Field("cpu", description="cpu: iterations=300, syn_steps=10; paper: 3000, 20")
    L: int = Field(25, ge=2, description="synthesise at the first round with len(trajectory) >= L")
    unweighted: bool = Field(True, description="equal-weight model averaging (the code); False: sample-weighted")
    ipc: int = Field(15, ge=1, description="synthetic samples per class")
    iterations: int | None = Field(None, ge=1, description="matching iterations (default: from preset)")
    syn_steps: int | None = Field(None, ge=1, description="unrolled student steps per iteration (default: from preset)")
    expert_epochs: int = Field(3, ge=1, description="target window: traj[s+1 .. s+expert_epochs]")
    max_start_epoch: int = Field(50, ge=0, description="latest start s of a matching iteration (also capped by the trajectory)")
    weight_averaging: bool = Field(True, description="target = mean of k models of the window (else traj[s+expert_epochs])")
    least_ave_num: int = Field(2, ge=1, description="smallest k of the weight averaging")
    batch_syn: int | None = Field(None, ge=1, description="synthetic batch per student step (default: the whole set)")
    lr_img: float = Field(0.05, gt=0, description="Adam learning rate of the synthetic inputs X")
    lr_label: float = Field(0.01, gt=0, description="Adam learning rate of the synthetic label logits Y")
    lr_lr: float = Field(1e-5, gt=0, description="Adam learning rate of the learnable step size syn_lr")
    lr_teacher: float = Field(0.04, gt=0, description="initial learnable syn_lr")
    label_init: float = Field(0.0, description="initial label logits = label_init * one-hot")
    finetune_epochs: int = Field(20, ge=0, description="epochs of the per-round server fine-tune on the synthetic set (distill_iter)")
    finetune_lr: float = Field(1e-4, gt=0, description="Adam learning rate of the server fine-tune")
    finetune_batch: int = Field(256, ge=1, description="batch size of the server fine-tune (capped at the synthetic set)")
    bn_refresh_passes: int = Field(3, ge=0, description="no-grad passes over the synthetic set before fine-tuning (BN models)")
    dsa: bool = Field(True, description="differentiable siamese augmentation (DSA) in the synthesis and the fine-tune")
    dsa_strategy: str | None = Field(
        None, description="default: color_crop_cutout_flip_scale_rotate (images), scale_shift_noise_stretch (1-D)"
    )
    dsa_mode: Literal["single", "multiple"] = Field(
        "single", description="single: one random DSA group per call (the code's aug_mode='S'); multiple: every group in order"
    )

    @model_validator(mode="after")
    def _resolve(self) -> DynaFedParams:
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.L < self.expert_epochs + 1:
            raise ValueError(
                f"L={self.L} must be at least expert_epochs + 1 = {self.expert_epochs + 1} "
                "(the trajectory needs a start and a target window)"
            )
        return self

    @property
    def n_iterations(self) -> int:
        """Matching iterations: ``iterations`` or the preset's."""
        return int(self.iterations if self.iterations is not None else PRESETS[self.preset]["iterations"])

    @property
    def n_syn_steps(self) -> int:
        """Unrolled student steps per iteration: ``syn_steps`` or the preset's."""
        return int(self.syn_steps if self.syn_steps is not None else PRESETS[self.preset]["syn_steps"])


# -- data-free distillation: KDIA, FedGen, FedFTG, DisUE -------------------------------


class KDIAParams(MethodParams):
    """KDIA's distillation and feature generator."""

    lambda_kd: float = Field(0.5, ge=0, description="weight of the KL term towards the teacher")
    lambda_gen: float = Field(1.0, ge=0, description="weight of the head's cross-entropy on generated features")
    temperature: float = Field(2.0, gt=0, description="distillation temperature tau (no tau^2 factor, as in the code)")
    kl_direction: Literal["reverse", "forward"] = Field(
        "reverse", description="reverse = KL(student||teacher) as coded; forward = KL(teacher||student) as in the figure"
    )
    gen_epochs: int = Field(20, ge=0, description="generator epochs per round (0 = never train it)")
    gen_iters: int = Field(100, ge=1, description="generator steps per epoch")
    gen_batch: int = Field(64, ge=2, description="generator batch size (split in halves for the diversity term)")
    gen_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the generator")
    gen_weight_decay: float = Field(1e-5, ge=0, description="Adam weight decay of the generator")
    noise_dim: int = Field(100, ge=1, description="dimension of the generator's noise")
    gen_hidden: int = Field(256, ge=8, description="width of the MLP generator (flat features)")
    report: Literal["teacher", "student"] = Field("teacher", description="which model `accuracy` reports")


class FedGenParams(MethodParams):
    """FedGen's latent generator (server) and its regulariser (clients)."""

    alpha: float = Field(1.0, ge=0, description="server: weight of the teachers' label-weighted CE (the code's ensemble_alpha)")
    eta: float = Field(1.0, ge=0, description="server: weight of the exp diversity loss (ensemble_eta)")
    gen_steps: int = Field(50, ge=0, description="generator Adam steps per round (0 = never train it)")
    gen_batch: int = Field(32, ge=2, description="server: generated samples per generator step")
    gen_lr: float = Field(3e-4, gt=0, description="generator Adam learning rate in round 1 (ensemble_lr)")
    gen_lr_decay: float = Field(0.98, gt=0, le=1, description="generator learning rate factor per round (ExponentialLR gamma)")
    gen_weight_decay: float = Field(1e-2, ge=0, description="generator Adam weight decay (the mnist config's weight_decay)")
    noise_dim: int = Field(32, ge=1, description="dimension of the generator's uniform noise")
    gen_hidden: int = Field(256, ge=1, description="width of the generator's hidden layer")
    alpha_g: float = Field(10.0, ge=0, description="client: initial weight of the CE on generated latents (generative_alpha)")
    beta_g: float = Field(10.0, ge=0, description="client: initial weight of the KL to the head on generated latents (generative_beta)")
    reg_decay: float = Field(0.98, gt=0, le=1, description="client: factor per round of alpha_g and beta_g")
    client_gen_batch: int = Field(32, ge=1, description="client: generated latents per local step (gen_batch_size)")


class DistillParams(MethodParams):
    """The server-side data-free distillation (FedFTG's code defaults)."""

    iterations: int = Field(10, ge=0, description="distillation iterations per round (0: no distillation)")
    batch: int = Field(50, ge=2, description="synthetic batch size")
    student_steps: int = Field(5, ge=0, description="student SGD steps per iteration")
    student_lr: float = Field(0.1, ge=0, description="student SGD learning rate (decays by lr_decay per round)")
    gen_lr: float = Field(0.01, gt=0, description="generator Adam learning rate (decays by lr_decay per round)")
    lr_decay: float = Field(0.998, gt=0, le=1, description="per-round decay of both learning rates")
    distill_weight: float = Field(1.0, ge=0, description="weight of the student's loss (0: the student never moves)")
    w_fidelity: float = Field(1.0, ge=0, description="generator: weight of the teachers' CE on the sampled labels")
    w_hard: float = Field(1.0, ge=0, description="generator: weight of the hard-sample term (student-teacher L1 gap)")
    w_div: float = Field(1.0, ge=0, description="generator: weight of the diversity term")
    update: Literal["sequential", "joint"] = Field(
        "sequential", description="one generator step per teacher (the code) or one step on their sum (vectorised)"
    )
    noise_dim: int = Field(100, ge=1, description="generator noise dimension (FedFTG: 100; 256 for CIFAR-100)")
    gen_width: int = Field(64, ge=4, description="generator width ngf")


class FedFTGParams(DistillParams):
    """FedFTG: the data-free distillation plus its label sampling and teacher weights."""

    labels: LabelMode = Field("proportional", description="label sampling: proportional (FedFTG), balanced, uniform")
    weights: WeightMode = Field("class", description="teacher weights: class (n_k^y share, FedFTG) or uniform")


class DisUEParams(DistillParams):
    """DisUE's groups, similarity encryption and universal-expert distillation (reconstructed)."""

    groups: int = Field(5, ge=1, description="M, the number of groups (cluster experts) [INFERRED]")
    linkage: Literal["complete", "average", "single"] = Field("complete", description="agglomerative linkage on 1 - cos")
    freeze_after: int | None = Field(None, ge=1, description="stop re-clustering after this round (None: every round)")
    encrypt: Scheme = Field("orthogonal", description="similarity encryption: orthogonal (exact), jl (approximate), none")
    jl_dim: int = Field(1024, ge=8, description="jl: dimension m of the projection (the upload per client)")
    counts: Literal["fresh", "all"] = Field("fresh", description="group label counts over the round's members or all members")
    gls: LabelMode = Field("proportional", description="Group Label Sampler: proportional, balanced, or uniform (no GLS)")
    gwf: WeightMode = Field("class", description="Group Weighting Factors: class (n_g^y share) or uniform (no GWF)")
    student_init: Literal["experts", "universal"] = Field("experts", description="distillation starts from the experts' average or θ_U")
