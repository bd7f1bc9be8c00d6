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


# Flat long streams (issue target: edit 20,000 within 10 % of edit 1, memory flat): a cheap
# editor (untrained networks at a set step size) on the setup's long stream. Not part of `all`:
# `snakemake --config setup=study long_stream_bench`.
rule bench_long_stream:
    input:
        script="benchmarks/long_stream.py",
        model=lambda w: model_inputs(w.model),
        eval=lambda w: expand(
            rules.prepare_data.output.eval, dataset=SETUP["long_stream"]["datasets"][0]
        ),
    output:
        csv=res("bench/long_stream/{model}.csv"),
        per_edit=res("bench/long_stream/{model}.per_edit.csv"),
        png=report(
            res("bench/long_stream/{model}.png"),
            caption="../report/figure9_long_stream_bench.rst",
            category="Figure 9",
            subcategory="Flat long stream",
            labels={"figure": "long-stream benchmark", "model": "{model}"},
        ),
        probe_png=report(
            res("bench/long_stream/{model}.probe.png"),
            caption="../report/figure9_long_stream_probe.rst",
            category="Figure 9",
            subcategory="Flat long stream",
            labels={"figure": "long-stream benchmark, host probe", "model": "{model}"},
        ),
    log:
        res("logs/bench_long_stream/{model}.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=6000,
    params:
        setup=SETUP["name"],
        dataset=lambda w: SETUP["long_stream"]["datasets"][0],
        n_edits=lambda w: SETUP["long_stream"]["n_edits"],
        # Ten windows, at most 1,000 edits each (the report's long-stream windows).
        window=lambda w: min(1000, max(1, SETUP["long_stream"]["n_edits"] // 10)),
    shell:
        "python {input.script} --setup {params.setup} --model {wildcards.model}"
        " --dataset {params.dataset} --eval-data {input.eval} --n-edits {params.n_edits}"
        " --window {params.window} --per-edit {output.per_edit} --out {output.csv}"
        " --plot {output.png} --probe-plot {output.probe_png} --threads {threads} > {log} 2>&1"


rule long_stream_bench:
    input:
        expand(rules.bench_long_stream.output.csv, model=SETUP["models"]),
        expand(rules.bench_long_stream.output.png, model=SETUP["models"]),
        expand(rules.bench_long_stream.output.probe_png, model=SETUP["models"]),
