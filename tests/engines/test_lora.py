"""Per-request LoRA adapters (engines/lora/) on the tiny preset's DiT (random weights).

The reference is independent of engines/lora: diffusers' own ``LTX2Pipeline.load_lora_weights`` (peft
underneath), ``set_adapters`` with the request's scales, ``fuse_lora`` into the weights, then the plain forward
of one request alone. A mixed batch through `BatchedLora` must give each row what its request gets alone
from those merged weights, within 1e-4 (observed at most 1e-6 on outputs of magnitude ~1.5: float32 rounding
of merged vs. factored products, and of one row alone vs. in a batch).

The adapters are written the way diffusers writes them (``save_lora_weights`` with peft's config as metadata),
by tests/engines/lora_cases.py: A on the video attention and feed-forward Linears, B (rank and alpha patterns)
on the audio streams, the cross-modal attentions, the video feed-forward and the video timestep embedding's
Linear, whose input is the per-token timesteps flattened to [rows * tokens] (the rows rule for flattened inputs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engines.backends.onnx_export import example_inputs
from engines.config import LoraConfig, preset
from engines.dit_backend import DiTInputs, EagerBackend
from engines.errors import AdapterError, ConfigError, InvalidParameter, UnknownAdapter
from engines.lora import AdapterBank, AdapterUse, BatchedLora, lora_rows, read_adapter, request_rows
from engines.model_loader import load_components
from engines.runtime import configure_threads
from tests.engines.lora_cases import A_TARGETS, B_TARGETS, merged_reference, random_pairs, write_adapters

TOL = 1e-4
ROWS = 4


@pytest.fixture(scope="module")
def transformer():
    configure_threads(preset("tiny"))  # one thread, as the Denoiser runs tiny (10-30x faster on busy cores)
    return load_components(preset("tiny"), ["transformer"]).transformer


@pytest.fixture(scope="module")
def adapter_dir(transformer, tmp_path_factory):
    return write_adapters(tmp_path_factory.mktemp("loras"), transformer)


@pytest.fixture(scope="module")
def bank(transformer, adapter_dir):
    return AdapterBank(transformer, LoraConfig(dir=adapter_dir))


def _inputs(transformer) -> DiTInputs:
    video, audio, vctx, actx, mask, _t, _vt, vcoords, acoords = example_inputs(
        transformer, rows=ROWS, frames=2, height=2, width=2, audio_tokens=3, text_tokens=4)
    t = torch.tensor([900.0, 600.0, 300.0, 50.0])[:ROWS]
    tokens = video.shape[1]
    video_t = t[:, None] * torch.linspace(1.0, 0.5, tokens)[None]  # per token: time_embed sees [rows * tokens]
    return DiTInputs(video=video, audio=audio, video_context=vctx, audio_context=actx, context_mask=mask,
                     timestep=t, video_coords=vcoords, audio_coords=acoords, video_timestep=video_t)


def _row(inputs: DiTInputs, i: int) -> DiTInputs:
    return DiTInputs(**{f.name: None if getattr(inputs, f.name) is None else getattr(inputs, f.name)[i:i + 1]
                        for f in dataclasses.fields(inputs)})


def _forward(transformer, inputs):
    return EagerBackend(transformer).forward(inputs)


REQUESTS = [[], [("a", 1.0)], [("b", 0.5)], [("a", 1.0), ("b", 0.5)]]


@pytest.fixture(scope="module")
def references(transformer, adapter_dir):
    """Each request's merged transformer, keyed by its adapters."""
    return {tuple(req): merged_reference(transformer, adapter_dir, req) for req in REQUESTS}


@pytest.mark.parametrize("path", ["grouped", "gathered"])
def test_mixed_batch_equals_each_request_alone_with_its_adapters_merged_by_diffusers(
        transformer, bank, references, path):
    inputs = _inputs(transformer)
    rows = request_rows([(bank.uses(req), 1) for req in REQUESTS])
    with BatchedLora(transformer, path).rows(rows):
        video, audio = _forward(transformer, inputs)
    plain_video, plain_audio = _forward(transformer, inputs)
    for i, req in enumerate(REQUESTS):
        ref_video, ref_audio = _forward(references[tuple(req)], _row(inputs, i))
        assert (video[i:i + 1] - ref_video).abs().max() < TOL, (path, req)
        assert (audio[i:i + 1] - ref_audio).abs().max() < TOL, (path, req)
        if req:  # the adapters do change the row (the comparison above is not vacuous)
            assert (video[i] - plain_video[i]).abs().max() > 1e-2
            assert (audio[i] - plain_audio[i]).abs().max() > 1e-2
        else:
            assert torch.equal(video[i], plain_video[i]) and torch.equal(audio[i], plain_audio[i])


