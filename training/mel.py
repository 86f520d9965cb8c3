"""The log-mel spectrogram the demo's audio VAE encodes and its vocoder turns back into a waveform.

LTX-2's audio VAE reads stereo log-mel spectrograms ``[B, 2, frames, mel_bins]`` of 16 kHz audio at a 160-sample
hop (100 mel frames a second), and its vocoder writes 24 kHz. The world's audio is 24 kHz, so the spectrogram is
taken at 24 kHz with the same 10 ms hop and a 20 ms window, its mel filters spanning 0 to 8 kHz (the 16 kHz
Nyquist): the mel frames are the ones a 16 kHz front end would give, with no resampling step. Mel frame ``i`` is
centred on sample ``i * hop``. Differentiable (torch.stft), so the vocoder trains on it too.
"""

from __future__ import annotations

import torch
from transformers.audio_utils import mel_filter_bank

LOG_FLOOR = 1e-5


class LogMel(torch.nn.Module):
    """Waveform ``[B, channels, samples]`` -> natural-log mel magnitudes ``[B, channels, frames, mel_bins]``."""

    def __init__(self, sample_rate: int, mel_rate: float, mel_bins: int, max_frequency: float,
                 window_seconds: float = 0.02) -> None:
        super().__init__()
        self.hop = round(sample_rate / mel_rate)
        self.win = round(window_seconds * sample_rate)
        self.n_fft = 1 << (self.win - 1).bit_length()
        filters = mel_filter_bank(num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=mel_bins, min_frequency=0.0,
                                  max_frequency=max_frequency, sampling_rate=sample_rate, norm="slaney",
                                  mel_scale="slaney")
        self.register_buffer("filters", torch.from_numpy(filters).float(), persistent=False)  # [freqs, mels]
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)

    @classmethod
    def for_audio_vae(cls, audio_vae, output_sample_rate: int) -> LogMel:
        """The spectrogram a given `AutoencoderKLLTX2Audio` reads, taken at the vocoder's output rate."""
        c = audio_vae.config
        return cls(output_sample_rate, c.sample_rate / c.mel_hop_length, c.mel_bins, c.sample_rate / 2)

    def frames(self, samples: int) -> int:
        return 1 + samples // self.hop

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        b, ch, n = wave.shape
        spec = torch.stft(wave.reshape(b * ch, n), self.n_fft, self.hop, self.win, self.window, center=True,
                          pad_mode="reflect", return_complex=True).abs()  # [B*ch, freqs, frames]
        mel = torch.einsum("fm,bft->btm", self.filters, spec)
        return torch.log(mel.clamp_min(LOG_FLOOR)).reshape(b, ch, -1, mel.shape[-1])
