# Sequential evaluation (docs/method.md §8) and the tidy table that gathers every run.


rule evaluate:
    input:
        model=lambda w: model_inputs(w.model),
        eval=rules.prepare_data.output.eval,
        editor=checkpoint_of,
        cfg=rules.write_run_config.output[0],
    output:
        metrics="results/eval/{model}/{dataset}/{variant}/seed{seed}/metrics_long.csv",
        summary="results/eval/{model}/{dataset}/{variant}/seed{seed}/metrics.json",
        per_edit="results/eval/{model}/{dataset}/{variant}/seed{seed}/per_edit.csv",
        curve="results/eval/{model}/{dataset}/{variant}/seed{seed}/curve.csv",
    log:
        "results/logs/evaluate/{model}/{dataset}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{variant}/seed{seed}.tsv"
    conda:
        "../../envs/hiedit.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: 80000 if is_gpu_model(w.model) else 3000,
        gpu=lambda w: 1 if is_gpu_model(w.model) else 0,
    params:
        out_dir=subpath(output.metrics, parent=True),
        editor=editor_flag,
    shell:
        "python -m hiedit evaluate --run-config {input.cfg} --eval-data {input.eval}"
        " {params.editor} --out-dir {params.out_dir}"
        " --threads {threads} > {log} 2>&1"


rule gather_metrics:
    input:
        all_runs(rules.evaluate.output.metrics),
    output:
        table="results/tables/metrics.csv",
    log:
        "results/logs/gather_metrics.log",
    conda:
        "../../envs/hiedit.yaml"
    shell:
        "python -m hiedit evaluate gather --out {output.table} {input} > {log} 2>&1"
