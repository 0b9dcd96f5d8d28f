from pcr.runtime import start_step

start_step(snakemake.log[0])

import json
from pathlib import Path

from pcr.bench import MetricsConfig, evaluate, read_prompt_set, write_metrics
from pcr.runtime import resolve_device

p, inputs = snakemake.params, snakemake.input
settings = {"device": resolve_device(snakemake.config["compute"]["device"]), **p.metrics, "seed": p.seed}
if "clip" in inputs.keys():  # the toy world: its CLIP is the feature network and the CLIP scorer
    config = MetricsConfig.toy(inputs.clip, **settings)
else:
    config = MetricsConfig.from_dict(settings)
result = evaluate(Path(inputs.images).parent, Path(inputs.reference).parent, read_prompt_set(inputs.prompts), config,
                  paired=p.paired)
cost = json.loads(Path(inputs.cost).read_text()) if "cost" in inputs.keys() else {
    "weight_bits": 32, "avg_act_bits": 32.0, "bitops_ratio": 1.0, "note": "full precision"}
write_metrics(snakemake.output[0], {**result, "cost": cost, "run": p.run})
