# An image folder is tracked by its manifest, which pins each image's size and sha256 (the images are
# not outputs: Snakemake deletes a job's outputs before rerunning it, and a resumed generation keeps its
# finished images). A folder in this run's DAG that no longer holds what its manifest lists, or lost its
# manifest to a failed job, is generated again, and what reads it after it: see rerun_if_stale (common.smk).
SHARDS = config["sampling"]["shards"]

if SHARDS == 1:

    rule generate:
        input:
            unpack(lambda w: rerun_if_stale(manifest(w.variant, w.bits, w.pset), generation_inputs(w))),
        output:
            "results/images/{variant}/{bits}/{pset}/manifest.csv",
        log:
            "logs/generate/{variant}/{bits}/{pset}.log",
        benchmark:
            "results/benchmarks/generate/{variant}/{bits}/{pset}.tsv"
        params:
            sampling=generation_params,
            shard=(0, 1),
        run:
            jobs.generate(
                log[0],
                params.sampling,
                MODEL_CONFIG,
                input.prompts,
                input.get("params"),
                params.shard,
                config["compute"],
                output[0],
            )

else:

    rule generate_shard:
        input:
            unpack(
                lambda w: rerun_if_stale(
                    shard_manifest(images(w.variant, w.bits, w.pset), w.k, SHARDS), generation_inputs(w)
                )
            ),
        output:
            "results/images/{variant}/{bits}/{pset}/shards/{k}-of-%d/manifest.shard-{k}-of-%d.csv" % (SHARDS, SHARDS),
        log:
            "logs/generate/{variant}/{bits}/{pset}.shard-{k}.log",
        benchmark:
            "results/benchmarks/generate/{variant}/{bits}/{pset}.shard-{k}.tsv"
        params:
            sampling=generation_params,
            shard=lambda w: (int(w.k), SHARDS),
        run:
            jobs.generate(
                log[0],
                params.sampling,
                MODEL_CONFIG,
                input.prompts,
                input.get("params"),
                params.shard,
                config["compute"],
                output[0],
            )

    rule collect_shards:
        input:
            lambda w: rerun_if_stale(
                manifest(w.variant, w.bits, w.pset),
                [shard_manifest(images(w.variant, w.bits, w.pset), k, SHARDS) for k in range(SHARDS)],
            ),
        output:
            "results/images/{variant}/{bits}/{pset}/manifest.csv",
        log:
            "logs/collect_shards/{variant}/{bits}/{pset}.log",
        localrule: True
        run:
            jobs.collect_shards(log[0], list(input), output[0])
