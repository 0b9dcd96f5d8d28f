import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pcr.bench.prompts import check_disjoint, load_prompts, read_prompt_set, write_prompt_set

spec, calibration = snakemake.params.spec, snakemake.params.calibration
prompts = load_prompts(spec["spec"], n=spec["n"], seed=snakemake.params.seed)
if calibration:
    check_disjoint(read_prompt_set(calibration), prompts)
write_prompt_set(snakemake.output[0], prompts)
