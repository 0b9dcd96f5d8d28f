rule main_table:
    input:
        main_metrics(),
    output:
        csv=report("results/tables/main.csv", caption="../report/main_table.rst", category="Main comparison"),
        markdown="results/tables/main.md",
    log:
        "logs/main_table.log",
    localrule: True
    run:
        jobs.table(log[0], list(input), output.csv, output.markdown)


rule ablation_table:
    input:
        lambda w: ablation_metrics(w.name),
    output:
        csv=report("results/tables/ablation_{name}.csv", caption="../report/ablation_table.rst",
                   category="Ablations", subcategory="{name}"),
        markdown="results/tables/ablation_{name}.md",
    log:
        "logs/ablation_table/{name}.log",
    localrule: True
    run:
        jobs.table(log[0], list(input), output.csv, output.markdown)


rule figure:
    input:
        "results/tables/{table}.csv",
    output:
        png=report("results/figures/{table}.png", caption="../report/figures.rst", category="Figures"),
        pdf="results/figures/{table}.pdf",
    wildcard_constraints:
        table=r"main|ablation_[a-z_]+",
    params:
        kind=lambda w: w.table,
    log:
        "logs/figure/{table}.log",
    localrule: True
    run:
        jobs.figure(log[0], params.kind, input[0], output.png)


rule bits_figure:
    input:
        "results/tables/main.csv",
    output:
        png=report("results/figures/bits.png", caption="../report/bits.rst", category="Figures"),
        pdf="results/figures/bits.pdf",
    params:
        kind="bits",
    log:
        "logs/figure/bits.log",
    localrule: True
    run:
        jobs.figure(log[0], params.kind, input[0], output.png)


rule act_ranges_figure:
    input:
        "results/tables/act_ranges_{bits}.csv",
    output:
        png=report("results/figures/act_ranges_{bits}.png", caption="../report/act_ranges.rst", category="Figures"),
        pdf="results/figures/act_ranges_{bits}.pdf",
    params:
        kind="act_ranges",
    log:
        "logs/figure/act_ranges_{bits}.log",
    localrule: True
    run:
        jobs.figure(log[0], params.kind, input[0], output.png)


rule sample_grid:
    input:
        reference=lambda w: f"{images(FP, FP_BITS, w.pset)}/manifest.csv",
        images=lambda w: [f"{images(v, lowest_bits(), w.pset)}/manifest.csv" for v in MAIN_VARIANTS],
        prompts="results/prompts/{pset}.json",
    output:
        png=report("results/figures/samples_{pset}.png", caption="../report/samples.rst", category="Samples"),
        pdf="results/figures/samples_{pset}.pdf",
    params:
        labels=lambda w: ["FP"] + [f"{VARIANTS[v]['label']} {lowest_bits()}" for v in MAIN_VARIANTS],
        rows=config["report"]["grid_prompts"],
    log:
        "logs/sample_grid/{pset}.log",
    localrule: True
    run:
        jobs.sample_grid(log[0], input.reference, list(input.images), input.prompts, params.labels, params.rows,
                         output.png)
