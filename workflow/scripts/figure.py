import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from pcr.report import draw_figure

draw_figure(snakemake.params.kind, snakemake.input[0], Path(snakemake.output.png).with_suffix(""))
