# HiEdit reproduction workflow. Stages live in workflow/rules/; hyperparameters in config.yaml.
#   snakemake --cores all                        embedded default (offline, CPU)
#   snakemake --cores all --config setup=smoke   tiny end-to-end run (CI)
#   snakemake -n --config setup=paper            the paper's DAG (GPUs + internet to run)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/benchmark.smk"


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
