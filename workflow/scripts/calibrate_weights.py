from pcr.runtime import start_step

start_step(snakemake.log[0])

from pcr.bench import read_prompt_set
from pcr.calibrate import calibrate_weights_only
from pcr.pipelines import load_pipeline
from pcr.quant import save_params

p = snakemake.params
prompts = read_prompt_set(snakemake.input.prompts, p.calib_size or None)
pipe = load_pipeline(p.spec, device=snakemake.config["compute"]["device"], dtype=p.dtype)
save_params(snakemake.output[0], calibrate_weights_only(pipe, list(prompts), p.quant, model=p.spec))