@pytest.mark.parametrize("path", ["grouped", "gathered"])
def test_cfg_rows_and_scattered_rows_take_their_requests_adapters(transformer, bank, references, path):
    """Two requests of two rows each (CFG), interleaved with a request without adapters; the grouped path takes
    non-consecutive rows of one adapter set by index."""
    ab, b = bank.uses([("a", 1.0), ("b", 0.5)]), bank.uses([("b", 0.5)])
    rows = [ab, (), ab, b]  # rows 0 and 2 share a set without being consecutive
    assert request_rows([(ab, 2), ((), 1), (b, 1)]) == [ab, ab, (), b]
    inputs = _inputs(transformer)
    with lora_rows(transformer, rows, path=path):
        video, audio = _forward(transformer, inputs)
    expect = [(("a", 1.0), ("b", 0.5)), (), (("a", 1.0), ("b", 0.5)), (("b", 0.5),)]
    for i, req in enumerate(expect):
        ref_video, ref_audio = _forward(references[req], _row(inputs, i))
        assert (video[i:i + 1] - ref_video).abs().max() < TOL, (path, i)
        assert (audio[i:i + 1] - ref_audio).abs().max() < TOL, (path, i)


def test_no_adapters_is_the_plain_forward_bit_for_bit_with_nothing_attached(transformer, bank):
    inputs = _inputs(transformer)
    plain = _forward(transformer, inputs)
    lora = BatchedLora(transformer)
    with lora.rows([()] * ROWS):
        assert not any(m._forward_hooks for m in transformer.modules())
        inside = _forward(transformer, inputs)
    with lora.rows([bank.uses([("a", 1.0)])] + [()] * (ROWS - 1)):
        assert sum(len(m._forward_hooks) for m in transformer.modules()) == len(A_TARGETS)
    after = _forward(transformer, inputs)  # the hooks are gone again
    assert not any(m._forward_hooks for m in transformer.modules())
    for out in (inside, after):
        assert torch.equal(out[0], plain[0]) and torch.equal(out[1], plain[1])


def _rows(inputs: DiTInputs, index: list[int]) -> DiTInputs:
    picked = torch.tensor(index)
    return DiTInputs(**{f.name: None if getattr(inputs, f.name) is None else getattr(inputs, f.name)[picked]
                        for f in dataclasses.fields(inputs)})


@pytest.mark.parametrize("path", ["grouped", "gathered"])
def test_a_selected_sub_batch_adds_each_row_its_own_adapters(transformer, bank, path):
    """What the step cache's sub-batches and a CFG-parallel rank do: a forward over some rows of the batch (any
    order, a row twice: a rank's padding), inside `LoraRows.select`, equals those rows of the whole forward."""
    ab, b = bank.uses([("a", 1.0), ("b", 0.5)]), bank.uses([("b", 0.5)])
    inputs = _inputs(transformer)
    with lora_rows(transformer, [ab, (), ab, b], path=path) as lora:
        video, audio = _forward(transformer, inputs)
        for index in ([2, 3], [3, 0, 3], [1], [0, 1, 2, 3]):
            with lora.select(index):
                sub_video, sub_audio = _forward(transformer, _rows(inputs, index))
            assert (sub_video - video[index]).abs().max() < TOL, (path, index)
            assert (sub_audio - audio[index]).abs().max() < TOL, (path, index)
        with lora.select([1, 2, 3]), lora.select([2, 0]):  # selections nest: rows 3 and 1 of the batch
            sub_video, _ = _forward(transformer, _rows(inputs, [3, 1]))
        assert (sub_video - video[[3, 1]]).abs().max() < TOL
        assert lora.rows == (ab, (), ab, b) and lora.delta.batch == 4  # the whole batch's again


