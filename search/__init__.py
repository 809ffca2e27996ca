"""The auto-tuner: search space, sensitivity analysis, the Optuna study and final selection."""

from search._evaluator import PlanEvaluator, Timing
from search._greedy import greedy_accuracy_control
from search._sensitivity import GroupSensitivity, SensitivityReport, analyze_sensitivity
from search._space import LayerGroup, SearchSpace, build_space, residual_groups
from search._study import (
    StudySettings,
    feasible_trials,
    finished_count,
    open_study,
    pareto_front,
    run_study,
    seed_study,
)
from search._tune import FINAL_PROTOCOL, TuneResult, default_study_name, split_holdout, tune

__all__ = [
    "FINAL_PROTOCOL",
    "finished_count",
    "GroupSensitivity",
    "LayerGroup",
    "PlanEvaluator",
    "SearchSpace",
    "SensitivityReport",
    "StudySettings",
    "Timing",
    "TuneResult",
    "analyze_sensitivity",
    "build_space",
    "default_study_name",
    "feasible_trials",
    "greedy_accuracy_control",
    "open_study",
    "pareto_front",
    "residual_groups",
    "run_study",
    "seed_study",
    "split_holdout",
    "tune",
]
