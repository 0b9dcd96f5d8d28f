import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pcr.runtime import use_available_cpus

use_available_cpus()

import json

from pcr.io import atomic_file
from pcr.pipelines import load_pipeline
from pcr.tokenizer import clip_tokenizer
from pcr.toy.clip import load_toy_clip
from pcr.toy.evaluate import evaluate_toy_models

pipe = load_pipeline(f"toy:{snakemake.input.model}")
clip, _ = load_toy_clip(snakemake.input.clip)
sample = snakemake.params.sample
result = evaluate_toy_models(pipe, clip, clip_tokenizer(), n=snakemake.params.n, seed=snakemake.params.seed,
                             p_two=snakemake.params.p_two, steps=sample["steps"], guidance=sample["guidance"])
with atomic_file(snakemake.output[0]) as tmp:
    tmp.write_text(json.dumps(result, indent=2))
