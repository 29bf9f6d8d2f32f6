"""Tiny seeded Stable Diffusion components saved to disk, so the adapters' real loading code runs.

Everything is built from configs in this file (UNet, VAE, CLIP text encoder, ControlNet) and a
byte-level BPE tokenizer whose vocab and merges are written here: nothing downloads. The networks
are random-init and produce noise-like images; the tests only need them deterministic and fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_PX = 32  # pixel size the tiny VAE decodes to (latents are 8 px)
_BLOCKS = (8, 16)


def write_tokenizer(dir: Path) -> None:
    """A CLIP tokenizer with the byte alphabet plus end-of-word forms: every prompt tokenizes."""
    from transformers import CLIPTokenizer

    dir.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (dir / "vocab.json").write_text(json.dumps(vocab))
    (dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(dir / "vocab.json"), str(dir / "merges.txt"), model_max_length=16, pad_token="<|endoftext|>"
    )
    tok.save_pretrained(dir)


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte -> printable character map (the alphabet of CLIP's byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _components(seed: int, unet_in: int = 4) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)  # diffusers/transformers init from the global RNG; tests only
    unet = UNet2DConditionModel(
        block_out_channels=_BLOCKS,
        layers_per_block=1,
        sample_size=TINY_PX // 4,
        in_channels=unet_in,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=_BLOCKS,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_PX,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=16,
            intermediate_size=32,
            layer_norm_eps=1e-05,
            num_attention_heads=2,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=600,
            max_position_embeddings=16,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": scheduler}


def save_sd(dir: Path, seed: int = 0, inpaint: bool = False) -> Path:
    """A tiny StableDiffusion(Inpaint)Pipeline saved under ``dir``; returns ``dir``."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok_dir = dir.parent / f"{dir.name}-tokenizer"
    write_tokenizer(tok_dir)
    parts = _components(seed, unet_in=9 if inpaint else 4)
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(
        **parts,
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dir, safe_serialization=True)
    return dir


def save_controlnet(dir: Path, seed: int = 1) -> Path:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        block_out_channels=_BLOCKS,
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=16,
        conditioning_embedding_out_channels=(4, 8),
        norm_num_groups=4,
        attention_head_dim=2,
    )
    # A fresh ControlNet's output convolutions are zero ("zero convolutions"), so it ignores its
    # condition; give them weights so that tests can see a condition change the image.
    with torch.no_grad():
        for module in (
            *net.controlnet_down_blocks,
            net.controlnet_mid_block,
            net.controlnet_cond_embedding.conv_out,
        ):
            module.weight.normal_(0.0, 0.5)
    net.save_pretrained(dir, safe_serialization=True)
    return dir
