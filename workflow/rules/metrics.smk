rule metrics:
    input:
        unpack(metrics_inputs),
    output:
        "results/metrics/{variant}/{bits}/{pset}.json",
    log:
        "logs/metrics/{variant}/{bits}/{pset}.log",
    benchmark:
        "results/benchmarks/metrics/{variant}/{bits}/{pset}.tsv"
    params:
        run_info=run_info,
        settings=config["metrics"],
        seed=config["seed"],
        paired=lambda w: w.variant != FLOOR,
    run:
        jobs.metrics(log[0], config["compute"], output[0], **input, **params)
