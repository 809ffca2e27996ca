"""The auto-tuner: search space, sensitivity analysis, the Optuna study and final selection."""

if __name__ != "qbench.search":  # a source checkout on sys.path makes `import search` possible
    raise ImportError("import qbench.search, not search: the folder installs as qbench.search")

from qbench.search._greedy import greedy_accuracy_control
from qbench.search._roles import layer_roles, role_summary_text, summarize_by_role
from qbench.search._sensitivity import GroupSensitivity, SensitivityReport, analyze_sensitivity
from qbench.search._space import LayerGroup, SearchSpace, build_space, repeated_groups
from qbench.search._study import (
    StudySettings,
    feasible_trials,
    finished_count,
    open_study,
    pareto_front,
    run_study,
    seed_study,
)
from qbench.search._trial_timing import TRIAL_PROTOCOL, TrialTiming, time_against_baseline
from qbench.search._tune import (
    FINAL_PROTOCOL,
    TuneInputs,
    TuneResult,
    TuneSettings,
    default_grouping,
    default_precisions,
    default_study_name,
    split_holdout,
    tune,
)

__all__ = [
    "FINAL_PROTOCOL",
    "finished_count",
    "GroupSensitivity",
    "LayerGroup",
    "TRIAL_PROTOCOL",
    "SearchSpace",
    "SensitivityReport",
    "StudySettings",
    "TrialTiming",
    "time_against_baseline",
    "TuneInputs",
    "TuneResult",
    "TuneSettings",
    "analyze_sensitivity",
    "build_space",
    "default_grouping",
    "default_precisions",
    "default_study_name",
    "feasible_trials",
    "greedy_accuracy_control",
    "open_study",
    "pareto_front",
    "layer_roles",
    "repeated_groups",
    "role_summary_text",
    "summarize_by_role",
    "run_study",
    "seed_study",
    "split_holdout",
    "tune",
]
