"""Every pretrained file the suite knows, with the pins this release ships.

A pin is a sha256 and a byte size. The release pins below were computed by independent public projects
that downloaded the files from their official release URLs; ``public_sources`` counts how many agree
(one source only is shown as such in ``weights list``). Files without a published hash carry
``sha256=None``: a user pins them once, with ``--sha256 HEX`` from a trusted source or ``--trust`` on
first download, and that pin is recorded with its date and source (see :mod:`audit.weights.store`).

Two kinds of entry: a single file at a URL (torchxrayvision, torch-fidelity), and a Hugging Face
repository at a fixed commit (RadDino), whose named files are each pinned. ``hf:ORG/NAME@REVISION``
names any other hub backbone; its files are pinned by the study config or by ``--trust``.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = [
    "HUB_FILES",
    "MANIFEST",
    "RADDINO",
    "FileSpec",
    "WeightsEntry",
    "WeightsError",
    "entry",
    "is_hub_spec",
]

_HUB_SPEC = re.compile(r"^hf:(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)@(?P<revision>[0-9a-f]{40})$")
# What a feature backbone needs from its repository: no pickles (pytorch_model.bin), no code.
HUB_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")


class WeightsError(RuntimeError):
    """Weights are missing, unverifiable or corrupt; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class FileSpec:
    filename: str
    sha256: str | None  # None: not pinned by this release
    size: int | None


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One evaluator's weights: a file at ``url``, or ``files`` of hub ``repo`` at ``revision``."""

    name: str
    description: str
    files: tuple[FileSpec, ...]
    url: str = ""
    repo: str = ""
    revision: str = ""
    # Independent public projects whose hash agrees with the pin (1: "one public source only").
    public_sources: int = 0
    # Other names the same bytes go by in other tools' caches (pytorch-fid's Inception file).
    aliases: tuple[str, ...] = ()
    default: bool = False  # needed by the default [evaluators] (checked by `weights verify`)

    @property
    def hub(self) -> bool:
        return bool(self.repo)

    @property
    def filename(self) -> str:
        """The file of a single-file entry (the weights file of a hub entry)."""
        if self.hub:
            return "model.safetensors"
        return self.files[0].filename

    def released_pins(self) -> bool:
        return all(f.sha256 for f in self.files)

    def source_url(self, filename: str) -> str:
        if self.hub:
            return f"https://huggingface.co/{self.repo}/resolve/{self.revision}/{filename}"
        return self.url


_XRV = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_DENSENET = "densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"


def _xrv_densenet(name: str, prefix: str, dataset: str, sha: str | None = None, size: int | None = None,
                  sources: int = 0, default: bool = False) -> WeightsEntry:  # fmt: skip
    filename = f"{prefix}-{_DENSENET}"
    return WeightsEntry(
        name,
        f"torchxrayvision DenseNet-121, {dataset}",
        (FileSpec(filename, sha, size),),
        url=_XRV + filename,
        public_sources=sources,
        default=default,
    )


RADDINO = WeightsEntry(
    "rad-dino",
    "Microsoft RadDino (DINOv2 ViT-B/14 on chest X-rays): CheXGenBench's FD/KID/PRDC features",
    (
        FileSpec(
            "model.safetensors",
            "dbfb9f54459c38773505de64a6ab7807bdcb392610fe1e697166342e43fb91ae",
            346_345_912,
        ),
        FileSpec("config.json", "89daf9751d9576d586dedf9543c1083211611fa3a36908db7a799b3ce7c68ede", None),
        FileSpec(
            "preprocessor_config.json",
            "c537fc995c30e2353f07253899618d60e9eae3d5f82473778602c007c6523b56",
            None,
        ),
    ),
    repo="microsoft/rad-dino",
    revision="110cbc18d5133582e320b43d53bf5c44e410c936",
    public_sources=2,
)

MANIFEST: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        _xrv_densenet(
            "densenet121-res224-all",
            "nih-pc-chex-mimic_ch-google-openi-kaggle",
            "all datasets (default pathology classifier)",
            "56524913dd16a906422e8d8b66a7a5c46be1d82eb7ac012d8103776f1aa68899",
            28_382_008,
            sources=2,
            default=True,
        ),
        _xrv_densenet("densenet121-res224-nih", "nih", "NIH ChestX-ray14"),
        _xrv_densenet("densenet121-res224-pc", "pc", "PadChest"),
        _xrv_densenet("densenet121-res224-chex", "chex", "CheXpert"),
        _xrv_densenet("densenet121-res224-rsna", "kaggle", "RSNA pneumonia"),
        _xrv_densenet("densenet121-res224-mimic_nb", "mimic_nb", "MIMIC-CXR (NegBio labels)"),
        _xrv_densenet(
            "densenet121-res224-mimic_ch",
            "mimic_ch",
            "MIMIC-CXR (CheXpert labels)",
            "23b13a04459684ffa41247d068207a7657b4e1b4dec2b02431f5026bd75b1189",
            28_382_012,
            sources=1,
        ),
        WeightsEntry(
            "pspnet-chestx-det",
            "torchxrayvision PSPNet anatomy segmenter (ChestX-Det)",
            (
                FileSpec(
                    "pspnet_chestxray_best_model_4.pth",
                    "019b167eac6b729fc1bb92bbbc185fc1730aaa65819f4e3fe718186cadc044fc",
                    272_988_989,
                ),
            ),
            url=_XRV + "pspnet_chestxray_best_model_4.pth",
            public_sources=2,
            default=True,
        ),
        WeightsEntry(
            "inception-v3-fid",
            "torch-fidelity Inception-v3 (TF FID port) for FID",
            (
                FileSpec(
                    "weights-inception-2015-12-05-6726825d.pth",
                    "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
                    95_628_359,
                ),
            ),
            url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            public_sources=2,
            # pytorch-fid keeps the same bytes under this name in torch hub's checkpoints dir.
            aliases=("pt_inception-2015-12-05-6726825d.pth",),
            default=True,
        ),
        RADDINO,
    )
}


def is_hub_spec(name: str) -> bool:
    return name.startswith("hf:")


def entry(name: str) -> WeightsEntry:
    """The manifest entry ``name``, or the hub entry an ``hf:ORG/NAME@REVISION`` spec names."""
    if is_hub_spec(name):
        m = _HUB_SPEC.fullmatch(name)
        if m is None:
            raise WeightsError(
                f"{name!r} is not a hub spec; write hf:ORG/NAME@REVISION with the full 40-hex commit "
                "(a branch name such as main moves, so the features would not be reproducible)"
            )
        for e in MANIFEST.values():
            if e.hub and e.repo == m["repo"] and e.revision == m["revision"]:
                return e
        return WeightsEntry(
            name,
            f"Hugging Face backbone {m['repo']} at {m['revision'][:12]}",
            tuple(FileSpec(f, None, None) for f in HUB_FILES),
            repo=m["repo"],
            revision=m["revision"],
        )
    try:
        return MANIFEST[name]
    except KeyError:
        raise WeightsError(
            f"unknown weights {name!r}; known: {', '.join(MANIFEST)}, or hf:ORG/NAME@REVISION"
        ) from None
