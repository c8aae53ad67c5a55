"""Expert and data parallelism on torch.distributed, for cases that run as a group of ranks.

A multi-rank case is launched by `torch.distributed.run` (see `launch.py`); each rank builds the whole
seeded model, keeps its share of the experts and trains on its share of the global batch:

- `group.py`: the layout (world, EP and expert-data-parallel groups) and the process groups, set up
  from the torchrun environment with a collective timeout, so a dead or hung rank ends the group;
- `comm.py`: every collective this package runs, timed and byte-counted per step without barriers,
  and the differentiable all-to-all;
- `expert.py`: the expert-parallel dispatch that `MoELayer` uses instead of its local one (counts
  exchanged first, tokens to their experts' ranks, local experts through the usual impls, back again);
- `data.py`: data parallelism: one bucketed gradient all-reduce before each optimizer step;
- `model.py`: turns a built model into this rank's part;
- `launcher.py`: the torchrun command for a case, and which rank failed when a group left no result;
- `measure.py`: what each rank measures and the one row rank 0 makes of the group's records.
"""
