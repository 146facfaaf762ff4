"""The demo's data generators, apart from the shard format they feed (`python -m sharding.demo`).

- `sharding.demo.world`: the compositional action videos (`python -m sharding.demo OUT ...`).
- `sharding.demo.images`: still images of coloured shapes, the stand-in for SUN397
  (`python -m sharding.demo.images --out DIR`).
- `sharding.demo.vectors`: the maintainer's one-off extraction of `sharding/data/demo_vectors.vec`
  from spaCy's md table (`python -m sharding.demo.vectors`).
"""
