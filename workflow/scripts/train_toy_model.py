import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pcr.runtime import use_available_cpus

use_available_cpus()

from pcr.toy.model import train_toy_model

cfg = snakemake.params.cfg
train_toy_model(snakemake.input.clip, snakemake.output[0], steps=cfg["steps"], batch_size=cfg["batch_size"],
                lr=cfg["lr"], seed=snakemake.params.seed, res=snakemake.params.res, p_two=snakemake.params.p_two,
                high_noise_bias=cfg["high_noise_bias"], attention_16=cfg["attention_16"])
