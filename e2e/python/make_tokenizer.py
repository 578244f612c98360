"""Writes the tiny tokenizer bench-e2e gives inference-perf: no tokenizer can be downloaded here.

inference-perf's shared-prefix generator needs a Hugging Face tokenizer (it samples token ids and
decodes them into prompts of exact token lengths) and loads it with
`AutoTokenizer.from_pretrained(path)`, which takes a local directory. This one is made by the
project, deterministically: a word-level vocabulary of 4,096 three-letter words ("aaa" ... "gbn")
plus "[UNK]", split on whitespace, decoded with single spaces. One token is then one word plus its
space, 4 bytes, which is how podsim counts prompt tokens (4 bytes each) and what the module's
prefix blocks assume (charsPerToken 4). podsim's output words ("the ", "sim ", ...) are unknown to
this vocabulary and count one token each, so output counts match too.

    python make_tokenizer.py DIR   (needs the `tokenizers` package, which transformers brings)
"""

import itertools
import json
import os
import string
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

VOCAB_WORDS = 4096


def main(out):
    words = ["".join(t) for t in itertools.product(string.ascii_lowercase, repeat=3)][:VOCAB_WORDS]
    vocab = {"[UNK]": 0}
    for w in words:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece's decoder joins tokens with single spaces (no "##" continuation pieces here).
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "model_max_length": 1_000_000}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_tokenizer.py DIR")
    main(sys.argv[1])
