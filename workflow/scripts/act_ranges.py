from pcr.runtime import start_step

start_step(snakemake.log[0])

import pandas as pd

from pcr.io import atomic_file
from pcr.quant import load_params
from pcr.quant.params import trajectory_ranges

rows = trajectory_ranges(load_params(snakemake.input.fp_trajectory), load_params(snakemake.input.quantized_trajectory))
with atomic_file(snakemake.output[0]) as tmp:
    pd.DataFrame(rows, columns=["layer", "step", "trajectory", "lo", "hi"]).to_csv(tmp, index=False)
