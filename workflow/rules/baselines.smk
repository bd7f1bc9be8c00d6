# Fitted statistics of the baseline editors (hiedit/baselines/): the key statistic C = E[k kᵀ] of
# the down-projections MEMIT and AlphaEdit edit, once per model, cached and checksummed (its
# sidecar records the text source, tokens and sha256s). Not yet part of `all`.


rule write_key_stats_config:
    output:
        res("configs/{model}/key_stats.json"),
    log:
        res("logs/write_key_stats_config/{model}.log"),
    params:
        # The run configuration of fit_key_stats (a param, so config edits rerun the fit).
        cfg=lambda w: json.dumps(
            {
                "model_name": w.model,
                "model": model_entry(w.model),
                "baselines": SETUP.get("baselines", config.get("baselines", {})),
            },
            sort_keys=True,
        ),
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
