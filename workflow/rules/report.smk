# The report (`snakemake --report report.zip`): Tables 1-2 and Figures 1-6, each a report() output
# whose caption quotes the configuration it was built under.


# The resolved configuration the captions quote (a param, so a change rebuilds the item).
REPORT_SETTINGS = {
    "setup": SETUP["name"],
    "models": ", ".join(SETUP["models"]),
    "datasets": ", ".join(SETUP["datasets"]),
    "variants": ", ".join(SETUP["variants"]),
    "seeds": ", ".join(str(s) for s in SETUP["seeds"]),
    "n_edits": SETUP["evaluation"]["n_edits"],
    "num_pre": SETUP["evaluation"]["num_pre"],
    "n_curve_points": SETUP["evaluation"]["n_curve_points"],
    "curve_sample": SETUP["evaluation"]["curve_sample"],
    "k": "; ".join(
        f"{m}: K = {model_entry(m)['k']} of L = {len(model_entry(m)['modules'])}"
        for m in SETUP["models"]
    ),
    "k_sweep": ", ".join(sweep_ks()),
    "trajectories": SETUP["training"]["n_trajectories"],
    "trajectory_length": SETUP["training"]["trajectory_length"],
}
# CI's smoke run needs the benchmark's quick shapes; every other setup measures Llama-3-8B's.
KERNEL_BENCH_FLAGS = "--small --repeats 3" if SETUP["name"] == "smoke" else ""


