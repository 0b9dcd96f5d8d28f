rule calibrate_weights:
    input:
        unpack(lambda w: MODEL_INPUT),
        prompts="results/prompts/calibration.json",
    output:
        "results/calib/weights/{wkey}.safetensors",
    params:
        spec=MODEL_SPEC,
        quant=lambda w: weight_quant_config(w.wkey),
        calib_size=lambda w: weight_settings(*WEIGHTS[w.wkey]).get("calib_size", 0),
        compute=config["compute"],
    log:
        "logs/calibrate_weights/{wkey}.log",
    benchmark:
        "results/benchmarks/calibrate_weights/{wkey}.tsv"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    run:
        jobs.calibrate_weights(log[0], params.spec, MODEL_CONFIG, input.prompts, params.calib_size, params.quant,
                               params.compute, output[0])


rule calibrate:
    input:
        unpack(lambda w: MODEL_INPUT),
        prompts="results/prompts/calibration.json",
        weights=lambda w: f"results/calib/weights/{weight_key(w.variant, w.bits)}.safetensors",
    output:
        params="results/calib/{variant}/{bits}.safetensors",
        cost="results/calib/{variant}/{bits}.cost.json",
    params:
        spec=MODEL_SPEC,
        quant=lambda w: quant_config(w.variant, w.bits),
        calib_size=lambda w: VARIANTS[w.variant]["calib_size"],
        compute=config["compute"],
    log:
        "logs/calibrate/{variant}/{bits}.log",
    benchmark:
        "results/benchmarks/calibrate/{variant}/{bits}.tsv"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    run:
        jobs.calibrate(log[0], params.spec, MODEL_CONFIG, input.prompts, input.weights, params.calib_size,
                       params.quant, params.compute, output.params, output.cost)


rule act_ranges:
    input:
        fp_trajectory=lambda w: f"results/calib/{ABL['progressive']['variants'][0]}/{w.bits}.safetensors",
        quantized_trajectory=lambda w: f"results/calib/{ABL['progressive']['variants'][1]}/{w.bits}.safetensors",
    output:
        "results/tables/act_ranges_{bits}.csv",
    log:
        "logs/act_ranges/{bits}.log",
    localrule: True
    run:
        jobs.act_ranges(log[0], input.fp_trajectory, input.quantized_trajectory, output[0])
