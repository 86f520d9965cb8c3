"""One video across several devices: the DiT forward split by CFG branch and by video tokens
(Ulysses), and the VAE decode split by tiles, over ranks of torch.distributed (gloo on CPU, NCCL
on GPUs). Nothing here starts processes: every rank is a process that has already called
`init_process_group`; the serving layer places them (a Ray placement group).

Rank 0 (the leader) runs the Denoiser and the Decoder as usual, with parallel parts plugged in::

    groups = ParallelGroups.build(ParallelLayout.of(config.parallel), config.device)  # every rank
    # rank 0
    leader = Leader(groups)
    denoiser = Denoiser(config, components, backend=ParallelBackend(components.transformer, leader))
    decoder = Decoder(config, components, runner=ParallelUnitRunner(leader))
    ...
    leader.stop()
    # every other rank
    serve_follower(groups, transformer=components.transformer, decoder=Decoder(config, components),
                   lora=config.lora)

Modules: layout (who is where; the process groups and their timeouts), transformer (the hooks
that split one forward; why not diffusers' own enable_parallelism), messages (what rank 0 sends;
failures as ParallelError), backend (rank 0's DiTBackend), decode (the spread tile decode),
follower (the followers' loop), world (starting the ranks: the rendezvous on a port bound by 0,
`EngineLead` for rank 0, `run_follower`, `LocalRanks` for followers as local processes, which
`kino run --cfg-parallel/--ulysses` uses; serving/on_ray/parallel.py places them as Ray actors).
"""

from engines.parallel.backend import ParallelBackend
from engines.parallel.decode import ParallelUnitRunner
from engines.parallel.follower import FollowerStats, serve_follower
from engines.parallel.layout import DEFAULT_TIMEOUT, ParallelGroups, ParallelLayout
from engines.parallel.messages import Leader
from engines.parallel.transformer import ShardingHooks, parallelize

__all__ = ["DEFAULT_TIMEOUT", "FollowerStats", "Leader", "ParallelBackend", "ParallelGroups", "ParallelLayout",
           "ParallelUnitRunner", "ShardingHooks", "parallelize", "serve_follower"]
