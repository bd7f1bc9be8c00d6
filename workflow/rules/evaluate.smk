# Sequential evaluation (docs/method.md §8) and the tidy table that gathers every run.


# The unedited model's scores of a stream, shared by every variant and seed that edits it.
rule write_unedited_config:
    output:
        res("configs/unedited/{model}/{dataset}/n{n_edits}.json"),
    log:
        res("logs/write_unedited_config/{model}/{dataset}/n{n_edits}.log"),
    params:
        cfg=unedited_run_config,
    run:
        with open(output[0], "w") as handle:
            print(params.cfg, file=handle)


rule score_unedited:
    input:
        model=lambda w: model_inputs(w.model),
        eval=rules.prepare_data.output.eval,
        cfg=rules.write_unedited_config.output[0],
    output:
        scores=res("unedited/{model}/{dataset}/n{n_edits}.pt"),
    log:
        res("logs/score_unedited/{model}/{dataset}/n{n_edits}.log"),
    benchmark:
        res("benchmarks/score_unedited/{model}/{dataset}/n{n_edits}.tsv")
    conda:
        "../../envs/hiedit.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: 80000 if is_gpu_model(w.model) else 3000,
        gpu=lambda w: 1 if is_gpu_model(w.model) else 0,
    shell:
        "python -m hiedit evaluate unedited --run-config {input.cfg} --eval-data {input.eval}"
        " --out {output.scores} --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        model=lambda w: model_inputs(w.model),
        eval=rules.prepare_data.output.eval,
        editor=checkpoint_of,
        unedited=lambda w: expand(
            rules.score_unedited.output.scores,
            model=w.model,
            dataset=w.dataset,
            n_edits=SETUP["evaluation"]["n_edits"],
        ),
        cfg=rules.write_run_config.output[0],
        stats=stats_of,
    output:
        metrics=res("eval/{model}/{dataset}/{variant}/seed{seed}/metrics_long.csv"),
        summary=res("eval/{model}/{dataset}/{variant}/seed{seed}/metrics.json"),
        per_edit=res("eval/{model}/{dataset}/{variant}/seed{seed}/per_edit.csv"),
        curve=res("eval/{model}/{dataset}/{variant}/seed{seed}/curve.csv"),
    log:
        res("logs/evaluate/{model}/{dataset}/{variant}/seed{seed}.log"),
    benchmark:
        res("benchmarks/evaluate/{model}/{dataset}/{variant}/seed{seed}.tsv")
    conda:
        "../../envs/hiedit.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: 80000 if is_gpu_model(w.model) else 3000,
        gpu=lambda w: 1 if is_gpu_model(w.model) else 0,
    params:
        out_dir=subpath(output.metrics, parent=True),
        editor=editor_flag,
        stats=stats_flag,
        unedited=lambda w, input: (
            f"--unedited {input.unedited}" if input.unedited else ""
        ),
    shell:
        "python -m hiedit evaluate --run-config {input.cfg} --eval-data {input.eval}"
        " {params.editor} {params.stats} {params.unedited} --out-dir {params.out_dir}"
        " --threads {threads} > {log} 2>&1"


rule gather_metrics:
    input:
        all_runs(rules.evaluate.output.metrics),
    output:
        table=res("tables/metrics.csv"),
    log:
        res("logs/gather_metrics.log"),
    conda:
        "../../envs/hiedit.yaml"
    shell:
        "python -m hiedit evaluate gather --out {output.table} {input} > {log} 2>&1"


# The long stream (`snakemake long_stream`): the setup's fitted editors on n_edits sequential
# edits, with per-edit wall time and memory in per_edit.csv.
rule write_long_run_config:
    output:
        res("configs/long/{model}/{dataset}/{variant}/seed{seed}.json"),
    log:
        res("logs/write_long_run_config/{model}/{dataset}/{variant}/seed{seed}.log"),
    params:
        cfg=long_run_config,
    run:
        with open(output[0], "w") as handle:
            print(params.cfg, file=handle)


use rule evaluate as evaluate_long with:
    input:
        model=lambda w: model_inputs(w.model),
        eval=rules.prepare_data.output.eval,
        editor=checkpoint_of,
        # With a final_sample each job scores the unedited model on its own sample instead.
        unedited=lambda w: (
            []
            if SETUP["long_stream"].get("final_sample")
            else expand(
                rules.score_unedited.output.scores,
                model=w.model,
                dataset=w.dataset,
                n_edits=SETUP["long_stream"]["n_edits"],
            )
        ),
        cfg=rules.write_long_run_config.output[0],
        stats=stats_of,
    output:
        metrics=res("long/{model}/{dataset}/{variant}/seed{seed}/metrics_long.csv"),
        summary=res("long/{model}/{dataset}/{variant}/seed{seed}/metrics.json"),
        per_edit=res("long/{model}/{dataset}/{variant}/seed{seed}/per_edit.csv"),
        curve=res("long/{model}/{dataset}/{variant}/seed{seed}/curve.csv"),
    log:
        res("logs/evaluate_long/{model}/{dataset}/{variant}/seed{seed}.log"),
    benchmark:
        res("benchmarks/evaluate_long/{model}/{dataset}/{variant}/seed{seed}.tsv")
