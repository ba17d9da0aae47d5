#!/usr/bin/env python3
"""Chat-template golden renders, by HF transformers' `apply_chat_template(..., tokenize=False)`.

For each template below, renders a fixed set of conversations with and without
`add_generation_prompt` and writes fixtures/chat/<name>.json:

  {
    "name": "...", "description": "...", "transformers_version": "...",
    "template": "<jinja source>", "bos_token": "..." | null, "eos_token": "..." | null,
    "cases": [
      {"name": "...", "messages": [{"role": "...", "content": "..."}, ...],
       "add_generation_prompt": true|false,
       "expected": "<rendered text>"}          # or, when the template raises:
       "expected_error": "<raise_exception message>"}
    ]
  }

Templates:
  smollm2   SmolLM2-135M-Instruct's template, read from the GGUF metadata with the `gguf` package
  qwen2     Qwen2.5-Instruct's template (whitespace control, tools branch, tool-role messages)
  llama3    Llama-3-Instruct's template (bos_token, `| trim` precedence)
  llama31   a Llama-3.1-style template (system extraction, `messages[1:]`, date_string default)
  llama2    a Llama-2-style template that calls raise_exception on a bad role or non-alternating turns
  features  a synthetic template pinning HF specifics: tojson (indent, sort_keys, separators, unicode,
            no HTML escaping), Python printing of True/None/lists/dicts, str/dict methods, namespace,
            loop controls, {% generation %}, tools/documents passed as None, comments

The tokenizer behind `apply_chat_template` is a one-token stand-in carrying only bos/eos, so the template
sees exactly `messages`, `tools`, `documents`, `add_generation_prompt`, `bos_token`, `eos_token`.

Usage: python scripts/reference/chat_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import json
import sys
from pathlib import Path

import jinja2
import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "chat"
DEFAULT_GGUF = ROOT / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

TRICKY = "  Ça va? 😀 <b>&amp;</b> \"double\" 'single' back\\slash\ttab\n  second line  \n"

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+3?"},
    ],
    "user_only": [
        {"role": "user", "content": "Hello there!"},
    ],
    "multi_turn": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ],
    "multi_turn_no_system": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello! How can I help? "},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "No."},
    ],
    "tricky_text": [
        {"role": "user", "content": TRICKY},
        {"role": "assistant", "content": "{{ not a template }} {% neither %}"},
        {"role": "user", "content": ""},
    ],
}

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- else %}
        {{- raise_exception("Tool calls are not supported by this template.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

LLAMA2 = (
    "{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}{% endfor %}"
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

FEATURES = """{%- set ns = namespace(n=0, sys='') -%}
{% for m in messages %}
  {% if m.role == 'system' %}
    {% set ns.sys = m.content.strip() %}
    {% continue %}
  {% endif %}
  {% set ns.n = ns.n + 1 %}
