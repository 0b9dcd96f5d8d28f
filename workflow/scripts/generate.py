from pcr.runtime import start_step

start_step(snakemake.log[0])

import hashlib
from pathlib import Path

import pcr
from pcr.bench import generate, read_prompt_set
from pcr.pipelines import load_pipeline
from pcr.quant import load_params

s, inputs = snakemake.params.sampling, snakemake.input
prompts = read_prompt_set(inputs.prompts)
pipe = load_pipeline(s["spec"], device=snakemake.config["compute"]["device"], dtype=s["dtype"])
info = {"model": s["spec"], "prompt_set": prompts.name, "quant_config_hash": None}
if "params" in inputs.keys():
    params = load_params(inputs.params)
    info.update(quant_config_hash=params.config.digest(),
                params_sha256=hashlib.sha256(Path(inputs.params).read_bytes()).hexdigest()[:16])
    pcr.quantize(pipe, params)
generate(pipe, list(prompts), Path(snakemake.output[0]).parent, seed=s["seed"], batch_size=s["batch_size"],
         shard=tuple(snakemake.params.shard), num_inference_steps=s["steps"], guidance_scale=s["guidance"],
         height=s["height"], width=s["width"], info=info, replace_stale=True)
