import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json
from pathlib import Path

from pcr.report import sample_grid

inputs, p = snakemake.input, snakemake.params
folders = [Path(inputs.reference).parent] + [Path(f).parent for f in inputs.images]
prompts = json.loads(Path(inputs.prompts).read_text(encoding="utf-8"))["prompts"]
sample_grid(dict(zip(p.labels, folders, strict=True)), Path(snakemake.output.png).with_suffix(""),
            list(range(min(p.rows, len(prompts)))), prompts=prompts)
