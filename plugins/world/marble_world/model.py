"""The tiny SD3-architecture model of the demo world, built offline from configs.

Everything a ``StableDiffusion3Pipeline`` folder holds, at toy size:

* two CLIP text encoders (``CLIPTextModelWithProjection``) and a T5 encoder, random and frozen;
  they are fixed random feature maps of the tokens, the transformer learns to read them.
* tokenizers built without downloads: CLIP BPE whose base vocabulary is the 256 bytes (so any
  text encodes) plus merges that make the world's grammar words single tokens, and a T5
  Unigram tokenizer with the same words as pieces plus single characters. Quoted words
  (signs) stay letter by letter in both, which is what a model needs to spell them.
* a small ``AutoencoderKL`` (factor 4: 64 px -> 16 x 16 x 8) trained on world pictures, and
* an ``SD3Transformer2DModel`` (patch 2 -> 64 image tokens) trained with flow matching.

Sequence lengths are short on purpose (CLIP 24 tokens, T5 ``MAX_SEQUENCE_LENGTH`` = 24);
pass ``max_sequence_length=24`` to the pipeline (the default 256 works but costs 10x).
"""

from __future__ import annotations

from marble_world.prompts import COUNT_WORDS, POSITION_PHRASES
from marble_world.world import COLORS, SHAPES

CLIP_MAX_LENGTH = 24
MAX_SEQUENCE_LENGTH = 24
RESOLUTION = 64

# Words that become single tokens (the grammar; sign words are deliberately left out).
GRAMMAR_WORDS = sorted(
    set(COLORS)
    | set(SHAPES)
    | {s + "s" for s in SHAPES}
    | set(COUNT_WORDS.values())
    | {"some", "one", "sign", "that", "says", "photo", "of", "picture", "an", "and", "with"}
    | {w for p in POSITION_PHRASES.values() for w in p.split()}
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    latent_channels=8,
    norm_num_groups=4,
    sample_size=RESOLUTION,
    mid_block_add_attention=False,
)

TRANSFORMER_CONFIG = dict(
    sample_size=RESOLUTION // 4,
    patch_size=2,
    in_channels=8,
    out_channels=8,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    caption_projection_dim=128,
    pooled_projection_dim=64,
    pos_embed_max_size=16,
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-to-printable-unicode map.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def build_clip_tokenizer():
    """CLIP BPE tokenizer: 256 bytes (+ their end-of-word forms), grammar words as merges."""
    from transformers import CLIPTokenizer

    units = list(_bytes_to_unicode().values())
    vocab_list = units + [u + "</w>" for u in units]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in GRAMMAR_WORDS:
        # Simulate BPE on the word with the merges so far; while it is more than one token,
        # add a merge of its first two tokens. New merges rank last, so earlier words still
        # tokenize the same way.
        while True:
            parts = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
            if len(parts) == 1:
                break
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)
    return tok


def build_t5_tokenizer():
    """T5 Unigram tokenizer: grammar words as whole pieces, every printable ASCII char as a piece."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -2.0) for w in GRAMMAR_WORDS]
    pieces += [("\u2581", -6.0)]
    pieces += [(chr(c), -5.0) for c in range(33, 127)]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH)
    return tok


def build_text_encoders(seed: int = 0):
    """(clip_l, clip_g, t5) random frozen encoders, in eval mode, seeded."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_tok = build_clip_tokenizer()
    t5_tok = build_t5_tokenizer()
    encoders = []
    for i in range(2):
        torch.manual_seed(seed + 1000 + i)
        cfg = CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=32,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
        encoders.append(CLIPTextModelWithProjection(cfg).eval().requires_grad_(False))
    torch.manual_seed(seed + 1002)
    t5cfg = T5Config(
        vocab_size=len(t5_tok),
        d_model=64,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=t5_tok.pad_token_id,
        eos_token_id=t5_tok.eos_token_id,
        decoder_start_token_id=t5_tok.pad_token_id,
    )
    encoders.append(T5EncoderModel(t5cfg).eval().requires_grad_(False))
    return encoders[0], encoders[1], encoders[2], clip_tok, t5_tok


def build_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 2000)
    return AutoencoderKL(**VAE_CONFIG, scaling_factor=1.0, shift_factor=0.0)


def build_transformer(seed: int = 0, **overrides):
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed + 3000)
    return SD3Transformer2DModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_pipeline(transformer=None, vae=None, seed: int = 0):
    """A StableDiffusion3Pipeline from the world's configs (random weights where none given)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    clip_l, clip_g, t5, clip_tok, t5_tok = build_text_encoders(seed)
    pipe = StableDiffusion3Pipeline(
        transformer=(transformer if transformer is not None else build_transformer(seed)).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=(vae if vae is not None else build_vae(seed)).eval(),
        text_encoder=clip_l,
        tokenizer=clip_tok,
        text_encoder_2=clip_g,
        tokenizer_2=clip_tok,
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )
    return pipe
