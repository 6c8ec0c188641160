"""Tiny random models of real architectures, with tokenizers trained offline, for tests and benchmarks.

Nothing is downloaded: a small synthetic corpus trains a SentencePiece tokenizer (Llama-2, Mistral,
Phi-3 and Gemma style), a byte-level BPE (Qwen and Llama-3 style) or Gemma 4's SentencePiece-style BPE
in tokenizer.json, and a 2- to 4-layer model with random
weights is built in-process. Each family gets a chat template in its own layout, including the
quirks that matter to the data pipeline: Gemma 1/2 reject a system role, Gemma 3 and Mistral fold it
into the first user turn, Qwen3 renders the latest assistant turn with an empty think block.

Run as:  python -m localtune.model.tiny qwen2 /tmp/tiny-qwen2
"""

from __future__ import annotations

import functools
import io
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

ARCHITECTURES = (
    "llama",
    "llama3",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_5",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "gemma4",
    "granite",
    "ministral",
    "ministral3",
    "smollm3",
    "olmo2",
    "olmo3",
    "qwen3_moe",
    "gpt_oss",
)

# --- chat templates, one per family's layout -------------------------------------------------------
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '<<SYS>>\\n' + m['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% set sys = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + (sys if loop.first else '') + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
QWEN2_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN3_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen3.5: Qwen3's layout, but the generation prompt opens a think block (thinking is on by default)
QWEN3_5_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% set sys = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages if m['role'] != 'system' %}{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + (sys if loop.first else '') + m['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
GRANITE_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|start_of_role|>' + m['role'] + '<|end_of_role|>' + m['content'] + '<|end_of_text|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
)
# Ministral-8B-2410: Tekken tokens, no spaces around [INST]; the system prompt joins the first user turn.
MINISTRAL_TEMPLATE = (
    "{{ bos_token }}{% set sys = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}{{ '[INST]' + (sys if loop.first else '') + m['content'] + '[/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
# Mistral 3 / Ministral 3: the system prompt has its own [SYSTEM_PROMPT] block.
MISTRAL3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' + m['content'] + '[/SYSTEM_PROMPT]' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST]' + m['content'] + '[/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
# gpt-oss "harmony": a system header, the system prompt as developer instructions, assistant turns on the
# final channel; history turns end with <|end|>, the conversation's last assistant turn with <|return|>.
HARMONY_TEMPLATE = (
    "{{ '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n"
    "Reasoning: medium\\n\\n# Valid channels: analysis, commentary, final. "
    "Channel must be included for every message.<|end|>' }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|start|>developer<|message|># Instructions\\n\\n' + messages[0]['content'] + '<|end|>' }}{% endif %}"
    "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'assistant' %}"
    "{{ '<|start|>assistant<|channel|>final<|message|>' + m['content'] }}"
    "{{ '<|return|>' if loop.last and not add_generation_prompt else '<|end|>' }}"
    "{% else %}{{ '<|start|>' + m['role'] + '<|message|>' + m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
)
# Gemma 4's layout (google/gemma-4-*-it, without tools and images): <|turn>role ... <turn|>, the system
# prompt as its own turn, and a generation prompt that opens an empty thought channel when thinking is
# off, which the rendering of an answered model turn does not contain.
GEMMA4_TEMPLATE = (
    "{{ bos_token }}{% set loop_messages = messages %}{% if messages[0]['role'] in ['system', 'developer'] %}"
    "{{ '<|turn>system\\n' + messages[0]['content'] | trim + '<turn|>\\n' }}{% set loop_messages = messages[1:] %}"
    "{% endif %}{% for m in loop_messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<|turn>' + role + '\\n' + m['content'] | trim + '<turn|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\\n' }}"
    "{% if not enable_thinking | default(false) %}{{ '<|channel>thought\\n<channel|>' }}{% endif %}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# SmolLM3: ChatML behind a metadata system block whose "Reasoning Mode" is /think unless the system
# prompt says /no_think (or enable_thinking=False); in /no_think mode assistant turns open with an empty
# think block. (The real template also writes knowledge-cutoff and today's dates; left out here.)
SMOLLM3_TEMPLATE = (
    "{%- set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' -%}"
    "{%- set think = not ('/no_think' in sys or (enable_thinking is defined and not enable_thinking)) -%}"
    "{%- set empty_think = '' if think else '<think>\n\n</think>\n' -%}"
    "{{ '<|im_start|>system\n## Metadata\n\nReasoning Mode: ' + ('/think' if think else '/no_think') "
    "+ '\n\n## Custom Instructions\n\n' + (sys.replace('/no_think', '').replace('/think', '') | trim) "
    "+ '\n\n<|im_end|>\n' }}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' + empty_think + m['content'] + '<|im_end|>\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' + empty_think }}{%- endif -%}"
)
# OLMo 2 (Tulu 3 layout): <|system|>/<|user|>/<|assistant|> headers, each assistant turn ends in eos.
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '<|system|>\n' + m['content'] + '\n' }}"
    "{% elif m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + m['content'] + eos_token + ('' if loop.last else '\n') }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)
# OLMo 3 Instruct: ChatML with a default system prompt.
OLMO3_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful function-calling AI assistant. "
    "You do not currently have access to any functions.<|im_end|>\n' }}"
    "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Regexes that split text before byte-level BPE (the published Qwen2 and Llama-3 pre-tokenizers).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Mistral's Tekken (tiktoken-style) split, as in its tokenizer.json; llama.cpp's pre-tokenizer "tekken".
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<pad>")
# OpenAI's o200k split (gpt-4o, gpt-oss); llama.cpp's pre-tokenizer "gpt-4o".
O200K_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# transformers' gpt-oss yarn does not round its correction range ("truncate": false); ggml always does
# (ggml_rope_yarn_corr_dims), which moves this tiny model's logits by up to 4e-2. The tiny model rounds
# like ggml, so the f32 GGUF is checked to 1e-3; the converter notes the difference on real checkpoints.
TRUNCATE_YARN = True
# Qwen3.5's: Qwen2's with combining marks (\p{M}) kept inside words (llama.cpp's "qwen35" pre-tokenizer)
QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# Tool-calling templates in three families' layouts, for tests of tool data (the tiny families keep their
# plain templates above, which have no tool support). Qwen3: tools as JSON lines in the system turn, calls
# as <tool_call> JSON, results as <tool_response> blocks in a user turn, reasoning only after the last
# user message. Llama 3.1: tools in the first user turn, a call as bare {"name", "parameters"} JSON,
# results in an ipython turn, no reasoning. Mistral v3: tools before the last user turn in
# [AVAILABLE_TOOLS], calls as [TOOL_CALLS] with nine-character ids, results in [TOOL_RESULTS].
QWEN3_TOOL_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' + (messages[0].content + '\\n\\n' if messages[0].role == 'system' else '') -}}"
    "{{- '# Tools\\n\\n<tools>' -}}{%- for t in tools -%}{{- '\\n' + t | tojson -}}{%- endfor -%}"
    '{{- \'\\n</tools>\\n\\nCall a function as <tool_call>{"name": ..., "arguments": ...}</tool_call>.\' -}}'
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif messages[0].role == 'system' -%}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}{{- '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- set think = m.reasoning_content if m.reasoning_content is string else '' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last_user and (loop.last or think) -%}"
    "{{- '<think>\\n' + think + '\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- m.content -}}"
    "{%- for c in m.tool_calls or [] -%}"
    "{{- ('\\n' if m.content or not loop.first else '') + '<tool_call>\\n{\"name\": \"' + c.function.name -}}"
    "{{- '\", \"arguments\": ' + c.function.arguments | tojson + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
LLAMA3_TOOL_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0].role == 'system' -%}{%- set sys = messages[0].content -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set sys = '' -%}{%- set rest = messages -%}{%- endif -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ('Environment: ipython\\n\\n' if tools else '') -}}"
    "{{- sys + '<|eot_id|>' -}}"
    "{%- for m in rest -%}"
    "{%- if m.role == 'user' and tools and loop.first -%}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\nAnswer with a JSON function call to one of these:\\n\\n' -}}"
    "{%- for t in tools -%}{{- t | tojson + '\\n\\n' -}}{%- endfor -%}{{- m.content | trim + '<|eot_id|>' -}}"
    "{%- elif m.role == 'assistant' and m.tool_calls -%}"
    "{%- set c = m.tool_calls[0].function -%}"
    '{{- \'<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "\' + c.name + \'", "parameters": \' -}}'
    "{{- c.arguments | tojson + '}<|eot_id|>' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' -}}"
    "{%- else -%}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)
