# Datasets: the embedded geofacts (built offline), the paper's downloads, and the tidy Parquet splits.


rule build_geofacts:
    output:
        raw=expand(
            GEOFACTS_RAW, format=["zsre", "counterfact"], split=["train", "eval"]
        ),
        stats="results/data/geofacts/stats.json",
    log:
        "results/logs/build_geofacts.log",
    conda:
        "../../envs/hiedit.yaml"
    params:
        out_dir=lambda w, output: os.path.dirname(output.raw[0]),
        seed=config["data_seed"],
        n_eval=SETUP["geofacts_eval"],
    shell:
        "python -m hiedit data geofacts --out-dir {params.out_dir} --seed {params.seed}"
        " --n-eval {params.n_eval} --stats {output.stats} > {log} 2>&1"


rule download_dataset:
    output:
        "resources/data/{dataset}/{part}.json",
    log:
        "results/logs/download_dataset/{dataset}_{part}.log",
    wildcard_constraints:
        part="all|train|eval",
    conda:
        "../../envs/hiedit.yaml"
    params:
        url=lambda w: dataset_entry(w.dataset)[
            {"all": "url", "train": "train_url", "eval": "eval_url"}[w.part]
        ],
    shell:
        "python -m hiedit data download --url {params.url} --out {output} > {log} 2>&1"


rule prepare_data:
    input:
        unpack(raw_inputs),
    output:
        train="results/data/{dataset}/train.parquet",
        eval="results/data/{dataset}/eval.parquet",
    log:
        "results/logs/prepare_data/{dataset}.log",
    conda:
        "../../envs/hiedit.yaml"
    params:
        inputs=raw_input_flags,
        format=lambda w: dataset_entry(w.dataset)["format"],
        seed=config["data_seed"],
        n_train=SETUP["training"]["n_train"],
        n_eval=SETUP["evaluation"]["n_edits"],
    shell:
        "python -m hiedit data prepare --format {params.format} {params.inputs}"
        " --seed {params.seed} --n-train {params.n_train} --n-eval {params.n_eval}"
        " --out-train {output.train} --out-eval {output.eval} > {log} 2>&1"
