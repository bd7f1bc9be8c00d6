# Editor fitting, per model × dataset × variant × seed: both networks over edit trajectories
# (docs/method.md §5), the tuned-step search, or a baseline's grid search on the validation slice.


rule write_run_config:
    output:
        res("configs/{model}/{dataset}/{variant}/seed{seed}.json"),
    log:
        res("logs/write_run_config/{model}/{dataset}/{variant}/seed{seed}.log"),
    params:
        cfg=run_config,
    run:
        # A params change (config.yaml edit) reruns this job and, through its output, the jobs below.
        with open(output[0], "w") as handle:
            print(params.cfg, file=handle)


rule train_editor:
    input:
        model=lambda w: model_inputs(w.model),
        train=rules.prepare_data.output.train,
        cfg=rules.write_run_config.output[0],
        stats=stats_of,
    output:
        editor=res("editors/{model}/{dataset}/{variant}/seed{seed}/editor.pt"),
        curve=res("editors/{model}/{dataset}/{variant}/seed{seed}/train_log.csv"),
        validation=res("editors/{model}/{dataset}/{variant}/seed{seed}/validation.csv"),
    log:
        res("logs/train_editor/{model}/{dataset}/{variant}/seed{seed}.log"),
    benchmark:
        res("benchmarks/train_editor/{model}/{dataset}/{variant}/seed{seed}.tsv")
    conda:
        "../../envs/hiedit.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: 80000 if is_gpu_model(w.model) else 3000,
        gpu=lambda w: 1 if is_gpu_model(w.model) else 0,
    params:
        stats=stats_flag,
    shell:
        "python -m hiedit train --run-config {input.cfg} --train-data {input.train}"
        " --out {output.editor} --log-curve {output.curve} --log-validation {output.validation}"
        " {params.stats} --resume --no-progress --threads {threads} > {log} 2>&1"