def test_a_sub_batch_that_does_not_say_its_rows_is_refused_loudly(transformer, bank):
    inputs = _row(_inputs(transformer), 0)  # one row for a forward assigned four, without LoraRows.select
    with lora_rows(transformer, [bank.uses([("a", 1.0)])] * ROWS):
        with pytest.raises(ValueError, match="got an input of 1 leading rows for a forward of 4 batch rows"):
            _forward(transformer, inputs)
    with lora_rows(transformer, [bank.uses([("a", 1.0)])] * 2):  # fewer rows than the forward: no guessing
        with pytest.raises(ValueError, match="got an input of 4 leading rows for a forward of 2 batch rows"):
            _forward(transformer, _inputs(transformer))


def test_rank_and_alpha_follow_peft_metadata_and_default_to_alpha_equal_rank(bank):
    a, b, c = bank.get("a"), bank.get("b"), bank.get("c")
    assert {f.scaling for f in a.layers.values()} == {2.0}
    assert b.layers["transformer_blocks.0.ff.net.0.proj"].rank == 3
    assert b.layers["transformer_blocks.0.ff.net.0.proj"].scaling == 2.0  # alpha_pattern 6 / rank 3
    assert b.layers["transformer_blocks.0.audio_ff.net.0.proj"].scaling == 1.5  # no match: 3 / 2
    assert {f.scaling for f in c.layers.values()} == {1.0}  # no metadata: diffusers' alpha = rank


