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


# The main figure's baseline method (REPORT_BASELINE): config report.baseline (a variant name or label),
# by default "perstep", or the first variant where there is no perstep; checked by pcr.plan.
rule main_deltas_table:
    input:
        main_metrics(),
    output:
        csv="results/tables/main_deltas.csv",
        markdown="results/tables/main_deltas.md",
    log:
        "logs/main_deltas_table.log",
    localrule: True
    params:
        baseline=REPORT_BASELINE,
    run:
        jobs.delta_table(log[0], list(input), params.baseline, output.csv, output.markdown)


rule ablation_table:
    input:
        lambda w: ablation_metrics(w.name),
    output:
        csv=report(
            "results/tables/ablation_{name}.csv",
            caption="../report/ablation_table.rst",
            category="Ablations",
            subcategory="{name}",
        ),
        markdown="results/tables/ablation_{name}.md",
    log:
        "logs/ablation_table/{name}.log",
    localrule: True
    run:
        jobs.table(log[0], list(input), output.csv, output.markdown)


rule figure:
    input:
        # the main figure shows paired differences to the baseline: their table, not main.csv
        lambda w: f"results/tables/{'main_deltas' if w.table == 'main' else w.table}.csv",
    output:
        png=report("results/figures/{table}.png", caption="../report/figures.rst", category="Figures"),
        pdf="results/figures/{table}.pdf",
    log:
        "logs/figure/{table}.log",
    wildcard_constraints:
        table=r"main|ablation_[a-z_]+",
    localrule: True
    params:
        kind=lambda w: w.table,
    run:
        jobs.figure(log[0], params.kind, input[0], output.png)


rule bits_figure:
    input:
        "results/tables/main.csv",
    output:
        png=report("results/figures/bits.png", caption="../report/bits.rst", category="Figures"),
        pdf="results/figures/bits.pdf",
    log:
        "logs/figure/bits.log",
    localrule: True
    params:
        kind="bits",
    run:
        jobs.figure(log[0], params.kind, input[0], output.png)


rule act_ranges_figure:
    input:
        "results/tables/act_ranges_{bits}.csv",
    output:
        png=report("results/figures/act_ranges_{bits}.png", caption="../report/act_ranges.rst", category="Figures"),
        pdf="results/figures/act_ranges_{bits}.pdf",
    log:
        "logs/figure/act_ranges_{bits}.log",
    localrule: True
    params:
        kind="act_ranges",
    run:
        jobs.figure(log[0], params.kind, input[0], output.png)


rule sample_grid:
    input:
        reference=lambda w: f"{images(FP, FP_BITS, w.pset)}/manifest.csv",
        images=lambda w: [f"{images(v, lowest_bits(), w.pset)}/manifest.csv" for v in MAIN_ROWS],
        prompts="results/prompts/{pset}.json",
    output:
        png=report("results/figures/samples_{pset}.png", caption="../report/samples.rst", category="Samples"),
        pdf="results/figures/samples_{pset}.pdf",
    log:
        "logs/sample_grid/{pset}.log",
    localrule: True
    params:
        labels=lambda w: ["FP"] + [f"{PLAN.label(v)} {lowest_bits()}" for v in MAIN_ROWS],
        rows=config["report"]["grid_prompts"],
    run:
        jobs.sample_grid(
            log[0], input.reference, list(input.images), input.prompts, params.labels, params.rows, output.png
        )


# -- the experiment (config experiment:): tables of every run, paired deltas, figures per regime --------
rule experiment_table:
    input:
        lambda w: experiment_runs()[0],
    output:
        csv="results/tables/experiment.csv",
        markdown="results/tables/experiment.md",
    log:
        "logs/experiment_table.log",
    localrule: True
    params:
        columns=lambda w: experiment_runs()[1],
    run:
        jobs.experiment_table(log[0], list(input), params.columns, output.csv, output.markdown)


rule experiment_deltas_table:
    input:
        lambda w: experiment_runs()[0],
    output:
        csv="results/tables/experiment_deltas.csv",
        markdown="results/tables/experiment_deltas.md",
    log:
        "logs/experiment_deltas_table.log",
    localrule: True
    params:
        columns=lambda w: experiment_runs()[1],
    run:
        jobs.experiment_deltas(log[0], list(input), params.columns, output.csv, output.markdown)


rule experiment_regime_table:
    input:
        lambda w: experiment_runs(w.regime)[0],
    output:
        csv="results/tables/experiment/{regime}.csv",
        markdown="results/tables/experiment/{regime}.md",
    log:
        "logs/experiment_table/{regime}.log",
    localrule: True
    params:
        columns=lambda w: experiment_runs(w.regime)[1],
    run:
        jobs.experiment_table(log[0], list(input), params.columns, output.csv, output.markdown)


rule experiment_regime_deltas_table:
    input:
        lambda w: experiment_runs(w.regime)[0],
    output:
        csv="results/tables/experiment/{regime}_deltas.csv",
        markdown="results/tables/experiment/{regime}_deltas.md",
    log:
        "logs/experiment_deltas_table/{regime}.log",
    localrule: True
    params:
        columns=lambda w: experiment_runs(w.regime)[1],
    run:
        jobs.experiment_deltas(log[0], list(input), params.columns, output.csv, output.markdown)


rule experiment_figure:
    input:
        "results/tables/experiment/{regime}_deltas.csv",
    output:
        png=report(
            "results/figures/experiment/{regime}_{relax}.png",
            caption="../report/experiment.rst",
            category="Experiment",
            subcategory="{regime}",
        ),
        pdf="results/figures/experiment/{regime}_{relax}.pdf",
    log:
        "logs/experiment_figure/{regime}_{relax}.log",
    localrule: True
    params:
        relaxed=lambda w: w.relax == "relaxed",
    run:
        jobs.experiment_figure(log[0], input[0], params.relaxed, output.png)


rule experiment_act_ranges_figure:
    input:
        "results/tables/experiment/act_ranges_{bits}.csv",
    output:
        png=report(
            "results/figures/experiment/act_ranges_{bits}.png",
            caption="../report/act_ranges.rst",
            category="Experiment",
            subcategory="activation ranges",
        ),
        pdf="results/figures/experiment/act_ranges_{bits}.pdf",
    log:
        "logs/figure/experiment_act_ranges_{bits}.log",
    localrule: True
    params:
        kind="act_ranges",
    run:
        jobs.figure(log[0], params.kind, input[0], output.png)


# Where the run's time went: every job's benchmark file summed per rule, after everything `all` makes.
rule run_time_table:
    input:
        get_final_output(),
    output:
        csv="results/tables/run_time.csv",
        markdown="results/tables/run_time.md",
    log:
        "logs/run_time_table.log",
    localrule: True
    params:
        benchmarks="results/benchmarks",
    run:
        jobs.run_time_table(log[0], params.benchmarks, output.csv, output.markdown)
