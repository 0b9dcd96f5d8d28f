import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from pcr.bench.generation import collect_shards

collect_shards([Path(f).parent for f in snakemake.input], Path(snakemake.output[0]).parent)
