"""Tiny text encoders for the tiny random-weight pipelines (SD3, Flux): CLIP encoders on the toy's CLIP tokenizer and
a T5 encoder on a T5 tokenizer built here from the toy vocabulary (a ``tokenizers`` Unigram model with T5's
special tokens and metaspace pre-tokenizer, no sentencepiece file), so that nothing touches the network."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel
from transformers import T5TokenizerFast

from blocksearch.toy.models import MAX_TOKENS
from blocksearch.toy.world import VOCABULARY

SPACE = "\u2581"  # sentencepiece's word-start mark, as T5's tokenizer spells it


def make_t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer whose pieces are the toy words (one token each), their characters and T5's <pad> (0), </s>
    (1) and <unk> (2); every encoding ends with </s>, as T5's does."""
    words = sorted(set(VOCABULARY))
    chars = sorted({c for w in words for c in w})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(SPACE + w, -1.0) for w in words] + [(SPACE, -5.0)] + [(c, -10.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=MAX_TOKENS)


def t5_encoder(tokenizer, d_model: int) -> T5EncoderModel:
    """A T5 encoder the size of diffusers' tests' tiny-random-t5 (2 layers, 4 heads of 8)."""
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0)).eval()


def clip_encoder(tokenizer, hidden: int, projection: int | None = None):
    """A 2-layer CLIP text encoder (with a projection: ``CLIPTextModelWithProjection``, SD3's and SDXL's second)."""
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id,
                            **({} if projection is None else {"projection_dim": projection}))
    model = CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)
    return model.eval()
