"""Stage 3, shards -> training batches.

`dataset` (`ShardDataset`: samples with labels from the stored loss spans), `corpora`
(named, weighted corpora and each epoch's mix), `heldout` (the held-out split and the eval
set), `sampler` (the deterministic, rank-sharded, resumable order), `permutation` (the seeded
bijection that order is drawn from, a batch at a time), `collate`
(padding-free and padded batches, and the per-batch counts they carry) and `run_data`
(all of it assembled from the run's data flags).
"""
