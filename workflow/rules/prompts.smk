def prompt_spec(pset):
    p = config["prompts"]
    return p["calibration"] if pset == "calibration" else p["evaluation"][pset]


def prompt_source(wildcards):
    """The prompt file a real set is read from, so a missing one is named before anything runs."""
    kind, _, path = prompt_spec(wildcards.pset)["spec"].partition(":")
    inputs = [path] if kind != "toy" else []
    if wildcards.pset != "calibration":
        inputs.append("results/prompts/calibration.json")  # evaluation sets are checked against it
    return inputs


rule prompts:
    input:
        prompt_source,
    output:
        "results/prompts/{pset}.json",
    params:
        spec=lambda w: prompt_spec(w.pset),
        seed=config["seed"],
        calibration=lambda w: None if w.pset == "calibration" else "results/prompts/calibration.json",
    log:
        "logs/prompts/{pset}.log",
    localrule: True
    script:
        "../scripts/prompts.py"