rule report_main_table:
    input:
        metrics=rules.gather_metrics.output.table,
    output:
        csv=report(
            res("report/table1/{model}/{dataset}.csv"),
            caption="../report/table1.rst",
            category="Table 1",
            subcategory="Main results",
            labels={"model": "{model}", "dataset": "{dataset}", "format": "CSV"},
        ),
        html=report(
            res("report/table1/{model}/{dataset}.html"),
            caption="../report/table1.rst",
            category="Table 1",
            subcategory="Main results",
            labels={"model": "{model}", "dataset": "{dataset}", "format": "HTML"},
        ),
    log:
        res("logs/report/table1/{model}/{dataset}.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        settings=REPORT_SETTINGS,
    shell:
        "python -m hiedit report main-table --metrics {input.metrics}"
        " --model {wildcards.model} --dataset {wildcards.dataset}"
        " --csv {output.csv} --html {output.html} > {log} 2>&1"


rule report_ablation_table:
    input:
        metrics=rules.gather_metrics.output.table,
    output:
        csv=report(
            res("report/table2/{model}/{dataset}.csv"),
            caption="../report/table2.rst",
            category="Table 2",
            subcategory="Ablations",
            labels={"model": "{model}", "dataset": "{dataset}", "format": "CSV"},
        ),
        html=report(
            res("report/table2/{model}/{dataset}.html"),
            caption="../report/table2.rst",
            category="Table 2",
            subcategory="Ablations",
            labels={"model": "{model}", "dataset": "{dataset}", "format": "HTML"},
        ),
    log:
        res("logs/report/table2/{model}/{dataset}.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        settings=REPORT_SETTINGS,
    shell:
        "python -m hiedit report ablation-table --metrics {input.metrics}"
        " --model {wildcards.model} --dataset {wildcards.dataset}"
        " --csv {output.csv} --html {output.html} > {log} 2>&1"


rule report_k_sweep:
    input:
        metrics=rules.gather_metrics.output.table,
    output:
        png=report(
            res("report/figure1_k_sweep.png"),
            caption="../report/figure1_k_sweep.rst",
            category="Figure 1",
            subcategory="K sweep",
            labels={"figure": "final metrics against K"},
        ),
    log:
        res("logs/report/figure1_k_sweep.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        settings=REPORT_SETTINGS,
        default_k=[f"{m}={model_entry(m)['k']}" for m in SETUP["models"]],
        n_modules=[f"{m}={len(model_entry(m)['modules'])}" for m in SETUP["models"]],
    shell:
        "python -m hiedit report k-sweep --metrics {input.metrics}"
        " --default-k {params.default_k} --n-modules {params.n_modules}"
        " --out {output.png} > {log} 2>&1"


rule report_learning_curves:
    input:
        metrics=rules.gather_metrics.output.table,
    output:
        png=report(
            res("report/figure2_learning_curves.png"),
            caption="../report/figure2_learning_curves.rst",
            category="Figure 2",
            subcategory="Learning curves",
            labels={"figure": "metrics against the number of edits"},
        ),
    log:
        res("logs/report/figure2_learning_curves.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        settings=REPORT_SETTINGS,
    shell:
        "python -m hiedit report learning-curves --metrics {input.metrics}"
        " --out {output.png} > {log} 2>&1"


rule report_mask_usage:
    input:
        per_edit=lambda w: expand(
            rules.evaluate.output.per_edit,
            model=w.model,
            dataset=w.dataset,
            variant="hiedit",
            seed=SETUP["seeds"],
        ),
    output:
        png=report(
            res("report/figure3/{model}/{dataset}.png"),
            caption="../report/figure3_mask_usage.rst",
            category="Figure 3",
            subcategory="Mask usage",
            labels={"model": "{model}", "dataset": "{dataset}"},
        ),
        table=res("report/figure3/{model}/{dataset}.csv"),
    log:
        res("logs/report/figure3/{model}/{dataset}.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        settings=REPORT_SETTINGS,
        modules=lambda w: model_entry(w.model)["modules"],
    shell:
        "python -m hiedit report mask-usage {input.per_edit} --modules {params.modules}"
        " --out {output.png} --table {output.table} > {log} 2>&1"


rule report_edit_time:
    input:
        per_edit=all_runs(rules.evaluate.output.per_edit),
    output:
        png=report(
            res("report/figure4_edit_time.png"),
            caption="../report/figure4_edit_time.rst",
            category="Figure 4",
            subcategory="Time per edit",
            labels={"figure": "time per edit", "format": "PNG"},
        ),
        summary=report(
            res("report/figure4_edit_time.csv"),
            caption="../report/figure4_edit_time.rst",
            category="Figure 4",
            subcategory="Time per edit",
            labels={"figure": "time per edit", "format": "CSV"},
        ),
    log:
        res("logs/report/figure4_edit_time.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        settings=REPORT_SETTINGS,
    shell:
        "python -m hiedit report edit-time {input.per_edit}"
        " --out {output.png} --summary {output.summary} > {log} 2>&1"


rule report_training_curves:
    input:
        train_log=all_runs(rules.train_editor.output.curve, fitted_variants()),
    output:
        png=report(
            res("report/figure5_training_curves.png"),
            caption="../report/figure5_training_curves.rst",
            category="Figure 5",
            subcategory="Editor training",
            labels={"figure": "training losses"},
        ),
    log:
        res("logs/report/figure5_training_curves.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        settings=REPORT_SETTINGS,
    shell:
        "python -m hiedit report training-curves {input.train_log}"
        " --out {output.png} > {log} 2>&1"


rule bench_commit_cpu:
    input:
        script="benchmarks/commit_cpu.py",
    output:
        csv=res("bench/commit_cpu.csv"),
    log:
        res("logs/bench_commit_cpu.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 2
    resources:
        mem_mb=2000 if KERNEL_BENCH_FLAGS else 8000,
    params:
        flags=KERNEL_BENCH_FLAGS,
    shell:
        "python {input.script} {params.flags} --out {output.csv} > {log} 2>&1"


rule report_kernel_benchmark:
    input:
        script="benchmarks/plot_commit.py",
        csv=rules.bench_commit_cpu.output.csv,
    output:
        png=report(
            res("report/figure6_kernel_benchmark.png"),
            caption="../report/figure6_kernel_benchmark.rst",
            category="Figure 6",
            subcategory="Commit kernel",
            labels={"figure": "commit benchmark (CPU)"},
        ),
    log:
        res("logs/report/figure6_kernel_benchmark.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        flags=KERNEL_BENCH_FLAGS,
    shell:
        "python {input.script} {input.csv} --out {output.png} > {log} 2>&1"


# Every report item of the selected setup, by target rule; `rule all` lists all_report_outputs().
REPORT_RUNS = {"model": SETUP["models"], "dataset": SETUP["datasets"]}
REPORT_TARGETS = {
    "main_table": expand(rules.report_main_table.output, **REPORT_RUNS),
    # Table 2, the K sweep and mask usage are all read against the hiedit variant.
    "ablations": (
        expand(rules.report_ablation_table.output, **REPORT_RUNS)
        + expand(rules.report_mask_usage.output.png, **REPORT_RUNS)
        + [rules.report_k_sweep.output.png]
        if "hiedit" in SETUP["variants"]
        else []
    ),
    "curves": [
        rules.report_learning_curves.output.png,
        rules.report_training_curves.output.png,
    ],
    "timing": list(rules.report_edit_time.output),
    "kernel_benchmark": [rules.report_kernel_benchmark.output.png],
    "data": list(rules.report_data.output),
}
all_report_outputs = lambda: [f for files in REPORT_TARGETS.values() for f in files]


rule main_table:
    input:
        REPORT_TARGETS["main_table"],


rule ablations:
    input:
        REPORT_TARGETS["ablations"],


rule curves:
    input:
        REPORT_TARGETS["curves"],


rule timing:
    input:
        REPORT_TARGETS["timing"],


rule kernel_benchmark:
    input:
        REPORT_TARGETS["kernel_benchmark"],
