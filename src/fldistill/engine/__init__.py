"""The engine: what a method builds on. Nothing here imports a method.

The method-author surface (everything a method module may touch):

Transport and roles
    :class:`Comm` (``call`` clients from a role, ``send`` between server-side roles,
    ``inbox_meta``), the roles ``SERVER``, ``CLOUD``, :func:`edge`, and :class:`Payload`
    with its pricing :class:`Kind`. Hops are priced by :class:`~fldistill.ledger.Ledger`.
Client tasks
    :func:`task` registers a client-side handler ``(ClientContext, Payload) -> Payload``;
    :class:`ClientContext` is all a client sees; :func:`train_task` is the stock local
    training task, :func:`train_streams` and :func:`local_config_from` the pieces it is
    made of.
Local objectives
    :func:`objective` registers a loss factory returning an :class:`Objective` (per-client
    ``inputs``, per-step ``sample``), written against the :class:`Net` handle;
    :func:`frozen_forward` runs a frozen model inside a loss.
Server-side state
    :class:`StateBank` (per client, per cluster, or growing), created with
    ``Method.new_bank`` so it is checkpointed without code in the method.
Training helpers
    :func:`local_train`, :func:`evaluate`, :func:`predict_proba`, :func:`weighted_average`,
    :func:`get_state`, :func:`set_state`.
Personalised evaluation
    :func:`personal_eval` (each client's model on its local test split, batched by model;
    the runner calls it with ``Method.personal_models``) and its :class:`PersonalEval`.

The vectorised twins of tasks live in :mod:`fldistill.engine.vectorised` and
:mod:`fldistill.engine.fastchain`; a method never calls them directly.
"""

from fldistill.engine.comm import (
    BATCHED_TASKS,
    TASKS,
    ClientContext,
    Comm,
    InProcessComm,
    Unsupported,
    batched_task,
    local_config_from,
    task,
    train_streams,
    train_task,
)
from fldistill.engine.evaluation import PersonalEval, personal_eval
from fldistill.engine.state import StateBank
from fldistill.engine.training import (
    ModelState,
    Net,
    Objective,
    evaluate,
    frozen_forward,
    get_state,
    local_train,
    make_objective,
    objective,
    predict_proba,
    set_state,
    weighted_average,
)
from fldistill.ledger import CLOUD, SERVER, Kind, Ledger, Payload, edge, hop

__all__ = [
    "BATCHED_TASKS",
    "CLOUD",
    "SERVER",
    "TASKS",
    "ClientContext",
    "Comm",
    "InProcessComm",
    "Kind",
    "Ledger",
    "ModelState",
    "Net",
    "Objective",
    "Payload",
    "PersonalEval",
    "StateBank",
    "Unsupported",
    "batched_task",
    "edge",
    "evaluate",
    "frozen_forward",
    "get_state",
    "hop",
    "local_config_from",
    "local_train",
    "make_objective",
    "objective",
    "personal_eval",
    "predict_proba",
    "set_state",
    "task",
    "train_streams",
    "train_task",
    "weighted_average",
]
