"""The data plane: a request's latents from its prompt embedding to a signed MP4.

- `stages.py`: the contract between the dispatcher and the stages (`StageClient`, the typed denoise items);
- `denoise_loop.py` and `scheduler.py`: a Denoiser replica's step loop and the scheduler that picks each
  step's batch across requests;
- `rendering.py`: decode, watermark, mux and sign into the artifact store;
- `local_stages.py`: the stages in one process (`kino run`, tests), beside serving/on_ray/stages.py over Ray.
"""
