# Datasets: the embedded geofacts (built offline), the paper's downloads, and the tidy Parquet splits.
import re

from hiedit.data.raw import DEFAULT_MAX_CHARS


rule build_geofacts:
    output:
        raw=expand(
            GEOFACTS_RAW, format=["zsre", "counterfact"], split=["train", "eval"]
        ),
        stats=res("data/geofacts/stats.json"),
    log:
        res("logs/build_geofacts.log"),
    conda:
        "../../envs/hiedit.yaml"
    params:
        out_dir=lambda w, output: os.path.dirname(output.raw[0]),
        seed=config["data_seed"],
        n_eval=SETUP["geofacts_eval"],
        n_extra=SETUP["geofacts_extra_eval"],
        cap=SETUP["geofacts_max_per_relation"],
    shell:
        "python -m hiedit data geofacts --out-dir {params.out_dir} --seed {params.seed}"
        " --n-eval {params.n_eval} --n-extra {params.n_extra} --max-per-relation {params.cap}"
        " --stats {output.stats} > {log} 2>&1"


rule download_dataset:
    output:
        "resources/data/{dataset}/{part}.json",
    log:
        res("logs/download_dataset/{dataset}_{part}.log"),
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


# Only the catalogue's datasets: keeps results/data/geofacts/stats.json (build_geofacts) apart.
PREPARED_DATASETS = "|".join(re.escape(name) for name in config["datasets"])


rule prepare_data:
    input:
        unpack(raw_inputs),
    output:
        train=res("data/{dataset}/train.parquet"),
        eval=res("data/{dataset}/eval.parquet"),
        stats=res("data/{dataset}/stats.json"),
    log:
        res("logs/prepare_data/{dataset}.log"),
    wildcard_constraints:
        dataset=PREPARED_DATASETS,
    conda:
        "../../envs/hiedit.yaml"
    params:
        inputs=raw_input_flags,
        on_malformed=lambda w: dataset_entry(w.dataset).get("on_malformed", "fail"),
        max_chars=lambda w: dataset_entry(w.dataset).get("max_chars", DEFAULT_MAX_CHARS),
        format=lambda w: dataset_entry(w.dataset)["format"],
        seed=config["data_seed"],
        # The trainer holds its validation slice out of these records.
        n_train=SETUP["training"]["n_train"] + SETUP["training"]["validation_size"],
        n_eval=lambda w: eval_split_size(w.dataset),
    shell:
        "python -m hiedit data prepare --format {params.format} {params.inputs}"
        " --seed {params.seed} --n-train {params.n_train} --n-eval {params.n_eval}"
        " --on-malformed {params.on_malformed} --max-chars {params.max_chars}"
        " --dataset {wildcards.dataset} --out-train {output.train}"
        " --out-eval {output.eval} --stats {output.stats} > {log} 2>&1"


rule report_data:
    input:
        stats=expand(rules.prepare_data.output.stats, dataset=SETUP["datasets"]),
    output:
        csv=report(
            res("report/data/preparation.csv"),
            caption="../report/data.rst",
            category="Data",
            subcategory="Preparation",
            labels={"table": "records read, kept and dropped", "format": "CSV"},
        ),
        html=report(
            res("report/data/preparation.html"),
            caption="../report/data.rst",
            category="Data",
            subcategory="Preparation",
            labels={"table": "records read, kept and dropped", "format": "HTML"},
        ),
    log:
        res("logs/report/data.log"),
    conda:
        "../../envs/hiedit.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        policies={
            name: dataset_entry(name).get("on_malformed", "fail")
            for name in SETUP["datasets"]
        },
    shell:
        "python -m hiedit data stats-table {input.stats}"
        " --csv {output.csv} --html {output.html} > {log} 2>&1"
