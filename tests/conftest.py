"""Shared fixtures: real image files of every awkward kind, built on the fly."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# Each test's workspaces compute their own features (tests count what was computed); the machine-wide shared
# feature cache is on only in the tests of it (tests/test_shared_cache.py).
os.environ["CURATA_FEATURE_CACHE"] = "off"


def write_image(path: Path, size=(32, 24), color=(200, 30, 30), mode="RGB", fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))  # stable across runs (hash() is salted)
    arr = np.clip(np.array(color, np.int16) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    im = Image.fromarray(arr.astype(np.uint8), "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt, **save)
    return path


COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200), "yellow": (220, 200, 40)}


def write_colour_table(root: Path, n: int, size: tuple[int, int], text: bool = False) -> Path:
    """`n` drawn images cycling through COLOURS (labelled by colour, sizes varying from `size`), with a split
    column (per ten: 2 test, 2 val, 6 train) and, with `text`, a sentence naming the colour; returns the CSV."""
    rows = []
    for i in range(n):
        label = list(COLOURS)[i % len(COLOURS)]
        name = f"img/{label}_{i:03d}.png"
        write_image(root / name, size=(size[0] + i % 9, size[1] + i % 7), color=COLOURS[label])
        rows.append({"image": name, "label": label, "split": "test" if i % 10 < 2 else "val" if i % 10 < 4
                     else "train", **({"text": f"a {label} thing number {i}"} if text else {})})
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)
    return root / "items.csv"


class Recorder:
    """A progress reporter that remembers the tasks it was given (description -> units advanced)."""

    def __init__(self) -> None:
        self.tasks: dict[str, int] = {}

    def task(self, description: str, total: int | None):
        self.tasks.setdefault(description, 0)

        def advance(n: int = 1) -> None:
            self.tasks[description] += n

        return advance


def jpeg_bytes(size=(64, 48), color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def broken_folder(tmp_path: Path) -> dict[str, str]:
    """A folder with good images and one of each kind of trouble. Returns file name -> expected code."""
    root = tmp_path / "broken"
    root.mkdir()
    expected: dict[str, str] = {}
    write_image(root / "good.jpg", fmt="JPEG")
    expected["good.jpg"] = "ok"
    write_image(root / "good.png")
    expected["good.png"] = "ok"
    write_image(root / "tiny.png", size=(1, 1))
    expected["tiny.png"] = "ok"
    write_image(root / "cmyk.jpg", mode="CMYK", fmt="JPEG")
    expected["cmyk.jpg"] = "ok"
    sixteen = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    Image.fromarray(sixteen).save(root / "sixteen.png")
    expected["sixteen.png"] = "ok"
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 12, 24))
    pal.save(root / "palette.png", transparency=0)
    expected["palette.png"] = "ok"
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    expected["animated.gif"] = "ok"
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.save(root / "transparent.png")
    expected["transparent.png"] = "ok"
    data = jpeg_bytes((400, 300))
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "truncated"
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    expected["corrupt.jpg"] = "corrupt"
    (root / "noise.png").write_bytes(np.random.default_rng(1).bytes(2048))
    expected["noise.png"] = "not_an_image"
    (root / "empty.png").write_bytes(b"")
    expected["empty.png"] = "empty_file"
    # A decompression bomb: 15000 x 15000 1-bit pixels compress to a few kB but are 225 megapixels.
    Image.new("1", (15000, 15000)).save(root / "bomb.png")
    expected["bomb.png"] = "too_many_pixels"
    (root / "notes.txt").write_text("not an image")
    expected["notes.txt"] = "not_an_image"
    return {"root": str(root), **expected}


# Tiny CLIP for plug-in tests ----------------------------------------------------------------------

TINY_CLIP_DIM = 24
TINY_CLIP_WORDS = [
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "red",
    "blue",
    "car",
    "house",
    "café",
    "猫",
    "pixel",
    "art",
    "punk",
]


def _tiny_tokenizer(max_len: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    for w in TINY_CLIP_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_len,
    )
    return fast, len(vocab)


def make_tiny_clip(path: Path) -> Path:
    """A randomly initialised, tiny transformers CLIP model saved to `path` (tests of the CLIP plug-ins)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer, vocab_size = _tiny_tokenizer(16)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,  # the text tower pools at the EOS position
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=TINY_CLIP_DIM,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


# The browser tests (test_web*.py) drive Debian's chromium through Playwright; never a downloaded browser.
CHROMIUM = Path("/usr/bin/chromium")
SCREENS = Path("/tmp/curata-screens")  # a copy for people to look at; the originals stay in tmp_path
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for one test module (skipped there, with the reason, when it is not installed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


SECRET = "curata-test-secret-7c1d9e"  # must never appear in a report, a card, an error or the console


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A real S3-compatible server (`moto_server`, its own process on a free loopback port) and the environment
    a client reaches it with (`AWS_ALLOW_HTTP`: Lance and obstore refuse plain HTTP otherwise)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-1000:]}")
            time.sleep(0.2)
        yield {"AWS_ACCESS_KEY_ID": "curata-test-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
               "AWS_ALLOW_HTTP": "true"}
    finally:
        server.terminate()
        server.wait(10)
