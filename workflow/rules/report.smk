# The report (`snakemake --report report.zip`): Tables 1-2, the claims table and Figures 1-8, each
# a report() output whose caption quotes the configuration it was built under.


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
    "variant_seeds": "; ".join(
        f"{v}: {', '.join(str(s) for s in seeds)}"
        for v, seeds in SETUP["variant_seeds"].items()
    ),
    "validation_size": SETUP["training"]["validation_size"],
    "validation_edits": SETUP["training"]["validation_edits"],
    "validate_every": SETUP["training"]["validate_every"],
    "patience": SETUP["training"]["patience"],
    "step_search": (
        f"{SETUP['training']['step_search_min']:g} to {SETUP['training']['step_search_max']:g}"
    ),
}
LONG_STREAM = SETUP["long_stream"] or {}
# Windows of 1,000 edits along the long stream, fewer for a short one (at least ten windows).
LONG_WINDOW = min(1000, max(1, LONG_STREAM.get("n_edits", 0) // 10))
if LONG_STREAM:
    REPORT_SETTINGS["long_stream"] = {
        "n_edits": LONG_STREAM["n_edits"],
        "variants": ", ".join(LONG_STREAM["variants"]),
        "datasets": ", ".join(LONG_STREAM["datasets"]),
        "seeds": ", ".join(str(s) for s in LONG_STREAM["seeds"]),
        "window": LONG_WINDOW,
    }
# The router claim compares how selective these variants' routers are (per_edit.csv).
ROUTER_VARIANTS = [v for v in ("hiedit", "no-intrinsic") if v in SETUP["variants"]]
VALIDATED = SETUP["training"]["validation_size"] > 0 and bool(fitted_variants())


# CI's smoke run needs the benchmark's quick shapes; every other setup measures Llama-3-8B's.
KERNEL_BENCH_FLAGS = "--small --repeats 3" if SETUP["name"] == "smoke" else ""


rule report_main_table:
    input:
        metrics=rules.gather_metrics.output.table,
        # Table 1's time and memory columns.
        per_edit=lambda w: [
            out
            for variant in SETUP["variants"]
            for out in expand(
                rules.evaluate.output.per_edit,
                model=w.model,
                dataset=w.dataset,
                variant=variant,
                seed=seeds_of(variant),
            )
        ],
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
        " --per-edit {input.per_edit}"
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


rule report_claims:
    input:
        metrics=rules.gather_metrics.output.table,
        per_edit=all_runs(rules.evaluate.output.per_edit, ROUTER_VARIANTS),
    output:
        csv=report(
            res("report/claims.csv"),
            caption="../report/claims.rst",
            category="Claims",
            subcategory="Claims of the paper",
            labels={"table": "claims, tested", "format": "CSV"},
        ),
        html=report(
            res("report/claims.html"),
            caption="../report/claims.rst",
            category="Claims",
            subcategory="Claims of the paper",
            labels={"table": "claims, tested", "format": "HTML"},
        ),
    log:
        res("logs/report/claims.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        settings=REPORT_SETTINGS,
        default_k=[f"{m}={model_entry(m)['k']}" for m in SETUP["models"]],
        n_modules=[f"{m}={len(model_entry(m)['modules'])}" for m in SETUP["models"]],
        zsre=[d for d in SETUP["datasets"] if dataset_entry(d)["format"] == "zsre"],
    shell:
        "python -m hiedit report claims --metrics {input.metrics}"
        " --per-edit {input.per_edit} --default-k {params.default_k}"
        " --n-modules {params.n_modules} --zsre {params.zsre}"
        " --csv {output.csv} --html {output.html} > {log} 2>&1"


rule report_validation_curves:
    input:
        validation=all_runs(rules.train_editor.output.validation, fitted_variants()),
    output:
        png=report(
            res("report/figure7_validation_curves.png"),
            caption="../report/figure7_validation_curves.rst",
            category="Figure 7",
            subcategory="Validation during training",
            labels={"figure": "validation curves", "format": "PNG"},
        ),
        summary=report(
            res("report/figure7_validation_curves.csv"),
            caption="../report/figure7_validation_curves.rst",
            category="Figure 7",
            subcategory="Validation during training",
            labels={"figure": "validation curves", "format": "CSV"},
        ),
    log:
        res("logs/report/figure7_validation_curves.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        settings=REPORT_SETTINGS,
        trajectory_length=SETUP["training"]["trajectory_length"],
    shell:
        "python -m hiedit report validation-curves {input.validation}"
        " --out {output.png} --summary {output.summary}"
        " --trajectory-length {params.trajectory_length} > {log} 2>&1"


rule report_long_stream:
    input:
        per_edit=long_runs(rules.evaluate_long.output.per_edit),
        curve=long_runs(rules.evaluate_long.output.curve),
    output:
        png=report(
            res("report/figure8_long_stream.png"),
            caption="../report/figure8_long_stream.rst",
            category="Figure 8",
            subcategory="Long stream",
            labels={"figure": "long stream", "format": "PNG"},
        ),
        summary=report(
            res("report/figure8_long_stream.csv"),
            caption="../report/figure8_long_stream.rst",
            category="Figure 8",
            subcategory="Long stream",
            labels={"figure": "long stream: first and last windows", "format": "CSV"},
        ),
        windows=report(
            res("report/figure8_long_stream_windows.csv"),
            caption="../report/figure8_long_stream.rst",
            category="Figure 8",
            subcategory="Long stream",
            labels={"figure": "long stream: every window", "format": "CSV"},
        ),
    log:
        res("logs/report/figure8_long_stream.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=3000,
    params:
        settings=REPORT_SETTINGS,
        window=LONG_WINDOW,
    shell:
        "python -m hiedit report long-stream {input.per_edit} --curves {input.curve}"
        " --window {params.window} --out {output.png} --summary {output.summary}"
        " --windows {output.windows} > {log} 2>&1"


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


# Every report item of the selected setup, by target rule; `rule all` lists all_report_outputs(),
# which leaves out the long stream: its 20,000-edit runs are their own target (`long_stream`).
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
    "claims": list(rules.report_claims.output),
    "curves": [
        rules.report_learning_curves.output.png,
        rules.report_training_curves.output.png,
    ]
    + (list(rules.report_validation_curves.output) if VALIDATED else []),
    "timing": list(rules.report_edit_time.output),
    "kernel_benchmark": [rules.report_kernel_benchmark.output.png],
    "data": list(rules.report_data.output),
    "long_stream": list(rules.report_long_stream.output) if LONG_STREAM else [],
}
SEPARATE_TARGETS = {"long_stream"}
all_report_outputs = lambda: [
    f
    for name, files in REPORT_TARGETS.items()
    if name not in SEPARATE_TARGETS
    for f in files
]


rule main_table:
    input:
        REPORT_TARGETS["main_table"],


rule ablations:
    input:
        REPORT_TARGETS["ablations"],


rule claims:
    input:
        REPORT_TARGETS["claims"],


rule curves:
    input:
        REPORT_TARGETS["curves"],


rule timing:
    input:
        REPORT_TARGETS["timing"],


rule kernel_benchmark:
    input:
        REPORT_TARGETS["kernel_benchmark"],


# The long stream's runs and Figure 8 (nothing without a `long_stream` in the setup).
rule long_stream:
    input:
        long_runs(rules.evaluate_long.output.per_edit),
        long_runs(rules.evaluate_long.output.curve),
        REPORT_TARGETS["long_stream"],
