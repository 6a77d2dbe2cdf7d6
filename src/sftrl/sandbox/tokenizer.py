"""A character-level tokenizer for the sandbox: one token per character, plus chat special tokens.

Character level keeps the arithmetic legible to a tiny model (every digit is its own token) and
makes encode/decode round-trip exactly, whitespace and newlines included. The vocabulary holds all
printable ASCII characters and ``"\\n"``, so arbitrary user text never crashes; anything else maps
to ``<|unk|>``.

It is a genuine ``PreTrainedTokenizerFast`` (built with the ``tokenizers`` library), saved with
``tokenizer_class: PreTrainedTokenizerFast`` so that ``AutoTokenizer.from_pretrained`` reloads it
as-is. (The sandbox model is a Llama; with a Qwen2 config, transformers would rebuild a byte-level
Qwen2 tokenizer from the saved files and silently drop whitespace.)
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN]

# Every printable ASCII character (letters, digits, punctuation, space) and the newline; tabs and
# other control characters become <|unk|>. A fixed order keeps token ids stable across versions.
CHARACTERS = [c for c in string.printable if c.isprintable()] + ["\n"]

# Renders ``<|system|>...<|user|>...<|assistant|>...<|endoftext|>`` with no separators, so the
# prompt the model sees is exactly the characters of the messages. The assistant content sits in a
# ``{% generation %}`` block so ``return_assistant_tokens_mask=True`` (assistant-only loss) works.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if not loop.first -%}"
    "{{- raise_exception('A system message is only allowed as the first message.') -}}"
    "{%- endif -%}"
    "{{- '<|system|>' + message['content'] -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '<|user|>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>' -}}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- raise_exception('Unknown role ' + message['role'] + '; expected system, user or assistant.') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the sandbox's character-level tokenizer (special tokens first, ids 0-5)."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    # A BPE model with no merges splits text into single characters and maps each to its id; with
    # no pre-tokenizer, spaces and newlines are ordinary characters. Fuse decodes by concatenation.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
