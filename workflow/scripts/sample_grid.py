import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pcr.runtime import use_available_cpus

use_available_cpus()

from pcr.io import atomic_file
from pcr.pipelines import load_pipeline
from pcr.toy.evaluate import sample_grid
from pcr.toy.world import toy_prompts

pipe = load_pipeline(f"toy:{snakemake.input.model}")
p = snakemake.params
prompts = toy_prompts("eval_in", p.rows, p.seed, p.p_two)
grid = sample_grid(pipe, prompts, seeds=p.cols, seed=p.seed, steps=p.sample["steps"], guidance=p.sample["guidance"])
with atomic_file(snakemake.output.grid) as tmp:
    grid.save(tmp, format="PNG")
with atomic_file(snakemake.output.prompts) as tmp:
    tmp.write_text("".join(f"{i}\t{q.text}\n" for i, q in enumerate(prompts)))
