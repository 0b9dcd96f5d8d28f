from pcr.runtime import start_step

start_step(snakemake.log[0])

import json

from pcr.bench import cost_report, read_prompt_set
from pcr.calibrate import calibrate
from pcr.io import atomic_file
from pcr.pipelines import load_pipeline
from pcr.quant import load_params, save_params

p, out = snakemake.params, snakemake.output
prompts = read_prompt_set(snakemake.input.prompts, p.calib_size)
pipe = load_pipeline(p.spec, device=snakemake.config["compute"]["device"], dtype=p.dtype)
params = calibrate(pipe, list(prompts), p.quant, model=p.spec, weights=load_params(snakemake.input.weights))
params.info["prompt_set"] = prompts.name
save_params(out.params, params)
with atomic_file(out.cost) as tmp:
    tmp.write_text(json.dumps(cost_report(pipe.unet, params.config, params.act_bits), indent=2))
