"""The OCR reward: the formula's edge cases (no engine needed), and real RapidOCR on text
rendered with PIL (the PP-OCR ONNX models ship inside the rapidocr wheel: no download)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from marble_rewards.ocr import extract_target, levenshtein, normalize, ocr_reward

# ---------------------------------------------------------------------- the formula


def reference_levenshtein(a: str, b: str) -> int:
    """Plain recursive definition with memoization (independent of the DP in the plugin)."""
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def d(i: int, j: int) -> int:
        if i == 0:
            return j
        if j == 0:
            return i
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3 and levenshtein("", "") == 0
    assert levenshtein("flaw", "lawn") == 2
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = "".join(rng.choice(list("abc1 "), rng.integers(0, 9)))
        b = "".join(rng.choice(list("abc1 "), rng.integers(0, 9)))
        assert levenshtein(a, b) == reference_levenshtein(a, b) == levenshtein(b, a)


def test_extract_target():
    assert extract_target('a sign that says "Hello World" in red') == "Hello World"
    assert extract_target('first "one" then "two"') == "one"
    assert extract_target("no quotes at all") is None
    assert extract_target('only one " quote') is None
    assert extract_target('empty "" quotes') == ""
    assert extract_target("curly \u201cquotes\u201d are not quotes") is None
    assert extract_target("it's a 'single' quote") is None


def test_formula_edge_cases():
    assert ocr_reward("hello world", "Hello World") == 1.0  # case and spaces do not matter
    assert ocr_reward("HELLOWORLD", "hello world") == 1.0
    assert ocr_reward("the sign says hello there", "hello") == 1.0  # substring
    assert ocr_reward("", "hello") == 0.0  # nothing read
    assert ocr_reward("hallo", "hello") == pytest.approx(1 - 1 / 5)
    assert ocr_reward("h", "hello") == pytest.approx(1 - 4 / 5)
    assert ocr_reward("x" * 50, "hello") == 0.0  # distance capped at len(target)
    # punctuation is kept on both sides (as the reference does)
    assert ocr_reward("hello world", "Hello, World!") == pytest.approx(1 - 2 / 12)
    # "helloworld" is not a substring of "hello,world!": two edits over a 10-character target
    assert ocr_reward("Hello, World!", "hello world") == pytest.approx(1 - 2 / 10)
    assert ocr_reward("SALE 50% OFF", "50%") == 1.0
    assert ocr_reward("anything", "") is None and ocr_reward("anything", "   ") is None  # empty target
    assert normalize(" A b\tC\n") == "abc"


# ---------------------------------------------------------------------- the reward object


@pytest.fixture(scope="module")
def ocr(build):
    return build("ocr", num_threads=1, batch_size=8)


def test_mask_and_scores_with_a_stub_engine(ocr, monkeypatch):
    seen = []

    def fake(image):
        seen.append(image.shape)
        return "HELLO world"

    monkeypatch.setattr(ocr, "recognize", fake)
    prompts = ['a sign "hello world"', "no quotes here", 'empty "" quotes', 'unclosed "quote', 'say "hallo"',
               'spaces "   "']
    images = torch.zeros(len(prompts), 3, 32, 48)
    out = ocr.score(images, prompts, [{}] * len(prompts))
    assert out.mask.tolist() == [True, False, False, False, True, False]
    hallo = 1 - min(levenshtein("helloworld", "hallo"), 5) / 5
    assert out.scores.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, hallo, 0.0])
    assert len(seen) == 2 and seen[0] == (32, 48, 3)  # OCR runs only where the mask applies


def test_prompts_without_quotes_never_crash(ocr):
    images = torch.rand(3, 3, 40, 40)
    out = ocr.score(images, ["plain", "", "x " * 300], [{}] * 3)
    assert out.mask.tolist() == [False] * 3 and out.scores.tolist() == [0.0] * 3


# ---------------------------------------------------------------------- real OCR on renders

WORDS = [
    "hello world", "Marble", "OPEN 24 HOURS", "coffee shop", "Diffusion", "STOP", "Welcome Home",
    "Happy Birthday", "EXIT", "Fresh Bread", "No Parking", "Tokyo 2025", "Sale 50%", "Library",
    "Good Morning", "Pizza", "Jazz Club", "Mountain View", "Quiet Please", "Thank You", "Ocean Blue",
    "Rocket Science",
]
MISSPELLED = {
    "hello world": "hxllo wrld", "Marble": "Mable", "coffee shop": "cofe shap", "Diffusion": "Difusoin",
    "Welcome Home": "Welcme Hume", "Happy Birthday": "Hapy Birtday", "Fresh Bread": "Frash Brad",
    "Library": "Librery", "Good Morning": "Goood Mornin", "Jazz Club": "Jaz Clob", "Mountain View": "Mountan Vew",
    "Quiet Please": "Quite Pleas", "Thank You": "Thenk Yu", "Ocean Blue": "Ocaen Bleu", "Rocket Science": "Roket Sciense",
}
W, H = 384, 96


def _fonts():
    d = "/usr/share/fonts/truetype/dejavu"
    specs = [("DejaVuSans.ttf", 30), ("DejaVuSerif-Bold.ttf", 34), ("DejaVuSansMono.ttf", 26)]
    if all(os.path.isfile(os.path.join(d, f)) for f, _ in specs):
        return [ImageFont.truetype(os.path.join(d, f), s) for f, s in specs]
    return [ImageFont.load_default(size=s) for s in (28, 34, 24)]  # Pillow's bundled font


def render(text: str, font, fg=(0, 0, 0), bg=(255, 255, 255)) -> torch.Tensor:
    img = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(img)
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    draw.text(((W - (r - l)) / 2 - l, (H - (b - t)) / 2 - t), text, fill=fg, font=font)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_real_ocr_reads_rendered_text(ocr):
    fonts = _fonts()
    styles = [((0, 0, 0), (255, 255, 255)), ((255, 255, 255), (20, 40, 120)), ((120, 0, 0), (250, 230, 160))]
    imgs, prompts = [], []
    for k, (font, (fg, bg)) in enumerate(zip(fonts, styles)):
        for w in WORDS:
            imgs.append(render(w, font, fg, bg))
            prompts.append(f'a storefront sign that says "{w}", photo, style {k}')
    images = torch.stack(imgs)  # uint8
    out = ocr.score(images, prompts, [{}] * len(prompts))
    assert out.mask.all()
    bad = [(prompts[i], float(s)) for i, s in enumerate(out.scores) if s < 0.9]
    assert not bad, bad
    assert out.scores.mean() > 0.97

    # the same words misspelled in the image score lower, by about the edit distance
    mis_imgs, mis_prompts, good = [], [], []
    for w, wrong in MISSPELLED.items():
        mis_imgs.append(render(wrong, fonts[0]))
        mis_prompts.append(f'a sign that says "{w}"')
        good.append(float(out.scores[WORDS.index(w)]))
    mis = ocr.score(torch.stack(mis_imgs).float() / 255, mis_prompts, [{}] * len(mis_prompts))
    for (w, wrong), s, g in zip(MISSPELLED.items(), mis.scores.tolist(), good):
        expected = ocr_reward(wrong, w)
        assert s < g and s < 0.9, (w, wrong, s)
        assert abs(s - expected) <= 1 / len(normalize(w)) + 1e-6, (w, wrong, s, expected)


def test_ocr_uint8_and_float_agree(ocr):
    img = render("Marble", _fonts()[1]).unsqueeze(0)
    p = ['a sign "Marble"']
    assert ocr.score(img, p, [{}]).scores.item() == ocr.score(img.float() / 255, p, [{}]).scores.item() == 1.0
