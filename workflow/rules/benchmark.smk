# Editor speed and memory (issue targets: training step, eval edit, scoring throughput, peak RSS),
# measured on each model of the setup with its first dataset. Not part of `all`: run it with
# `snakemake --cores all editor_speed`.


rule bench_editor_speed:
    input:
        script="benchmarks/editor_speed.py",
        model=lambda w: model_inputs(w.model),
        train=expand(rules.prepare_data.output.train, dataset=SETUP["datasets"][0]),
        eval=expand(rules.prepare_data.output.eval, dataset=SETUP["datasets"][0]),
    output:
        csv=res("bench/editor_speed/{model}.csv"),
    log:
        res("logs/bench_editor_speed/{model}.log"),
    conda:
        "../../envs/hiedit.yaml"
    # The whole machine: the timings are only meaningful without other jobs beside them.
    # Snakemake scales this down to --cores (workflow.cores itself is undefined under --report).
    threads: 1024
    resources:
        mem_mb=lambda w: 80000 if is_gpu_model(w.model) else 4000,
        gpu=lambda w: 1 if is_gpu_model(w.model) else 0,
    params:
        setup=SETUP["name"],
    shell:
        "python {input.script} --setup {params.setup} --model {wildcards.model}"
        " --train-data {input.train} --eval-data {input.eval} --back-depth 10 --side-path-chunk 5"
        " --threads {threads} --out {output.csv} > {log} 2>&1"


rule editor_speed:
    input:
        expand(rules.bench_editor_speed.output.csv, model=SETUP["models"]),