MISTRAL_TOOL_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set sys = messages[0].content if messages[0].role == 'system' else '' -%}"
    "{%- set rest = messages[1:] if messages[0].role == 'system' else messages -%}"
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in rest -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in rest -%}"
    "{%- if m.role == 'user' -%}"
    "{%- if tools and loop.index0 == ns.last_user -%}"
    "{{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' -}}{%- endif -%}"
    "{{- '[INST] ' + (sys + '\\n\\n' if sys and loop.index0 == ns.last_user else '') + m.content + '[/INST]' -}}"
    "{%- elif m.role == 'assistant' and m.tool_calls -%}"
    "{{- '[TOOL_CALLS] [' -}}"
    "{%- for c in m.tool_calls -%}"
    "{%- if c.id is not string or c.id | length != 9 -%}"
    "{{- raise_exception('Tool call ids must be nine letters and digits') -}}{%- endif -%}"
    '{{- \'{"name": "\' + c.function.name + \'", "arguments": \' + c.function.arguments | tojson -}}'
    "{{- ', \"id\": \"' + c.id + '\"}' + ('' if loop.last else ', ') -}}"
    "{%- endfor -%}"
    "{{- ']' + eos_token -}}"
    "{%- elif m.role == 'assistant' -%}{{- ' ' + m.content + eos_token -}}"
    "{%- elif m.role == 'tool' -%}"
    '{{- \'[TOOL_RESULTS] {"content": \' + m.content | tojson + \', "call_id": "\' + m.tool_call_id -}}'
    "{{- '\"}[/TOOL_RESULTS]' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


