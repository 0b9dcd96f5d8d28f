def metrics_inputs(wildcards):
    inputs = {
        "images": f"{images(wildcards.variant, wildcards.bits, wildcards.pset)}/manifest.csv",
        "reference": f"{images(FP, FP_BITS, wildcards.pset)}/manifest.csv",
        "prompts": f"results/prompts/{wildcards.pset}.json",
    }
    if wildcards.variant != FLOOR:
        inputs["cost"] = f"results/calib/{wildcards.variant}/{wildcards.bits}.cost.json"
    if TOY:
        inputs["clip"] = "results/toy/clip"
    return inputs


def run_info(wildcards):
    """The run block of a metrics file: what tables and figures group and label it by."""
    spec = prompt_spec(wildcards.pset)["spec"]
    if wildcards.variant == FLOOR:
        return {"variant": FLOOR, "label": "FP (other seeds)", "method": "fp", "bits": "FP", "weight_bits": 32,
                "act_bits": 32, "prompt_set": wildcards.pset, "prompt_spec": spec, "knobs": {}}
    weight, act = parse_bits(wildcards.bits)
    return {"variant": wildcards.variant, "label": VARIANTS[wildcards.variant]["label"],
            "method": VARIANTS[wildcards.variant]["quant"]["method"], "bits": wildcards.bits, "weight_bits": weight,
            "act_bits": act, "prompt_set": wildcards.pset, "prompt_spec": spec,
            "knobs": knobs(wildcards.variant, wildcards.bits)}


rule metrics:
    input:
        unpack(metrics_inputs),
    output:
        "results/metrics/{variant}/{bits}/{pset}.json",
    params:
        run=run_info,
        metrics=config["metrics"],
        seed=config["seed"],
        paired=lambda w: w.variant != FLOOR,
    log:
        "logs/metrics/{variant}/{bits}/{pset}.log",
    benchmark:
        "results/benchmarks/metrics/{variant}/{bits}/{pset}.tsv"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    script:
        "../scripts/metrics.py"
