rule prompts:
    input:
        prompt_source,
    output:
        "results/prompts/{pset}.json",
    log:
        "logs/prompts/{pset}.log",
    localrule: True
    params:
        spec=lambda w: prompt_spec(w.pset),
        seed=config["seed"],
        calibration=lambda w: None if w.pset == "calibration" else "results/prompts/calibration.json",
    run:
        jobs.prompts(log[0], params.spec["spec"], params.spec["n"], params.seed, params.calibration, output[0])