# -- refusals ------------------------------------------------------------------------------------
def _bad(tmp_path, transformer, change, metadata=None) -> Path:
    """A rank-2 adapter on block 0's attn1.to_q, to_k with `change` applied to its state dict."""
    sd = {f"transformer.{k}": v for k, v in random_pairs(
        transformer, ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k"], lambda n: 2, 7).items()}
    change(sd)
    path = tmp_path / "bad.safetensors"
    header = {"format": "pt"}
    if metadata is not None:
        import json

        header["lora_adapter_metadata"] = json.dumps({f"transformer.{k}": v for k, v in metadata.items()})
    save_file(sd, path, metadata=header)
    return path


Q = "transformer.transformer_blocks.0.attn1.to_q"


def _rename(old, new):
    def change(sd):
        sd[new] = sd.pop(old)
    return change


def _set(key, shape):
    def change(sd):
        sd[key] = torch.randn(shape)
    return change


@pytest.mark.parametrize("change, metadata, key, message", [
    (lambda sd: sd.pop(f"{Q}.lora_A.weight"), None, f"{Q}.lora_B.weight", "has no lora_A.weight beside it"),
    (lambda sd: [_rename(f"{Q}.{p}.weight", f"transformer.transformer_blocks.7.attn1.to_q.{p}.weight")(sd)
                 for p in ("lora_A", "lora_B")], None,
     "transformer.transformer_blocks.7.attn1.to_q.lora_A.weight", "matches no module of the transformer"),
    (_set(f"{Q}.lora_B.weight", (16, 3)), None, f"{Q}.lora_A.weight",
     r"wrong rank layout: lora_A \[2, 16\] has rank 2, lora_B \[16, 3\] has rank 3"),
    (lambda sd: [_set(f"{Q}.lora_A.weight", (16, 2))(sd), _set(f"{Q}.lora_B.weight", (2, 16))(sd)], None,
     f"{Q}.lora_A.weight", r"wrong rank layout: lora_A is \[16, 2\] and lora_B \[2, 16\], transposed"),
    (lambda sd: [_set(f"{Q}.lora_A.weight", (2, 32))(sd), _set(f"{Q}.lora_B.weight", (32, 2))(sd)], None,
     f"{Q}.lora_A.weight", "made for another base model: the pair maps 32 -> 32 features, this transformer's "
                           "transformer_blocks.0.attn1.to_q maps 16 -> 16"),
    (lambda sd: [_rename(f"{Q}.{p}.weight", f"transformer.transformer_blocks.0.attn1.norm_q.{p}.weight")(sd)
                 for p in ("lora_A", "lora_B")], None,
     "transformer.transformer_blocks.0.attn1.norm_q.lora_A.weight", "targets a torch.nn.modules.normalization.RMSNorm"),
    (_set("transformer.transformer_blocks.0.attn1.to_q.alpha", ()), None,
     "transformer.transformer_blocks.0.attn1.to_q.alpha", "is not a LoRA weight"),
    (_set(f"{Q}.lora_B.bias", (16,)), None, f"{Q}.lora_B.bias", "unsupported LoRA tensor"),
    (lambda sd: None, {"r": 4, "lora_alpha": 4}, "transformer.transformer_blocks.0.attn1.to_k.lora_A.weight",
     "lora_adapter_metadata gives rank 4, the weights have rank 2"),
])
def test_an_adapter_that_does_not_fit_is_refused_naming_the_file_and_the_key(
        transformer, tmp_path, change, metadata, key, message):
    path = _bad(tmp_path, transformer, change, metadata)
    with pytest.raises(AdapterError, match=message) as caught:
        read_adapter(path, "bad", transformer)
    assert caught.value.path == path and caught.value.key == key
    assert str(caught.value).startswith(f"LoRA adapter {path}: {key}: ")


def test_a_file_that_is_not_safetensors_is_refused_naming_it(transformer, tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="cannot be read as a safetensors LoRA file") as caught:
        read_adapter(path, "x", transformer)
    assert caught.value.path == path


# -- the bank ------------------------------------------------------------------------------------
def test_the_bank_evicts_the_least_recently_used_and_counts(transformer, adapter_dir):
    evicted, loaded = [], []
    bank = AdapterBank(transformer, LoraConfig(dir=adapter_dir, max_loaded=2, max_per_request=2),
                       on_load=lambda a, s: loaded.append(a.name), on_evict=lambda a: evicted.append(a.name))
    first_a = bank.get("a")
    bank.get("b")
    assert bank.get("a") is first_a  # a hit: a is now the most recently used
    bank.get("c")  # full: b, the least recently used, goes
    assert bank.loaded == ["a", "c"] and evicted == ["b"]
    bank.get("b")  # loads again; a is now the least recently used
    assert bank.loaded == ["c", "b"] and evicted == ["b", "a"]
    assert bank.get("a") is not first_a  # reloaded
    stats = bank.stats()
    assert (stats.loaded, stats.loads, stats.hits, stats.evictions) == (2, 5, 1, 3)
    assert loaded == ["a", "b", "c", "b", "a"] and stats.load_seconds > 0


def test_an_unknown_adapter_lists_the_available_ones(transformer, adapter_dir, bank):
    assert bank.available() == ["a", "b", "c"]
    for name in ("nope", "../a", "a/pytorch_lora_weights", "c.safetensors"):
        with pytest.raises(UnknownAdapter, match=r"unknown LoRA adapter .*; available: a, b, c") as caught:
            bank.get(name)
        assert caught.value.available == ["a", "b", "c"]
    unset = AdapterBank(transformer, LoraConfig())
    with pytest.raises(UnknownAdapter, match=r"model.lora.dir is not set.*available: none"):
        unset.get("a")


def test_a_request_s_adapters_are_bounded_in_number_and_scale(transformer, adapter_dir):
    bank = AdapterBank(transformer, LoraConfig(dir=adapter_dir, max_per_request=2, scale_range=(0.0, 1.5)))
    uses = bank.uses([("a", 1.0), ("c", 0.25)])
    assert uses == (AdapterUse(bank.get("a"), 1.0), AdapterUse(bank.get("c"), 0.25))
    with pytest.raises(InvalidParameter, match="at most 2 adapters"):
        bank.uses([("a", 1.0), ("b", 1.0), ("c", 1.0)])
    with pytest.raises(InvalidParameter, match=r"loras\[a\].scale=2.0 is not allowed: a scale in \[0, 1.5\]"):
        bank.uses([("a", 2.0)])
    with pytest.raises(InvalidParameter, match="each adapter at most once"):
        bank.uses([("a", 1.0), ("a", 0.5)])


def test_the_lora_config_section_checks_its_bounds():
    with pytest.raises(ConfigError, match="model.lora.scale_range"):
        LoraConfig(scale_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match="model.lora.max_per_request: must be at most max_loaded"):
        LoraConfig(max_loaded=2, max_per_request=3)
    with pytest.raises(ConfigError, match="model.lora.delta_path"):
        LoraConfig(delta_path="fast")
    assert preset("tiny").lora == LoraConfig()


def test_the_catalog_summarises_each_adapter_from_its_header_alone(adapter_dir, tmp_path):
    from engines.adapter_files import AdapterSummary, catalog, describe

    assert catalog(adapter_dir) == [AdapterSummary("a", 4, len(A_TARGETS)), AdapterSummary("b", 3, len(B_TARGETS)),
                                    AdapterSummary("c", 2, 4)]
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    broken = describe(tmp_path, "junk")
    assert (broken.rank, broken.modules) == (0, 0) and "not a readable safetensors file" in broken.error
    assert catalog(None) == []
