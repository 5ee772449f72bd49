"""Learned world models behind the :class:`~wmplan.platform.world_model.WorldModel` interface."""

from wmplan.platform.models.checkpoint import (
    MODEL_KINDS,
    CheckpointError,
    ModelKind,
    check_checkpoint_code,
    check_checkpoint_task,
    checkpoint_code,
    checkpoint_obs,
    describe_training,
    load_world_model,
    read_checkpoint_info,
    register_model_kind,
    save_checkpoint,
    training_summary,
)
from wmplan.platform.models.ensemble import (
    DisagreementPenalty,
    EnsembleModelConfig,
    EnsembleTrainConfig,
    EnsembleWorldModel,
    WorstMember,
    load_ensemble,
    train_ensemble_model,
)
from wmplan.platform.models.evaluation import evaluate_model
from wmplan.platform.models.jepa import JepaModelConfig, JepaWorldModel, build_jepa_model
from wmplan.platform.models.jepa_training import JEPA_PRESETS, JepaTrainConfig, jepa_train_config, train_jepa_model
from wmplan.platform.models.mlp import ResidualMLP
from wmplan.platform.models.state_model import StateModelConfig, StateWorldModel
from wmplan.platform.models.training import TrainConfig, train_state_model, transition_windows
from wmplan.platform.models.visual import VisualModelConfig, VisualWorldModel, is_pixel_model, render_states
from wmplan.platform.models.visual_training import VisualTrainConfig, train_visual_model

__all__ = [
    "ResidualMLP",
    "StateModelConfig", "StateWorldModel",
    "TrainConfig", "train_state_model", "transition_windows",
    "EnsembleModelConfig", "EnsembleWorldModel", "EnsembleTrainConfig", "DisagreementPenalty", "WorstMember", "train_ensemble_model",
    "load_ensemble",
    "VisualModelConfig", "VisualWorldModel", "VisualTrainConfig", "train_visual_model", "is_pixel_model", "render_states",
    "JepaModelConfig", "JepaWorldModel", "JepaTrainConfig", "JEPA_PRESETS", "jepa_train_config", "train_jepa_model",
    "evaluate_model",
    "CheckpointError", "ModelKind", "MODEL_KINDS", "register_model_kind", "save_checkpoint",
    "load_world_model", "read_checkpoint_info", "training_summary", "describe_training", "checkpoint_code", "check_checkpoint_code", "checkpoint_obs",
    "check_checkpoint_task",
]

register_model_kind("jepa", JepaWorldModel, JepaModelConfig, build_jepa_model)
