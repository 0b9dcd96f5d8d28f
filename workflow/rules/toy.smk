rule toy_clip:
    output:
        directory("results/toy/clip"),
    log:
        "logs/toy_clip.log",
    benchmark:
        "results/benchmarks/toy_clip.tsv"
    params:
        cfg=config["toy"]["clip"],
        seed=config["seed"],
        res=config["toy"]["resolution"],
        p_two=config["toy"]["p_two_objects"],
    run:
        jobs.train_toy_clip(log[0], output[0], params.cfg, params.seed, params.res, params.p_two)


rule toy_model:
    input:
        clip="results/toy/clip",
    output:
        directory("results/toy/model"),
    log:
        "logs/toy_model.log",
    benchmark:
        "results/benchmarks/toy_model.tsv"
    params:
        cfg=config["toy"]["model"],
        seed=config["seed"],
        res=config["toy"]["resolution"],
        p_two=config["toy"]["p_two_objects"],
    run:
        jobs.train_toy_model(log[0], input.clip, output[0], params.cfg, params.seed, params.res, params.p_two)


rule toy_evaluator:
    input:
        clip="results/toy/clip",
        model="results/toy/model",
    output:
        "results/toy/evaluator.json",
    log:
        "logs/toy_evaluator.log",
    benchmark:
        "results/benchmarks/toy_evaluator.tsv"
    params:
        sample=PLAN.toy_sampling,
        n=config["toy"]["evaluate"]["prompts"],
        seed=config["seed"],
        p_two=config["toy"]["p_two_objects"],
    run:
        jobs.evaluate_toy(
            log[0], input.model, input.clip, output[0], params.sample, params.n, params.seed, params.p_two
        )


rule toy_sample_grid:
    input:
        model="results/toy/model",
    output:
        grid=report(
            "results/toy/sample_grid.png",
            caption="../report/sample_grid.rst",
            category="Toy world",
        ),
        prompts="results/toy/sample_grid.txt",
    log:
        "logs/toy_sample_grid.log",
    benchmark:
        "results/benchmarks/toy_sample_grid.tsv"
    params:
        sample=PLAN.toy_sampling,
        rows=config["toy"]["evaluate"]["grid_prompts"],
        cols=config["toy"]["evaluate"]["grid_seeds"],
        seed=config["seed"],
        res=config["toy"]["resolution"],
        p_two=config["toy"]["p_two_objects"],
    run:
        jobs.toy_sample_grid(
            log[0],
            input.model,
            output.grid,
            output.prompts,
            params.sample,
            params.rows,
            params.cols,
            params.seed,
            params.p_two,
        )