[{{ loop.index }}/{{ loop.length }}] {{ m.role.upper() }}: {{ m.content | trim }}
  json: {{ m | tojson }}
  json-indent: {{ m | tojson(indent=2) }}
  sorted: {{ m | tojson(sort_keys=true, separators=(',', ':')) }}
  ascii: {{ m.content | tojson(ensure_ascii=true) }}
  items: {% for k, v in m.items() %}{{ k }}={{ v | length }};{% endfor %}

  words: {{ m.content.split() | length }} hello: {{ m.content.lower().startswith('hello') }} get: {{ m.get('name', 'anon') }}
{% generation %}{{ m.content.replace('a', 'A') }}{% endgeneration %}
  {% if loop.index >= 3 %}{% break %}{% endif %}
{% endfor %}
system={{ ns.sys | tojson }} n={{ ns.n }} none={{ none }} true={{ true }} false={{ 1 > 2 }}
list={{ [1, 'two', 3.5, none] }} dict={{ {'a': 1, 'b': [true]} }} nested={{ {'k': {'x': 'y'}} | tojson(indent=1) }}
empty={{ [] | tojson }} {{ {} | tojson(indent=2) }} float={{ 1.0 }} {{ [0.5, 2.0] | tojson }}
tools={{ tools }} tools-defined={{ tools is defined }} docs-none={{ documents is none }}
bos={{ bos_token }} eos={{ eos_token }} gen={{ add_generation_prompt }}
roles={{ messages | map(attribute='role') | join(',') }} last={{ (messages | last).role }}
{# a comment line #}
{% if add_generation_prompt %}ASSISTANT:{% endif %}
"""


def smollm2_template(gguf_path: Path):
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    template = reader.fields["tokenizer.chat_template"].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    bos = tokens[reader.fields["tokenizer.ggml.bos_token_id"].contents()]
    eos = tokens[reader.fields["tokenizer.ggml.eos_token_id"].contents()]
    return template, bos, eos


def stand_in_tokenizer(template: str, bos, eos) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **kwargs)
    extra = set(tok.special_tokens_map) - {"bos_token", "eos_token"}
    assert not extra, f"stand-in tokenizer exposes more special tokens than bos/eos: {extra}"
    return tok


def render_cases(template: str, bos, eos, conversations: dict) -> list:
    tok = stand_in_tokenizer(template, bos, eos)
    cases = []
    for conv_name, messages in conversations.items():
        for gen in (False, True):
            case = {
                "name": f"{conv_name}{'+gen' if gen else ''}",
                "messages": messages,
                "add_generation_prompt": gen,
            }
            try:
                case["expected"] = tok.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=gen
                )
            except jinja2.exceptions.TemplateError as e:
                case["expected_error"] = str(e)
            cases.append(case)
    return cases


def write(name: str, description: str, template: str, bos, eos, conversations: dict) -> None:
    cases = render_cases(template, bos, eos, conversations)
    doc = {
        "name": name,
        "description": description,
        "transformers_version": transformers.__version__,
        "template": template,
        "bos_token": bos,
        "eos_token": eos,
        "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    errors = sum("expected_error" in c for c in cases)
    print(f"{name}: {len(cases)} cases ({errors} raising)")


def main() -> None:
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    template, bos, eos = smollm2_template(gguf)
    write(
        "smollm2",
        f"SmolLM2-135M-Instruct, template and bos/eos from GGUF metadata of {gguf.name}",
        template,
        bos,
        eos,
        CONVERSATIONS,
    )
    with_tool = dict(CONVERSATIONS)
    with_tool["tool_messages"] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "{\"sky\": \"clear\"}"},
        {"role": "user", "content": "Thanks"},
    ]
    write("qwen2", "Qwen2.5-Instruct chat template", QWEN25, None, "<|im_end|>", with_tool)
    write("llama3", "Llama-3-Instruct chat template", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", CONVERSATIONS)
    llama31 = dict(CONVERSATIONS)
    llama31["tool_role_raises"] = [
        {"role": "user", "content": "Weather?"},
        {"role": "tool", "content": "sunny"},
    ]
    write(
        "llama31",
        "Llama-3.1-style template (tools removed; a tool message raises)",
        LLAMA31,
        "<|begin_of_text|>",
        "<|eot_id|>",
        llama31,
    )
    llama2 = dict(CONVERSATIONS)
    llama2["bad_role"] = [
        {"role": "user", "content": "Hi"},
        {"role": "robot", "content": "beep"},
    ]
    llama2["not_alternating"] = [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Hi again"},
    ]
    write(
        "llama2",
        "Llama-2-style template calling raise_exception on unknown roles and non-alternating turns",
        LLAMA2,
        "<s>",
        "</s>",
        llama2,
    )
    write(
        "features",
        "synthetic template pinning HF/Jinja2 specifics (tojson, Python printing, methods, loop controls)",
        FEATURES,
        "<s>",
        "</s>",
        CONVERSATIONS,
    )


if __name__ == "__main__":
    main()
