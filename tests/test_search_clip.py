"""The CLIP plug-in encoder for search, exercised with a tiny randomly initialised CLIP saved to a tmp dir
(the fixture pattern of tests/test_plugins.py): zero-shot, so only the plumbing is tested, not quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curata.ingest.pipeline import IngestOptions, ingest
from curata.search.encoders import ClipEncoder, make_encoder
from curata.workspace import Workspace

PROJ_DIM = 24
WORDS = ["a", "photo", "of", "red", "blue", "green", "square", "car"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_clip")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                            eos_token="[EOS]", model_max_length=16).save_pretrained(path)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=PROJ_DIM,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("clip_ws")
    rows = []
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("green", (20, 200, 20))):
        Image.new("RGB", (40, 40), colour).save(root / f"{name}.png")
        rows.append({"path": f"{name}.png", "text": f"a {name} square", "label": name})
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)
    ws = Workspace(root / "ws")
    ingest(root / "items.csv", ws, IngestOptions(source_name="sq", collection="squares"))
    return ws


def test_clip_encoder_interface(clip_dir: Path, workspace: Workspace) -> None:
    encoder = make_encoder(workspace, f"clip:{clip_dir}")
    assert isinstance(encoder, ClipEncoder)
    card = encoder.card
    assert card["kind"] == "clip" and card["dim"] == PROJ_DIM and str(clip_dir.resolve()) in card["name"]
    texts = encoder.encode_texts(["a red square", "a blue car", ""])
    assert texts.shape == (3, PROJ_DIM)
    np.testing.assert_allclose(np.linalg.norm(texts[:2], axis=1), 1.0, atol=1e-5)
    assert not texts[2].any()  # empty text matches nothing
    images = encoder.encode_images([np.full((20, 30, 3), 200, np.uint8)])
    assert images.shape == (1, PROJ_DIM)
    encoder.compute_features(workspace)
    items = encoder.encode_items(workspace, workspace.items())
    assert items.shape == (3, PROJ_DIM) and np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="expected an RGB uint8 array"):
        encoder.encode_images([np.zeros((4, 4), np.uint8)])


@pytest.mark.slow
def test_clip_index_and_search(clip_dir: Path, workspace: Workspace) -> None:
    from curata.search.evaluate import evaluate_retrieval
    from curata.search.searcher import Searcher, build_index

    model = f"clip:{clip_dir}"
    summary = build_index(workspace, model)
    assert summary["total"] == 3 and Path(summary["index"]).name.startswith("clip-")
    searcher = Searcher.open(workspace, model)
    hits = searcher.by_text("a red square", k=5)
    assert len(hits) == 3 and "only 3" in searcher.notes[0]
    red = np.asarray(Image.open(workspace.items()["image"].iloc[0]).convert("RGB"))
    assert searcher.by_image(red, k=1)[0]["id"] == "sq/red.png"  # the same picture is its own nearest
    evaluation = evaluate_retrieval(workspace, model, subset="all", write=False)
    assert evaluation["sets"]["all"]["pooled"]["items"] == 3 and evaluation["model"]["kind"] == "clip"


def test_clip_without_weights_is_a_clear_error(tmp_path: Path, workspace: Workspace) -> None:
    with pytest.raises(ValueError, match=r"does not exist.*no CLIP weights ship with curata"):
        make_encoder(workspace, f"clip:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is empty"):
        make_encoder(workspace, f"clip:{empty}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ValueError, match="cannot load a CLIP model"):
        make_encoder(workspace, f"clip:{broken}")
    with pytest.raises(ValueError, match="open_clip:<architecture>:<checkpoint file>"):
        make_encoder(workspace, "open_clip:ViT-B-32")
    with pytest.raises(ValueError, match="open_clip"):
        make_encoder(workspace, f"open_clip:ViT-B-32:{tmp_path / 'none.pt'}")
