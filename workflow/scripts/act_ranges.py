from pcr.runtime import start_step

start_step(snakemake.log[0])

import pandas as pd

from pcr.io import atomic_file
from pcr.quant import load_params
from pcr.quant.params import act_range_rows

inputs = snakemake.input
rows = [{**row, "trajectory": label}
        for label, path in (("FP", inputs.fp_trajectory), ("quantized", inputs.quantized_trajectory))
        for row in act_range_rows(load_params(path))]
with atomic_file(snakemake.output[0]) as tmp:
    pd.DataFrame(rows, columns=["layer", "step", "trajectory", "lo", "hi"]).to_csv(tmp, index=False)