@dataclass(frozen=True)
class Family:
    tokenizer: str  # spm-llama, spm-gemma; bpe-: qwen, qwen35, llama3, granite, tekken, o200k, gemma4
    template: str
    specials: tuple[str, ...]  # chat-control tokens, never split
    bos: str | None
    eos: str
    pad: str | None = None
    tie_embeddings: bool = False
    add_bos: bool = True  # the tokenizer itself prepends bos (False: only the template writes it, as OLMo's)


FAMILIES: dict[str, Family] = {
    "llama": Family("spm-llama", LLAMA2_TEMPLATE, ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"), "<s>", "</s>"),
    "llama3": Family(
        "bpe-llama3",
        LLAMA3_TEMPLATE,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "mistral": Family("spm-llama", MISTRAL_TEMPLATE, ("[INST]", "[/INST]"), "<s>", "</s>"),
    "qwen2": Family(
        "bpe-qwen",
        QWEN2_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        None,
        "<|im_end|>",
        pad="<|endoftext|>",
        tie_embeddings=True,
    ),
    "qwen3": Family(
        "bpe-qwen",
        QWEN3_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        None,
        "<|im_end|>",
        pad="<|endoftext|>",
        tie_embeddings=True,
    ),
    "qwen3_5": Family(
        "bpe-qwen35",
        QWEN3_5_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        None,
        "<|im_end|>",
        pad="<|endoftext|>",
    ),
    "gemma": Family(
        "spm-gemma",
        GEMMA_TEMPLATE,
        ("<start_of_turn>", "<end_of_turn>"),
        "<bos>",
        "<eos>",
        pad="<pad>",
        tie_embeddings=True,
    ),
    "gemma2": Family(
        "spm-gemma",
        GEMMA_TEMPLATE,
        ("<start_of_turn>", "<end_of_turn>"),
        "<bos>",
        "<eos>",
        pad="<pad>",
        tie_embeddings=True,
    ),
    "gemma3": Family(
        "spm-gemma",
        GEMMA3_TEMPLATE,
        ("<start_of_turn>", "<end_of_turn>"),
        "<bos>",
        "<eos>",
        pad="<pad>",
        tie_embeddings=True,
    ),
    "gemma4": Family(
        "bpe-gemma4",
        GEMMA4_TEMPLATE,
        ("<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>"),
        "<bos>",
        "<eos>",
        pad="<pad>",
        tie_embeddings=True,
    ),
    "phi3": Family(
        "spm-llama",
        PHI3_TEMPLATE,
        ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
        "<s>",
        "<|endoftext|>",
    ),
    # Granite 3.x: StarCoder-style byte-level BPE (single digits, GPT-2 split), no BOS added.
    "granite": Family(
        "bpe-granite",
        GRANITE_TEMPLATE,
        ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
        None,
        "<|end_of_text|>",
        pad="<|end_of_text|>",
        tie_embeddings=True,
    ),
    "ministral": Family("bpe-tekken", MINISTRAL_TEMPLATE, TEKKEN_SPECIALS, "<s>", "</s>", pad="<pad>"),
    "ministral3": Family(
        "bpe-tekken", MISTRAL3_TEMPLATE, TEKKEN_SPECIALS, "<s>", "</s>", pad="<pad>", tie_embeddings=True
    ),
    # SmolLM3's tokenizer is Llama 3's byte-level BPE; its chat is ChatML.
    "smollm3": Family(
        "bpe-llama3",
        SMOLLM3_TEMPLATE,
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|im_start|>",
            "<|im_end|>",
            "<think>",
            "</think>",
            "<|finetune_right_pad_id|>",
        ),
        "<|begin_of_text|>",
        "<|im_end|>",
        pad="<|finetune_right_pad_id|>",
        tie_embeddings=True,
    ),
    # OLMo 2/3 use dolma2, a cl100k-style byte-level BPE: the same split regex as Llama 3.
    "olmo2": Family(
        "bpe-llama3",
        OLMO2_TEMPLATE,
        ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"),
        "<|endoftext|>",
        "<|endoftext|>",
        pad="<|pad|>",
        add_bos=False,
    ),
    "olmo3": Family(
        "bpe-llama3",
        OLMO3_TEMPLATE,
        ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"),
        "<|endoftext|>",
        "<|im_end|>",
        pad="<|pad|>",
        add_bos=False,
    ),
    "gpt_oss": Family(
        "bpe-o200k",
        HARMONY_TEMPLATE,
        (
            "<|startoftext|>",
            "<|endoftext|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|channel|>",
            "<|return|>",
            "<|constrain|>",
            "<|call|>",
        ),
        None,
        "<|return|>",
        pad="<|endoftext|>",
    ),
}
FAMILIES["qwen3_moe"] = replace(FAMILIES["qwen3"], tie_embeddings=False)  # Qwen3-30B-A3B has its own LM head

_WORDS = (
    "the a an model train data token learn small tiny fast slow answer question hello world time "
    "people water light number sound write read never always because between through under over "
    "café naïve über résumé 東京 数据 模型 🙂 🚀 step loss rate batch layer weight you I we they it "
    "is are was were be have has do does can will would should"
).split()


def corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences with digits, punctuation, accents, CJK, emoji and odd spacing."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 18))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        line = " ".join(words)
        line = line[0].upper() + line[1:] + rng.choice([".", "?", "!", ":", ",", "..."])
        if rng.random() < 0.1:
            line = "  " + line.replace(" ", "\t", 1)
        out.append(line)
    return out


@functools.cache
def _spm_model(style: str, user_symbols: tuple[str, ...], vocab_size: int = 600) -> bytes:
    import sentencepiece as spm

    if style == "spm-gemma":
        ids = {
            "pad_id": 0,
            "eos_id": 1,
            "bos_id": 2,
            "unk_id": 3,
            "pad_piece": "<pad>",
            "eos_piece": "<eos>",
            "bos_piece": "<bos>",
            "unk_piece": "<unk>",
            "add_dummy_prefix": False,
        }
    else:
        ids = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1, "add_dummy_prefix": True}
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=list(user_symbols),
        minloglevel=2,
        num_threads=1,
        **ids,
    )
    return buf.getvalue()


