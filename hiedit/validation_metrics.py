"""The metrics a validation row reports (a trained editor's, the step-size search's and a
baseline's grid search alike). Kept apart from :mod:`hiedit.editor.validation` so that the report
can read validation logs without importing the editor (and torch)."""

LOGGED_METRICS = (
    "efficacy",
    "generalization",
    "specificity",
    "specificity_agreement",
    "specificity_agreement_correct",
    "specificity_kl",
    "retention_efficacy",
)
