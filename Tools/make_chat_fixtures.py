#!/usr/bin/env python3
"""Renders the ChatTemplate test fixtures with Python's jinja2, configured as transformers'
`apply_chat_template` configures it (transformers/utils/chat_template_utils.py):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, generation tag]),
`tojson` = json.dumps(ensure_ascii=False, indent=None, separators=None, sort_keys=False), and the globals
raise_exception and strftime_now (here with the date pinned to 2026-01-15 10:30:00).
Variables: messages, tools=None, documents=None, add_generation_prompt, bos_token, eos_token, **extra.

Usage: python3 Tools/make_chat_fixtures.py [path/to/SmolLM2.gguf]
Writes Tests/ChatTemplateTests/Fixtures/{cases.json,smollm2.jinja}."""
import json, os, sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "ChatTemplateTests", "Fixtures")
PINNED = datetime(2026, 1, 15, 10, 30, 0)


class Generation(Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_gen"), [], [], body).set_lineno(lineno)

    def _gen(self, caller):
        return caller()


class Raised(Exception):
    pass


def raise_exception(message):
    raise Raised(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return PINNED.strftime(fmt)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now


def smollm2_template(path):
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def sort_keys_deep(x):
    if isinstance(x, dict):
        return {k: sort_keys_deep(x[k]) for k in sorted(x)}
    if isinstance(x, list):
        return [sort_keys_deep(v) for v in x]
    return x


def M(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CONVERSATIONS = {
    "user": M(("user", "Hello!")),
    "sys_user": M(("system", "You are terse."), ("user", "What is 2+2?")),
    "multi": M(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")),
    "nosys_multi": M(("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")),
    "tricky": M(("user", "  spaced out \n\n"), ("assistant", "Quotes \" and ' and \\ and <tag> & {{ not jinja }}"),
                ("user", "héllo wörld 👋 世界\ttab")),
    "empty": [],
    "bad_alternation": M(("user", "one"), ("user", "two")),
    "system_only": M(("system", "Only a system prompt.")),
}

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city — in °C",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

LLAMA3 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
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
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

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
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
         "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
         "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
          "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
          "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")

DEEPSEEK = """{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}
{%- set ns = namespace(found=false, system_prompt='', is_first=true) -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}
        {%- set ns.found = true -%}
        {%- if ns.is_first -%}{%- set ns.system_prompt = message['content'] -%}{%- set ns.is_first = false -%}
        {%- else -%}{%- set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] -%}{%- endif -%}
    {%- endif -%}
{%- endfor -%}
{{ bos_token }}{{ ns.system_prompt }}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {%- set content = message['content'] %}
        {%- if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}
        {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor -%}
{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"""

COMMAND_R_LIKE = """{%- macro turn(role, text) -%}
<|START_OF_TURN_TOKEN|><|{{ role | upper }}_TOKEN|>{{ text }}<|END_OF_TURN_TOKEN|>
{%- endmacro -%}
{{ bos_token }}
{%- if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set sys = messages[0]['content'] %}
{%- else %}{% set loop_messages = messages %}{% set sys = 'You are a helpful assistant.' %}{% endif %}
{{- turn('system', sys) }}
{%- for m in loop_messages %}{{ turn(m.role if m.role != 'assistant' else 'chatbot', m.content | trim) }}{% endfor %}
{%- if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"""

FAMILIES = {
    "llama3": (LLAMA3, ["user", "sys_user", "multi", "tricky"]),
    "qwen25": (QWEN25, ["user", "sys_user", "multi", "tricky"]),
    "mistral": (MISTRAL, ["user", "nosys_multi", "tricky", "bad_alternation", "sys_user"]),
    "gemma": (GEMMA, ["user", "nosys_multi", "tricky", "sys_user", "bad_alternation"]),
    "gemma3": (GEMMA3, ["user", "sys_user", "multi", "tricky", "bad_alternation"]),
    "chatml": (CHATML, ["user", "multi", "tricky", "empty"]),
    "zephyr": (ZEPHYR, ["user", "multi", "tricky", "empty"]),
    "llama2": (LLAMA2, ["user", "multi", "nosys_multi", "tricky"]),
    "phi3": (PHI3, ["multi", "tricky"]),
    "deepseek": (DEEPSEEK, ["multi", "nosys_multi", "system_only"]),
    "command_r_like": (COMMAND_R_LIKE, ["user", "multi", "tricky"]),
}

EXTRA = {
    "n": 3, "f": 2.5, "s": "  Hello World, hello-jinja (x)  ", "big": 1e16, "small": 0.0001, "tiny": 1e-05, "neg": -7,
    "flag": True, "nothing": None, "words": ["b", "a", "C"], "nums": [3, 1, 2],
    "people": [{"name": "Ann", "age": 31, "admin": True}, {"name": "bob", "age": 25, "admin": False}, {"name": "Cy", "age": 40}],
    "d": {"zeta": 1, "alpha": [1, 2.0, "x"], "mid": {"k": None, "t": True}}, "uni": "héllo 👋 世界 \"q\" \\ </s>\n",
    "multiline": "line one\n\nline three\n  indented",
}

# Small templates exercising one construct each (rendered with the "multi" conversation and EXTRA).
SMALL = [
    ("for_loop_vars", "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }} {% endfor %}"),
    ("for_prev_next", "{% for x in nums %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}"),
    ("for_else", "{% for x in [] %}no{% else %}empty{% endfor %}|{% for x in nums if x > 5 %}{{ x }}{% else %}none>5{% endfor %}"),
    ("for_filter_length", "{% for x in nums if x != 1 %}{{ loop.index }}:{{ x }}/{{ loop.length }} {% endfor %}"),
    ("for_items_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }},{% endfor %}"),
    ("for_dict_filter_items", "{% for k, v in d|items %}{{ k }}:{{ v|tojson }} {% endfor %}"),
    ("for_nested_scope", "{% set x = 'outer' %}{% for i in range(2) %}{% set x = 'inner' ~ i %}{{ x }} {% endfor %}{{ x }}"),
    ("for_break_continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
    ("for_nested_loop", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }};{% endfor %}"),
    ("for_cycle", "{% for x in nums %}{{ loop.cycle('odd', 'even') }} {% endfor %}"),
    ("if_elif_else", "{% for x in [1, 2, 3, 4] %}{% if x == 1 %}one{% elif x == 2 %}two{% elif x is even %}even{% else %}other{% endif %} {% endfor %}"),
    ("if_set_leaks", "{% if true %}{% set y = 'set in if' %}{% endif %}{{ y }}"),
    ("namespace", "{% set ns = namespace(count=0, last='') %}{% for m in messages %}{% set ns.count = ns.count + 1 %}{% set ns.last = m.role %}{% endfor %}{{ ns.count }} {{ ns.last }}"),
    ("set_tuple_and_block", "{% set a, b = 1, 'two' %}{{ a }}{{ b }}{% set blk %}  inside {{ a }}  {% endset %}[{{ blk }}]"),
    ("macro_defaults", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', punct='?') }} {{ greet(name='Cy') }}"),
    ("filters_string", "{{ s|trim }}|{{ s|upper }}|{{ s|lower }}|{{ s|title }}|{{ s|capitalize }}|{{ s|trim|replace('l', 'L') }}|{{ s|length }}|{{ 'a-b c'|title }}"),
    ("filters_list", "{{ words|join(', ') }}|{{ words|first }}|{{ words|last }}|{{ words|length }}|{{ words|sort|join }}|{{ nums|sort(reverse=true)|list }}|{{ words|reverse|list }}|{{ 'abc'|list }}"),
    ("filters_default", "{{ missing|default('dflt') }}|{{ nothing|default('x') }}|{{ ''|default('empty', true) }}|{{ missing|d('d') }}|{{ flag|default(false) }}"),
    ("filters_numbers", "{{ '42'|int + 1 }}|{{ '4.7'|int }}|{{ 'x'|int }}|{{ 'x'|int(7) }}|{{ f|int }}|{{ n|float }}|{{ '2.5'|float * 2 }}|{{ neg|abs }}|{{ 2.567|round(2) }}|{{ 2.5|round }}|{{ nums|sum }}|{{ nums|max }}|{{ nums|min }}"),
    ("filters_string_conv", "{{ n|string ~ 'x' }}|{{ nothing|string }}|{{ flag|string }}|{{ d|string }}|{{ words|string }}|{{ f|string }}"),
    ("tojson_basic", "{{ d|tojson }}|{{ uni|tojson }}|{{ people|tojson }}|{{ nothing|tojson }}|{{ 'x'|tojson }}|{{ [1.0, 2.5, big, small]|tojson }}"),
    ("tojson_indent", "{{ d|tojson(indent=2) }}\n{{ people[0]|tojson(indent=4) }}\n{{ []|tojson(indent=2) }}{{ {}|tojson(indent=2) }}"),
    ("tojson_options", "{{ d|tojson(sort_keys=true) }}|{{ d|tojson(separators=(',', ':')) }}|{{ uni|tojson(ensure_ascii=true) }}"),
    ("selectattr_map", "{{ people|selectattr('admin')|map(attribute='name')|join(',') }}|{{ people|rejectattr('admin')|map(attribute='name')|list }}|{{ people|selectattr('age', 'gt', 30)|map(attribute='name')|join }}|{{ messages|selectattr('role', 'equalto', 'user')|list|length }}|{{ people|map(attribute='name')|map('upper')|join('-') }}"),
    ("select_reject", "{{ nums|select('odd')|list }}|{{ nums|reject('odd')|list }}|{{ [0, 1, '', 'a', none]|select|list }}"),
    ("indent_filter", "[{{ multiline|indent }}]\n[{{ multiline|indent(2, true) }}]\n[{{ multiline|indent(width=3, first=true, blank=true) }}]"),
    ("tests", "{{ missing is defined }}{{ n is defined }}{{ nothing is none }}{{ s is string }}{{ n is number }}{{ f is number }}{{ d is mapping }}{{ words is iterable }}{{ n is not string }}{{ missing is undefined }}{{ n is odd }}{{ 10 is divisibleby 5 }}{{ flag is boolean }}{{ n is integer }}{{ f is float }}{{ 'x' is in 'xyz' }}{{ n is sameas 3 }}{{ nothing is not none }}"),
    ("operators_arith", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 10 / 4 }} {{ 6 / 3 }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }} {{ -n }} {{ 0.1 + 0.2 }} {{ 1e15 }} {{ big }} {{ small }} {{ tiny }} {{ 3.0 }} {{ 1/3 }}"),
    ("operators_logic", "{{ 1 and 'x' }}|{{ 0 or 'y' }}|{{ none or [] }}|{{ not 0 }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 'a' in 'cat' }}|{{ 'z' not in 'cat' }}|{{ 2 in nums }}|{{ 'alpha' in d }}|{{ 1 == 1.0 }}|{{ 'a' != 'b' }}|{{ 'abc' < 'abd' }}|{{ true == 1 }}"),
    ("operators_concat", "{{ 'a' ~ 1 ~ none ~ true ~ missing }}|{{ n ~ f }}|{{ 'x' + 'y' }}"),
    ("slicing", "{{ s[::-1] }}|{{ s[2:] }}|{{ s[:4] }}|{{ words[1:] }}|{{ words[-1] }}|{{ nums[::2] }}|{{ s[-5:-2] }}|{{ uni[0:7] }}|{{ uni[::-1]|length }}|{{ messages[1:]|length }}|{{ 'abcdef'[5:1:-2] }}"),
    ("indexing_access", "{{ messages[0]['role'] }}|{{ messages[0].content }}|{{ messages[-1].role }}|{{ d['mid']['t'] }}|{{ d.mid.k }}|{{ d.alpha[2] }}|{{ messages[0].missing }}|{{ d['nope'] }}|{{ words.0 }}|{{ d.get('zeta') }}|{{ d.get('nope', 'fallback') }}|{{ d.get('nope') }}"),
    ("string_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip().startswith('Hello') }}|{{ s.strip().endswith(')') }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ s.upper() }}|{{ s.lower() }}|{{ s.replace('l', '_') }}|{{ 'xxhixx'.strip('x') }}|{{ s.strip().title() }}|{{ 'a-b'.split('-')[-1] }}|{{ ', '.join(words) }}|{{ 'abcabc'.find('c') }}|{{ 'abcabc'.count('b') }}"),
    ("dict_methods", "{{ d.keys()|list }}|{{ d.values()|list|length }}|{% for k, v in people[0].items() %}{{ k }}={{ v }} {% endfor %}|{{ d.items()|list|first }}"),
    ("literals", "{{ [1, 'two', 3.0, none, true, false, True, False, None] }}|{{ {'a': 1, 'b': [2]} }}|{{ ('t', 1) }}|{{ 'it\\'s' }}|{{ \"say \\\"hi\\\"\" }}|{{ 'tab\\there' }}|{{ 'nl\\nhere' }}|{{ 'uni\\u00e9' }}|{{ 'adj' 'acent' }}|{{ 1_000 }}|{{ 0x1f }}|{{ 2.5e3 }}"),
    ("repr_strings", "{{ ['it\\'s', 'quote\"d', 'both\\'\"', 'back\\\\slash', 'nl\\n'] }}"),
    ("ternary", "{{ 'yes' if flag else 'no' }}|{{ 'yes' if nothing else 'no' }}|[{{ 'only' if false }}]|{{ (1 if n > 2 else 2) + 10 }}"),
    ("range_fn", "{{ range(3)|list }}|{{ range(1, 4)|list }}|{{ range(10, 0, -3)|list }}|{% for i in range(n) %}{{ i }}{% endfor %}"),
    ("strftime", "{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%A %B %-d %I%p %j %y') }}"),
    ("filter_precedence", "{{ messages|length - 1 }}|{{ -n|abs }}|{{ words|join(',')|upper }}|{{ 'a' ~ 'b'|upper }}|{{ not flag is true }}"),
    ("generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}<{{ m.role }}>{% endif %}{% endfor %}"),
    ("raw_block", "{% raw %}{{ not rendered }} {% if %}{% endraw %}|{{ n }}"),
    ("comments", "a{# a comment #}b{# multi\nline #}c\n  {# indented comment #}\nd {#- stripped -#}   e"),
    ("filter_block", "{% filter upper %}shout {{ n }}{% endfilter %}"),
    ("undefined_behaviour", "[{{ missing }}]{{ missing|length }}{% for x in missing %}x{% endfor %}{% if not missing %}falsy{% endif %}{{ missing is none }}{{ messages[0].nope is defined }}"),
    ("messages_system_check", "{% if messages[0]['role'] == 'system' %}S:{{ messages[0]['content'] }}{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}{% for m in rest %}|{{ m.role }}{% endfor %}"),
    # Whitespace control.
    ("ws_trim_blocks", "{% if true %}\nline\n{% endif %}\nafter\n"),
    ("ws_lstrip_blocks", "start\n    {% if true %}\n    indented\n    {% endif %}\nend"),
    ("ws_lstrip_not_variables", "start\n    {{ 'var' }}\n  end"),
    ("ws_minus_left", "a   \n  {%- if true %}b{% endif %}"),
    ("ws_minus_right", "{% if true -%}   \n  b{% endif %}"),
    ("ws_minus_var", "x  \n {{- 'y' -}} \n  z"),
    ("ws_plus_lstrip", "a\n    {%+ if true %}b{% endif %}"),
    ("ws_plus_trim", "{% if true +%}\nb{% endif %}"),
    ("ws_text_before_tag", "text {% if true %}\n  kept{% endif %}"),
    ("ws_tabs_lstrip", "\t\t{% for i in nums %}\n\t\t{{ i }}\n\t\t{% endfor %}\n"),
    ("ws_crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc\r\n"),
    ("ws_trailing_newlines", "a\n\n"),
    ("ws_comment_lstrip", "x\n   {# comment #}\ny"),
    ("ws_mixed", "{%- for m in messages -%}\n  <{{ m.role }}>\n  {%- if loop.last %} last{% endif %}\n{% endfor -%}\n!"),
]

ERRORS = [
    ("runtime_undefined_attr", "{{ missing.attr }}", "runtime"),
    ("runtime_add_types", "{{ 'a' + 1 }}", "runtime"),
    ("runtime_empty_index", "{{ messages[5].role }}", "runtime"),
    ("raise_direct", "{{ raise_exception('custom: ' ~ messages|length) }}", "raised"),
]


def render(template, messages, add_generation_prompt, bos, eos, extra):
    t = env.from_string(template)
    variables = {"messages": messages, "tools": None, "documents": None,
                 "add_generation_prompt": add_generation_prompt, "bos_token": bos, "eos_token": eos}
    variables.update(extra)
    return t.render(**variables)


def tag_floats(x):
    # JSON decoders read 2.0 back as an integer: floats in "extra" are written as {"__float__": repr}.
    if isinstance(x, float):
        return {"__float__": repr(x)}
    if isinstance(x, dict):
        return {k: tag_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [tag_floats(v) for v in x]
    return x


def case(name, template, messages, agp, bos="", eos="", extra=None, template_file=None):
    extra = sort_keys_deep(extra or {})
    c = {"name": name}
    if template_file:
        c["template_file"] = template_file
    else:
        c["template"] = template
    c.update({"messages": messages, "add_generation_prompt": agp, "bos_token": bos, "eos_token": eos,
              "extra": tag_floats(extra)})
    try:
        c["expected"] = render(template, messages, agp, bos, eos, extra)
    except Raised as e:
        c["error"] = {"kind": "raised", "message": str(e)}
    except (TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
        c["error"] = {"kind": "runtime", "message": f"{type(e).__name__}: {e}"}
    return c


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    os.makedirs(OUT, exist_ok=True)
    smol = smollm2_template(gguf_path)
    with open(os.path.join(OUT, "smollm2.jinja"), "w", encoding="utf-8", newline="") as f:
        f.write(smol)
    cases = []
    for conv in ["user", "sys_user", "multi", "nosys_multi", "tricky", "empty"]:
        for agp in [True, False]:
            cases.append(case(f"smollm2_{conv}_{'gen' if agp else 'nogen'}", smol, CONVERSATIONS[conv], agp,
                              "<|im_start|>", "<|im_end|>", template_file="smollm2.jinja"))
    for fam, (tpl, convs) in FAMILIES.items():
        for conv in convs:
            cases.append(case(f"{fam}_{conv}", tpl, CONVERSATIONS[conv], True, "<s>", "</s>"))
        cases.append(case(f"{fam}_{convs[-1]}_nogen", tpl, CONVERSATIONS[convs[-1]], False, "<s>", "</s>"))
    cases.append(case("llama3_date_string_given", LLAMA3, CONVERSATIONS["user"], True, "<|begin_of_text|>", "<|eot_id|>",
                      {"date_string": "01 Jan 2000"}))
    cases.append(case("llama3_tools_system", LLAMA3, CONVERSATIONS["sys_user"], True, "<|begin_of_text|>", "<|eot_id|>",
                      {"tools": TOOLS, "tools_in_user_message": False}))
    cases.append(case("qwen25_tools", QWEN25, CONVERSATIONS["multi"], True, "", "<|im_end|>", {"tools": TOOLS}))
    for name, tpl in SMALL:
        cases.append(case(name, tpl, CONVERSATIONS["multi"], True, "<s>", "</s>", EXTRA))
    for name, tpl, kind in ERRORS:
        c = case(name, tpl, CONVERSATIONS["multi"], True, "<s>", "</s>", EXTRA)
        assert c.get("error", {}).get("kind") == kind, (name, c)
        cases.append(c)
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "Tools/make_chat_fixtures.py", "jinja2": jinja2.__version__,
                   "now": PINNED.isoformat(), "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases ({sum('error' in c for c in cases)} errors) -> {OUT}")


if __name__ == "__main__":
    main()