def _bpe_tokenizer(style: str, specials: tuple[str, ...], vocab_size: int = 800):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    # Tekken, like llama.cpp's "tekken", takes a whole piece that is a token before trying merges.
    tok = Tokenizer(models.BPE(ignore_merges=style == "bpe-tekken"))
    if style == "bpe-granite":  # StarCoder's: each digit alone, then GPT-2's own split
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        split = {
            "bpe-qwen": QWEN2_SPLIT,
            "bpe-tekken": TEKKEN_SPLIT,
            "bpe-o200k": O200K_SPLIT,
            "bpe-qwen35": QWEN35_SPLIT,
        }.get(style, LLAMA3_SPLIT)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


GEMMA4_BASE = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0-4, as in Gemma 4's vocabulary


def _gemma4_tokenizer(specials: tuple[str, ...], vocab_size: int = 800):
    """Gemma 4's tokenizer shape: SentencePiece-style BPE in tokenizer.json (spaces normalised to "▁", no
    pre-tokenizer, <0xXX> byte fallback), built by transformers' GemmaTokenizer from trained merges.
    Training splits at newline runs, so no merge joins a newline to other text (llama.cpp's gemma4
    tokenizer splits there before merging)."""
    import json

    import transformers
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    fixed = [*GEMMA4_BASE, *specials, *(f"<0x{b:02X}>" for b in range(256))]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\n+"), behavior="isolated")
    lines = corpus()
    text = lines + ["\n".join(lines[i : i + 3]) for i in range(0, len(lines), 7)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=fixed, show_progress=False))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    gemma = transformers.GemmaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=True, add_eos_token=False)
    gemma.add_tokens(list(specials), special_tokens=True)
    return gemma


