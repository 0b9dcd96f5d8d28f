rule calibrate_weights:
    input:
        unpack(lambda w: MODEL_INPUT),
        prompts="results/prompts/calibration.json",
    output:
        "results/calib/weights/{wkey}.safetensors",
    log:
        "logs/calibrate_weights/{wkey}.log",
    benchmark:
        "results/benchmarks/calibrate_weights/{wkey}.tsv"
    params:
        spec=MODEL_SPEC,
        job=lambda w: PLAN.weight_job(w.wkey),
        compute=config["compute"],
    run:
        jobs.calibrate_weights(
            log[0],
            params.spec,
            MODEL_CONFIG,
            input.prompts,
            params.job["calib_size"],
            params.job["quant"],
            params.compute,
            output[0],
            params.job["scheduler"],
        )


rule calibrate:
    input:
        unpack(lambda w: MODEL_INPUT),
        prompts="results/prompts/calibration.json",
        weights=lambda w: f"results/calib/weights/{PLAN.weight_key(w.variant, w.bits)}.safetensors",
    output:
        params="results/calib/{variant}/{bits}.safetensors",
        cost="results/calib/{variant}/{bits}.cost.json",
    log:
        "logs/calibrate/{variant}/{bits}.log",
    benchmark:
        "results/benchmarks/calibrate/{variant}/{bits}.tsv"
    params:
        spec=MODEL_SPEC,
        quant=lambda w: PLAN.quant_config(w.variant, w.bits),
        calib_size=lambda w: PLAN.calib_size(w.variant),
        scheduler=lambda w: PLAN.scheduler(w.bits),
        compute=config["compute"],
    run:
        jobs.calibrate(
            log[0],
            params.spec,
            MODEL_CONFIG,
            input.prompts,
            input.weights,
            params.calib_size,
            params.quant,
            params.compute,
            output.params,
            output.cost,
            params.scheduler,
        )


# per-step activation ranges of a per-step calibration on the FP trajectory vs a progressive one on the
# quantized trajectory: the progressive ablation's (at its last bit setting) ...
rule act_ranges:
    input:
        fp_trajectory=lambda w: f"results/calib/{PLAN.act_range_variants(w.bits)[0]}/{w.bits}.safetensors",
        quantized_trajectory=lambda w: f"results/calib/{PLAN.act_range_variants(w.bits)[1]}/{w.bits}.safetensors",
    output:
        "results/tables/act_ranges_{bits}.csv",
    log:
        "logs/act_ranges/{bits}.log",
    localrule: True
    run:
        jobs.act_ranges(log[0], input.fp_trajectory, input.quantized_trajectory, output[0])


# ... and the experiment's (experiment.act_ranges), per regime and bit setting
rule experiment_act_ranges:
    input:
        fp_trajectory=lambda w: f"results/calib/{PLAN.experiment.act_range_variants()[0]}/{w.bits}.safetensors",
        quantized_trajectory=lambda w: f"results/calib/{PLAN.experiment.act_range_variants()[1]}/{w.bits}.safetensors",
    output:
        "results/tables/experiment/act_ranges_{bits}.csv",
    log:
        "logs/experiment_act_ranges/{bits}.log",
    localrule: True
    run:
        jobs.act_ranges(log[0], input.fp_trajectory, input.quantized_trajectory, output[0])
