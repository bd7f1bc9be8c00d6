# Editor training: both networks over edit trajectories (method.md §5), per model × dataset × variant × seed.


rule train_editor:
    input:
        model=lambda w: model_inputs(w.model),
        train="results/data/{dataset}/train.parquet",
    output:
        editor="results/editors/{model}/{dataset}/{variant}/seed{seed}/editor.pt",
        curve="results/editors/{model}/{dataset}/{variant}/seed{seed}/train_log.csv",
    log:
        "results/logs/train_editor/{model}/{dataset}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_editor/{model}/{dataset}/{variant}/seed{seed}.tsv"
    conda:
        "../../envs/hiedit.yaml"
    threads: 2
    resources:
        mem_mb=lambda w: 80000 if is_gpu_model(w.model) else 3000,
        gpu=lambda w: 1 if is_gpu_model(w.model) else 0,
    params:
        cfg=run_config,
    shell:
        "python -m hiedit train --run-config {params.cfg:q} --train-data {input.train}"
        " --out {output.editor} --log-curve {output.curve} > {log} 2>&1"
