# HiEdit reproduction workflow. Stages live in workflow/rules/; hyperparameters in config.yaml.
#   snakemake --cores all                        embedded default (offline, CPU)
#   snakemake --cores all --config setup=smoke   tiny end-to-end run (CI)
#   snakemake -n --config setup=paper            the paper's DAG (GPUs + internet to run)
import sys

from snakemake.utils import min_version

min_version("9.0")
# The workflow reads its configuration with the project's own code, from this checkout: the
# project need not be installed where Snakemake runs (e.g. with --use-conda).
sys.path.insert(0, workflow.basedir)


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/baselines.smk"


rule all:
    default_target: True
    input:
        rules.gather_metrics.output.table,
        all_report_outputs(),


rule data:
    input:
        all_prepared_data(),


rule models:
    input:
        all_model_inputs(),
