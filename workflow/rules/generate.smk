SHARDS = config["sampling"]["shards"]

if SHARDS == 1:

    rule generate:
        input:
            unpack(generation_inputs),
        output:
            "results/images/{variant}/{bits}/{pset}/manifest.csv",
        params:
            sampling=generation_params,
            shard=(0, 1),
        log:
            "logs/generate/{variant}/{bits}/{pset}.log",
        benchmark:
            "results/benchmarks/generate/{variant}/{bits}/{pset}.tsv"
        threads: config["resources"]["threads"]
        resources:
            **model_resources(),
        run:
            jobs.generate(log[0], params.sampling, MODEL_CONFIG, input.prompts, input.get("params"), params.shard,
                          config["compute"], output[0])

else:

    rule generate_shard:
        input:
            unpack(generation_inputs),
        output:
            "results/images/{variant}/{bits}/{pset}/shards/{k}-of-%d/manifest.shard-{k}-of-%d.csv" % (SHARDS, SHARDS),
        params:
            sampling=generation_params,
            shard=lambda w: (int(w.k), SHARDS),
        log:
            "logs/generate/{variant}/{bits}/{pset}.shard-{k}.log",
        benchmark:
            "results/benchmarks/generate/{variant}/{bits}/{pset}.shard-{k}.tsv"
        threads: config["resources"]["threads"]
        resources:
            **model_resources(),
        run:
            jobs.generate(log[0], params.sampling, MODEL_CONFIG, input.prompts, input.get("params"), params.shard,
                          config["compute"], output[0])

    rule collect_shards:
        input:
            expand("results/images/{{variant}}/{{bits}}/{{pset}}/shards/{k}-of-{n}/manifest.shard-{k}-of-{n}.csv",
                   k=range(SHARDS), n=SHARDS),
        output:
            "results/images/{variant}/{bits}/{pset}/manifest.csv",
        log:
            "logs/collect_shards/{variant}/{bits}/{pset}.log",
        localrule: True
        run:
            jobs.collect_shards(log[0], list(input), output[0])
