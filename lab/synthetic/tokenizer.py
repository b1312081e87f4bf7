"""A small byte-level BPE tokenizer trained offline on the generated text, saved as a Hugging Face fast tokenizer
so that `AutoTokenizer.from_pretrained(dir)` serves it exactly like a real checkpoint's tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from data_modules.batch import VIDEO_TOKEN

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", VIDEO_TOKEN)
# Role-prefixed turns; the assistant turn ends with eos so generation knows where to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}assistant: {{ message['content'] }}{{ eos_token }}\n"
    "{% else %}{{ message['role'] }}: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_tokenizer(texts: Iterable[str], out: str | Path, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train BPE on `texts` (plus the chat role words) and save it to `out`.

    Byte-level, so any text round-trips; ids 0-4 are the special tokens in `SPECIAL_TOKENS` order. Encoding adds
    no bos/eos by itself (the chat template and the collators place them).
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    roles = ["user: ", "assistant: ", "system: "] * 50
    tok.train_from_iterator([*texts, *roles], trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=[VIDEO_TOKEN],
        chat_template=CHAT_TEMPLATE,
    )
    hf.save_pretrained(str(out))
    return hf
