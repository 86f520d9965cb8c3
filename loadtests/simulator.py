"""A discrete-event simulator of a Kino cluster, fed with measured stage and step times.

It predicts throughput, p95 latency and replica counts under queue-depth autoscaling for
clusters far bigger than this machine (10 to 1000 GPUs). The model, and its assumptions:

- Jobs arrive as a Poisson process at `rate` per second (open loop) and go encode -> denoise
  -> decode. Encoders and decoders are FCFS servers, one job at a time per replica.
- A denoiser replica runs all its admitted jobs in step-level batches: with b jobs admitted
  (b <= max_batch), one step takes step_time(b) = step_1 * (1 + alpha * (b - 1)), so each job
  advances one step per step_time(b) (processor sharing). alpha is the marginal cost of a row:
  ~1 on a CPU whose forward is already saturated at batch 1, ~0.1-0.3 on a GPU (measured, or an
  assumption: say which). Jobs route to the denoiser replica with the fewest jobs.
- Every `autoscale_period` seconds the denoise stage wants the replicas Kino's own policy asks for
  (`serving.control_plane.autoscaling.denoise_replicas`: hold what runs, drain the backlog within `drain_seconds`
  at the measured step time), and the encode and decode stages ceil(jobs in the stage / target per
  replica), within [1, its max]; an added replica serves after `cold_start` seconds (loading
  weights); an idle surplus replica is removed at once.
- A GPU budget is split between the stages by their share of the work per job; each replica is
  one GPU, but a denoiser replica spread over ``ranks`` GPUs (model.parallel) takes that many.
  Networking, the job store and the front door are assumed never to be the bottleneck.

Per-step latency against ranks (`ParallelStep`): a replica over cfg x ulysses GPUs runs the step
as Kino splits it (engines/parallel/transformer.py): the CFG rows over cfg groups, each row's
video tokens over ulysses ranks (a `redundant` share of the step, the audio stream and the text
side, repeats on every rank), then collectives that are not overlapped with compute:
eight all-to-alls per block under Ulysses, six of a video-sized tensor (q, k, v and the output of
the video self-attention; k and v of the video-to-audio attention) and two of the small audio
queries and output of the latter, one all-gather of the video output
over the Ulysses ranks and one over the CFG groups, and the broadcast of the step's inputs from
rank 0. Each collective costs a launch latency plus the bytes each rank sends over its slowest
link: NVLink inside a node, the NIC between nodes (`Network`; the defaults are an H100 node's
nominal figures derated, assumptions, not measurements). The step time at one rank is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

from serving.control_plane.autoscaling import DenoiseLoad, denoise_replicas


@dataclass(frozen=True)
class Network:
    """The links of one engine's GPUs. Defaults: an 8 x H100 node, nominal figures derated (assumed)."""

    intra_gbytes: float = 300.0  # per-GPU all-to-all bandwidth in a node, GB/s (NVLink 4: 450 per direction)
    inter_gbytes: float = 40.0  # per-GPU bandwidth between nodes, GB/s (one 400 Gb/s NIC per GPU)
    latency_s: float = 20e-6  # launch and synchronisation of one collective
    gpus_per_node: int = 8

    def seconds(self, bytes_sent: float, group: int, span: int) -> float:
        """One collective in which each rank sends `bytes_sent`; its group's ranks lie `span` engine ranks
        apart (1: neighbours), so the group leaves the node when group x span > gpus_per_node."""
        if group <= 1:
            return 0.0
        on_node_members = min(group, max(1, self.gpus_per_node // span))
        off_node = (group - on_node_members) / (group - 1)  # share of a rank's peers on other nodes
        on_node = bytes_sent * (1.0 - off_node) / (self.intra_gbytes * 1e9)
        across = bytes_sent * off_node / (self.inter_gbytes * 1e9)
        return self.latency_s + max(on_node, across)  # NVLink and the NICs move data at the same time


@dataclass(frozen=True)
class ParallelStep:
    """One DiT step of one request over cfg x ulysses GPUs (see the module docstring)."""

    step_1: float  # measured: the step on one GPU at batch 1 (both CFG rows)
    video_tokens: int
    hidden: int  # width of the video stream (attention inner dim)
    layers: int
    rows: int = 2  # CFG: unconditional and conditional
    bytes_per_value: int = 2  # bfloat16 activations
    latent_channels: int = 128  # the video output gathered after proj_out, and the inputs rank 0 sends (fp32)
    redundant: float = 0.05  # share of step_1 every Ulysses rank repeats (audio stream, text side)
    network: Network = field(default_factory=Network)

    def parts(self, cfg: int, ulysses: int) -> dict[str, float]:
        """Seconds of compute, all-to-all and the gathers and broadcast of one step."""
        net, rows = self.network, math.ceil(self.rows / cfg)
        compute = self.step_1 * rows / self.rows * (self.redundant + (1.0 - self.redundant) / ulysses)
        shard = rows * self.video_tokens / ulysses * self.hidden * self.bytes_per_value
        # Per block: six video-sized all-to-alls, and two for the audio queries and output (their latency).
        a2a = self.layers * (6 * net.seconds(shard * (ulysses - 1) / ulysses, ulysses, 1)
                             + 2 * net.seconds(0, ulysses, 1))
        out = rows * self.video_tokens / ulysses * self.latent_channels * 4
        gathers = net.seconds(out * (ulysses - 1), ulysses, 1) + net.seconds(out * ulysses * (cfg - 1), cfg, ulysses)
        inputs = self.rows * self.video_tokens * self.latent_channels * 4
        broadcast = net.seconds(inputs, cfg * ulysses, 1) if cfg * ulysses > 1 else 0.0
        return {"compute": compute, "all_to_all": a2a, "gathers": gathers + broadcast}

    def seconds(self, cfg: int, ulysses: int) -> float:
        return sum(self.parts(cfg, ulysses).values())


@dataclass(frozen=True)
class Timings:
    """Per-job service times in seconds (measured on the target hardware, or stated assumptions)."""

    encode: float
    step_1: float  # one denoising step of one request at batch 1 (on the replica's `ranks` GPUs)
    steps: int
    decode: float
    alpha: float  # marginal cost of one more request in a step, relative to step_1
    max_batch: int = 8
    ranks: int = 1  # GPUs one denoiser replica spans (model.parallel: cfg x ulysses)

    def step_time(self, b: int) -> float:
        return self.step_1 * (1 + self.alpha * (max(b, 1) - 1))

    def _gpu_seconds(self) -> dict[str, float]:
        """GPU-seconds each stage spends on one job (at full batches)."""
        den = self.steps * self.step_time(self.max_batch) / self.max_batch * self.ranks
        return {"encode": self.encode, "denoise": den, "decode": self.decode}

    def work_share(self) -> dict[str, float]:
        w = self._gpu_seconds()
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def replicas(self, gpus: int) -> dict[str, int]:
        """Replicas per stage a budget holds, split by work share (a denoiser takes `ranks` GPUs)."""
        share = self.work_share()
        per = {"encode": 1, "denoise": self.ranks, "decode": 1}
        return {s: max(1, math.floor(gpus * share[s] / per[s])) for s in share}

    def capacity(self, gpus: int) -> float:
        """Jobs per second a budget sustains at full batches, when split by work share."""
        per_job = {"encode": self.encode, "denoise": self.steps * self.step_time(self.max_batch) / self.max_batch,
                   "decode": self.decode}
        return min(n / per_job[s] for s, n in self.replicas(gpus).items())


@dataclass
class Scenario:
    gpus: int
    rate: float
    timings: Timings
    duration: float = 1800.0
    warmup: float = 300.0
    cold_start: float = 60.0
    autoscale_period: float = 10.0
    drain_seconds: float = 30.0  # the denoise policy's target (autoscaling.drain_seconds)
    targets: dict[str, float] = field(default_factory=lambda: {"encode": 2.0, "decode": 2.0})  # jobs per replica
    seed: int = 0

    def max_replicas(self) -> dict[str, int]:
        return self.timings.replicas(self.gpus)


@dataclass
class Result:
    gpus: int
    rate: float
    completed: int
    throughput: float
    p50: float
    p95: float
    replicas: dict[str, float]  # time-averaged
    max_replicas: dict[str, int]


class _Sim:
    def __init__(self, sc: Scenario) -> None:
        self.sc, self.t = sc, 0.0
        self.events: list = []
        self.seq = itertools.count()
        self.rng = random.Random(sc.seed)
        self.max = sc.max_replicas()
        # Live replicas per stage (start with one each, warm), plus ones starting up.
        self.fcfs = {s: {"busy": 0, "replicas": 1, "queue": []} for s in ("encode", "decode")}
        self.denoisers: list[dict] = [self._new_denoiser()]
        self.pending = {"encode": 0, "denoise": 0, "decode": 0}
        self.latencies: list[float] = []
        self.replica_time = {"encode": 0.0, "denoise": 0.0, "decode": 0.0}
        self.last_t = 0.0

    def _new_denoiser(self) -> dict:
        return {"jobs": {}, "waiting": [], "last": 0.0, "version": 0}

    def push(self, t: float, kind: str, data=None) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    def account(self) -> None:
        dt = self.t - self.last_t
        if self.t > self.sc.warmup:
            for s in ("encode", "decode"):
                self.replica_time[s] += dt * self.fcfs[s]["replicas"]
            self.replica_time["denoise"] += dt * len(self.denoisers)
        self.last_t = self.t

    # -- FCFS stages ----------------------------------------------------------------------
    def fcfs_arrive(self, stage: str, job: dict) -> None:
        st = self.fcfs[stage]
        if st["busy"] < st["replicas"]:
            st["busy"] += 1
            self.push(self.t + getattr(self.sc.timings, stage), f"{stage}_done", job)
        else:
            st["queue"].append(job)

    def fcfs_done(self, stage: str, job: dict) -> None:
        st = self.fcfs[stage]
        st["busy"] -= 1
        if st["queue"] and st["busy"] < st["replicas"]:
            st["busy"] += 1
            self.push(self.t + getattr(self.sc.timings, stage), f"{stage}_done", st["queue"].pop(0))

    # -- denoisers: processor sharing over step-level batches ----------------------------------
    def _advance(self, d: dict) -> None:
        b = len(d["jobs"])
        if b:
            per_job_rate = 1.0 / self.sc.timings.step_time(b)  # steps per second each job makes
            for job in d["jobs"]:
                d["jobs"][job] -= (self.t - d["last"]) * per_job_rate
        d["last"] = self.t

    def _schedule_next(self, d: dict) -> None:
        d["version"] += 1
        if d["jobs"]:
            b = len(d["jobs"])
            job, left = min(d["jobs"].items(), key=lambda kv: kv[1])
            self.push(self.t + max(left, 0.0) * self.sc.timings.step_time(b), "denoise_done",
                      (id(d), d["version"], job))

    def denoise_arrive(self, job: dict) -> None:
        d = min(self.denoisers, key=lambda x: len(x["jobs"]) + len(x["waiting"]))
        self._advance(d)
        if len(d["jobs"]) < self.sc.timings.max_batch:
            d["jobs"][job["id"]] = float(self.sc.timings.steps)
            job["denoiser"] = d
        else:
            d["waiting"].append(job)
        self._schedule_next(d)

    def denoise_done(self, data) -> dict | None:
        did, version, job_id = data
        d = next((x for x in self.denoisers if id(x) == did), None)
        if d is None or version != d["version"]:
            return None  # stale event
        self._advance(d)
        d["jobs"].pop(job_id, None)
        if d["waiting"]:
            nxt = d["waiting"].pop(0)
            d["jobs"][nxt["id"]] = float(self.sc.timings.steps)
        self._schedule_next(d)
        return self.jobs.pop(job_id)

    # -- autoscaling ---------------------------------------------------------------------------
    def autoscale(self) -> None:
        sc = self.sc
        in_stage = {s: self.fcfs[s]["busy"] + len(self.fcfs[s]["queue"]) for s in ("encode", "decode")}
        in_stage["denoise"] = sum(len(d["jobs"]) + len(d["waiting"]) for d in self.denoisers)
        current = {"encode": self.fcfs["encode"]["replicas"], "decode": self.fcfs["decode"]["replicas"],
                   "denoise": len(self.denoisers)}
        t = sc.timings
        waiting = sum(len(d["waiting"]) for d in self.denoisers)
        denoise_load = DenoiseLoad(queued=waiting, in_progress=in_stage["denoise"] - waiting, per_replica=t.max_batch,
                                   steps_per_job=t.steps, request_step_seconds=t.step_time(t.max_batch) / t.max_batch)
        for s, load in in_stage.items():
            if s == "denoise":
                want = denoise_replicas(denoise_load, min_replicas=1, max_replicas=self.max[s],
                                        drain_seconds=sc.drain_seconds)
            else:
                want = min(self.max[s], max(1, math.ceil(load / sc.targets[s])))
            have = current[s] + self.pending[s]
            if want > have:
                self.pending[s] += want - have
                for _ in range(want - have):
                    self.push(self.t + sc.cold_start, "replica_up", s)
            elif want < current[s]:
                self._scale_down(s, current[s] - want)
        self.push(self.t + sc.autoscale_period, "autoscale")

    def _scale_down(self, stage: str, n: int) -> None:
        if stage == "denoise":
            idle = [d for d in self.denoisers if not d["jobs"] and not d["waiting"]]
            for d in idle[: min(n, len(self.denoisers) - 1)]:
                self.denoisers.remove(d)
        else:
            st = self.fcfs[stage]
            st["replicas"] = max(1, st["replicas"] - min(n, st["replicas"] - st["busy"]))

    def replica_up(self, stage: str) -> None:
        self.pending[stage] -= 1
        if stage == "denoise":
            d = self._new_denoiser()
            d["last"] = self.t
            self.denoisers.append(d)
            # Rebalance: waiting jobs of other replicas move to the new one.
            for other in self.denoisers:
                while other["waiting"] and len(d["jobs"]) < self.sc.timings.max_batch:
                    job = other["waiting"].pop(0)
                    d["jobs"][job["id"]] = float(self.sc.timings.steps)
            self._schedule_next(d)
        else:
            st = self.fcfs[stage]
            st["replicas"] += 1
            if st["queue"]:
                st["busy"] += 1
                self.push(self.t + getattr(self.sc.timings, stage), f"{stage}_done", st["queue"].pop(0))

    def run(self) -> Result:
        sc = self.sc
        self.jobs: dict[int, dict] = {}
        ids = itertools.count()
        self.push(self.rng.expovariate(sc.rate), "arrive")
        self.push(sc.autoscale_period, "autoscale")
        while self.events:
            t, _, kind, data = heapq.heappop(self.events)
            if t > sc.duration:
                break
            self.t = t
            self.account()
            if kind == "arrive":
                job = {"id": next(ids), "start": t}
                self.jobs[job["id"]] = job
                self.fcfs_arrive("encode", job)
                self.push(t + self.rng.expovariate(sc.rate), "arrive")
            elif kind == "encode_done":
                self.fcfs_done("encode", data)
                self.denoise_arrive(data)
            elif kind == "denoise_done":
                job = self.denoise_done(data)
                if job is not None:
                    self.fcfs_arrive("decode", job)
            elif kind == "decode_done":
                self.fcfs_done("decode", data)
                if data["start"] >= sc.warmup:
                    self.latencies.append(self.t - data["start"])
            elif kind == "autoscale":
                self.autoscale()
            elif kind == "replica_up":
                self.replica_up(data)
        span = sc.duration - sc.warmup
        lat = sorted(self.latencies)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
        return Result(gpus=sc.gpus, rate=sc.rate, completed=len(lat), throughput=len(lat) / span, p50=pick(0.5),
                      p95=pick(0.95), replicas={s: v / span for s, v in self.replica_time.items()},
                      max_replicas=self.max)


def simulate(scenario: Scenario) -> Result:
    return _Sim(scenario).run()


LAYOUTS = ((1, 1), (2, 1), (1, 2), (2, 2), (1, 4), (2, 4), (1, 8), (2, 8))  # (cfg, ulysses) Kino accepts


def _cluster_row(g: int, timings: Timings, rate: float, args: argparse.Namespace) -> str:
    r = simulate(Scenario(gpus=g, rate=rate, timings=timings, cold_start=args.cold_start, duration=args.duration))
    return (f"{rate:.2f} | {r.throughput:.2f} | {r.p50:.1f} | {r.p95:.1f} | "
            f"{r.replicas['encode']:.1f} / {r.max_replicas['encode']} | "
            f"{r.replicas['denoise']:.1f} / {r.max_replicas['denoise']} | "
            f"{r.replicas['decode']:.1f} / {r.max_replicas['decode']} |")


def ranks_tables(args: argparse.Namespace, base: Timings, model: ParallelStep) -> None:
    """Per-step latency of every layout, then each layout's cluster at every budget and one arrival rate."""
    one = model.seconds(1, 1)
    print("| cfg x ulysses | GPUs | step s | compute s | all-to-all s | gathers s | speed-up | efficiency |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for cfg, u in LAYOUTS:
        parts, t = model.parts(cfg, u), model.seconds(cfg, u)
        print(f"| {cfg} x {u} | {cfg * u} | {t:.3f} | {parts['compute']:.3f} | {parts['all_to_all']:.3f} | "
              f"{parts['gathers']:.4f} | {one / t:.2f}x | {one / t / (cfg * u):.0%} |", flush=True)
    print()
    print("| GPUs | cfg x ulysses | arrivals/s | throughput/s | p50 s | p95 s | encoders | denoisers | decoders |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for g in (int(x) for x in args.gpus.split(",") if x):  # --gpus "": the step table only
        rate = args.load * base.capacity(g)  # the same arrivals for every layout: 80 % of what 1-GPU replicas hold
        for cfg, u in LAYOUTS:
            timings = dataclasses.replace(base, step_1=model.seconds(cfg, u), ranks=cfg * u)
            if cfg * u > g * timings.work_share()["denoise"]:
                continue  # not one replica of this size fits the denoise share of the budget
            print(f"| {g} | {cfg} x {u} | {_cluster_row(g, timings, rate, args)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encode", type=float, required=True, help="seconds to encode one prompt")
    ap.add_argument("--step", type=float, required=True, help="seconds of one denoising step at batch 1 on one GPU")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--decode", type=float, required=True, help="seconds to decode and mux one video")
    ap.add_argument("--alpha", type=float, required=True, help="marginal cost of one more request in a step")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--gpus", default="10,100,1000")
    ap.add_argument("--load", type=float, default=0.8, help="arrival rate as a fraction of the budget's capacity")
    ap.add_argument("--cold-start", type=float, default=60.0)
    ap.add_argument("--duration", type=float, default=1800.0)
    g = ap.add_argument_group("one video over several GPUs (model.parallel; see ParallelStep)")
    g.add_argument("--cfg-parallel", type=int, choices=(1, 2), default=1, help="CFG groups per denoiser replica")
    g.add_argument("--ulysses", type=int, choices=range(1, 9), default=1, metavar="1..8",
                   help="Ulysses ranks per CFG group")
    g.add_argument("--ranks-table", action="store_true",
                   help="per-step latency of every cfg x ulysses layout, then each layout's cluster at every budget")
    g.add_argument("--video-tokens", type=int, help="video tokens per request (needed with ranks > 1)")
    g.add_argument("--hidden", type=int, default=4096, help="video stream width (LTX-2: 4096)")
    g.add_argument("--layers", type=int, default=48, help="transformer blocks (LTX-2: 48)")
    g.add_argument("--redundant", type=float, default=0.05, help="share of a step every Ulysses rank repeats")
    g.add_argument("--intra-gbytes", type=float, default=300.0, help="per-GPU bandwidth in a node, GB/s")
    g.add_argument("--inter-gbytes", type=float, default=40.0, help="per-GPU bandwidth between nodes, GB/s")
    g.add_argument("--gpus-per-node", type=int, default=8)
    args = ap.parse_args()
    base = Timings(args.encode, args.step, args.steps, args.decode, args.alpha, args.max_batch)
    spread = args.ranks_table or args.cfg_parallel * args.ulysses > 1
    if spread and not args.video_tokens:
        ap.error("--video-tokens is needed to cost the collectives of a replica over several GPUs")
    model = ParallelStep(args.step, args.video_tokens or 0, args.hidden, args.layers, redundant=args.redundant,
                         network=Network(args.intra_gbytes, args.inter_gbytes, gpus_per_node=args.gpus_per_node))
    if args.ranks_table:
        ranks_tables(args, base, model)
        return
    timings = dataclasses.replace(base, step_1=model.seconds(args.cfg_parallel, args.ulysses),
                                  ranks=args.cfg_parallel * args.ulysses) if spread else base
    print("| GPUs | arrivals/s | throughput/s | p50 s | p95 s | encoders | denoisers | decoders |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (int(x) for x in args.gpus.split(",")):
        print(f"| {n} | {_cluster_row(n, timings, args.load * timings.capacity(n), args)}", flush=True)


if __name__ == "__main__":
    main()
