import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pcr.report import metrics_table, write_table

write_table(metrics_table(list(snakemake.input)), snakemake.output.csv, snakemake.output.markdown)
