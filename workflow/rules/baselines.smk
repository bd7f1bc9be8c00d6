# Fitted statistics of the baseline editors (hiedit/baselines/): the key statistic C = E[k kᵀ] of
# the down-projections MEMIT and AlphaEdit edit, once per model, cached and checksummed (its
# sidecar records the text source, tokens and sha256s). The train_editor (grid search) and
# evaluate jobs of the variants that need it take it as an input (stats_of in common.smk).


rule write_key_stats_config:
    output:
        res("configs/{model}/key_stats.json"),
    log:
        res("logs/write_key_stats_config/{model}.log"),
    params:
        # A param, so config edits rerun the fit.
        cfg=key_stats_run_config,
    run:
        with open(output[0], "w") as handle:
            print(params.cfg, file=handle)


rule fit_key_stats:
    input:
        model=lambda w: model_inputs(w.model),
        cfg=rules.write_key_stats_config.output[0],
    output:
        stats=res("stats/{model}/key_stats.pt"),
        sidecar=res("stats/{model}/key_stats.json"),
    log:
        res("logs/fit_key_stats/{model}.log"),
    benchmark:
        res("benchmarks/fit_key_stats/{model}.tsv")
    conda:
        "../../envs/hiedit.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: 80000 if is_gpu_model(w.model) else 3000,
        gpu=lambda w: 1 if is_gpu_model(w.model) else 0,
    shell:
        "python -m hiedit baselines fit-stats --run-config {input.cfg} --out {output.stats}"
        " --threads {threads} --no-progress > {log} 2>&1"


rule key_stats:
    input:
        expand(rules.fit_key_stats.output.stats, model=SETUP["models"]),