def build_tokenizer(arch: str, out_dir: str | Path):
    """Train and save `arch`'s tokenizer (with its chat template) into out_dir; return it loaded."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fam = FAMILIES[arch]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fam.tokenizer.startswith("spm"):
        # transformers v5 builds its tokenizer from tokenizer.model; keep the file for GGUF conversion.
        (out_dir / "tokenizer.model").write_bytes(_spm_model(fam.tokenizer, fam.specials))
        cls = "GemmaTokenizer" if fam.tokenizer == "spm-gemma" else "LlamaTokenizer"
        import transformers

        tok = getattr(transformers, cls).from_pretrained(out_dir, add_bos_token=True, add_eos_token=False)
        tok.add_tokens(list(fam.specials), special_tokens=True)
        tok.eos_token = fam.eos
        if fam.pad:
            tok.pad_token = fam.pad
    elif fam.tokenizer == "bpe-gemma4":
        tok = _gemma4_tokenizer(fam.specials)
        tok.eos_token = fam.eos
    else:
        from tokenizers import processors

        backend = _bpe_tokenizer(fam.tokenizer, fam.specials)
        if fam.bos and fam.add_bos:
            bos_id = backend.token_to_id(fam.bos)
            backend.post_processor = processors.TemplateProcessing(
                single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)]
            )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=fam.bos,
            eos_token=fam.eos,
            pad_token=fam.pad,
            additional_special_tokens=list(fam.specials),
        )
    tok.chat_template = fam.template
    tok.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def tiny_config(arch: str, vocab_size: int, tokenizer):
    """A 2-layer configuration of `arch` (4 where its layer pattern needs them), small enough to build and run in a
    fraction of a second."""
    import transformers

    fam = FAMILIES[arch]
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=64**-0.5,
        tie_word_embeddings=fam.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch in ("llama", "llama3"):
        return transformers.LlamaConfig(**common)
    if arch == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common)
    if arch == "qwen3_5":
        return qwen3_5_config(common)
    if arch == "gemma":
        return transformers.GemmaConfig(**common, hidden_activation="gelu_pytorch_tanh")
    if arch == "gemma2":
        return transformers.Gemma2Config(**common, query_pre_attn_scalar=16, sliding_window=64)
    if arch == "gemma3":
        return transformers.Gemma3TextConfig(**common, query_pre_attn_scalar=16, sliding_window=64)
    if arch == "gemma4":
        return gemma4_config(common)
    if arch == "phi3":
        common.pop("head_dim")
        return transformers.Phi3Config(**common)
    if arch == "granite":  # multipliers away from 1 (and from 1/sqrt(head_dim)) so each one is checked
        common.pop("head_dim")
        return transformers.GraniteConfig(
            **common,
            embedding_multiplier=12.0,
            residual_multiplier=0.5,
            attention_multiplier=0.125,
            logits_scaling=1.25,
        )
    if arch == "ministral":  # alternating sliding/full layers; llama.cpp runs both as full attention
        return transformers.MinistralConfig(
            **common, sliding_window=256, layer_types=["sliding_attention", "full_attention"]
        )
    if arch == "ministral3":  # yarn, and llama4 attention temperature from position 16 on (inside the prompt)
        rope = {
            "rope_type": "yarn",
            "rope_theta": 1e6,
            "factor": 32.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "llama_4_scaling_beta": 0.1,
        }
        return transformers.Ministral3Config(**common, rope_parameters=rope)
    if arch == "smollm3":  # 4 layers: the 4th has no rope (no_rope_layer_interval 4)
        return transformers.SmolLM3Config(**{**common, "num_hidden_layers": 4})
    if arch == "olmo2":
        return transformers.Olmo2Config(**common)
    if arch == "olmo3":  # 4 layers: 3 sliding-window ones, then one full; a window shorter than test prompts
        return transformers.Olmo3Config(**{**common, "num_hidden_layers": 4}, sliding_window=16)
    if arch == "qwen3_moe":  # every layer sparse: 4 experts, 2 routed per token
        return transformers.Qwen3MoeConfig(
            **common, moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True
        )
    if arch == "gpt_oss":  # sliding then full attention, sinks, yarn rope, biases, 4 experts (2 routed)
        common["intermediate_size"] = 64  # gpt-oss's intermediate_size is the expert width
        common["max_position_embeddings"] = 32 * 4096  # yarn's factor times its original context
        rope = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0}
        rope |= {"original_max_position_embeddings": 4096, "truncate": TRUNCATE_YARN}
        return transformers.GptOssConfig(
            **common, num_local_experts=4, num_experts_per_tok=2, sliding_window=16, rope_parameters=rope
        )
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


def gemma4_config(common: dict):
    """Gemma 4 text, E2B-style: per-layer input embeddings, the last 2 of 4 layers reusing the KV of layers
    0 (sliding) and 1 (full), full layers with a wider head, one KV head shared as keys and values
    (attention_k_eq_v, as in 26B/31B) and proportional rope on a quarter of it, double-wide MLPs in the
    KV-sharing layers, a 16-token window (shorter than test rows), final logit soft-capping."""
    import transformers

    return transformers.Gemma4TextConfig(
        **{**common, "num_hidden_layers": 4},
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=16,
        global_head_dim=32,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=common["vocab_size"],
        final_logit_softcapping=30.0,
    )


def qwen3_5_config(common: dict):
    """Qwen3.5 text: 3 gated-delta-net (linear attention) layers then 1 full-attention layer, as the real
    pattern; twice as many value heads as key heads (the real ratio), so the head reordering the GGUF
    needs is exercised; real rope: 1/4 of the head dim rotated, interleaved M-RoPE sections."""
    import transformers

    return transformers.Qwen3_5TextConfig(
        **{**common, "num_hidden_layers": 4, "head_dim": 32},
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,  # llama.cpp's qwen35 needs key and value head dims equal
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10_000_000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },
    )


def build_tiny_model(arch: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random `arch` model with its tokenizer as a Hugging Face folder; return the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(arch, out_dir)
    config = tiny_config(arch, len(tokenizer), tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms away from 1 so layout mistakes show up in logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif arch == "gpt_oss" and "bias" in name:  # zero-initialised biases would hide their layout
                p.normal_(std=0.1)
            if name.endswith(("mlp.gate.weight", "mlp.router.weight")):  # routers: wider logit gaps, so a
                p.mul_(3.0)  # 16-bit GGUF's rounding does not flip a token's top-k experts
        for name, b in model.named_buffers():  # Gemma 4's per-layer output scale (a saved buffer, 1 at init)
            if name.endswith("layer_scalar"):
                b.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir)
    return out_dir


def build_tiny_mistral3(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny Mistral3ForConditionalGeneration (Pixtral vision tower + the tiny ministral3 text model), saved
    as transformers saves it; AutoModelForCausalLM cannot load it (localtune.model.text_only can)."""
    import torch
    import transformers

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer("ministral3", out_dir)
    vision = transformers.PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, head_dim=16, image_size=32
    )
    text = tiny_config("ministral3", len(tokenizer), tokenizer)
    config = transformers.Mistral3Config(vision_config=vision, text_config=text, image_token_index=7)
    torch.manual_seed(seed)
    model = transformers.Mistral3ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return out_dir


@functools.cache
def cached_tiny_model(arch: str) -> Path:
    """A tiny model built once per process in a temporary folder (for benchmarks and quick checks)."""
    root = Path(tempfile.mkdtemp(prefix=f"localtune-tiny-{arch}-"))
    return build_tiny_model(arch, root)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ARCHITECTURES:
        sys.exit(f"usage: python -m localtune.model.tiny {{{','.join(ARCHITECTURES)}}} OUT_DIR")
    target = Path(sys.argv[2])
    if target.exists():
        shutil.rmtree(target)
    print(build_tiny_model(sys.argv[1], target))
