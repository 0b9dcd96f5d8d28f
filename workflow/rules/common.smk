from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")


def get_final_output():
    """What `snakemake all` builds: the trained toy models' checks and sample grid."""
    return [
        "results/toy/evaluator.json",
        "results/toy/sample_grid.png",
    ]
