"""Every config key with its default and its meaning, read from the dataclasses of `sections` (the meaning is
the comment on the field's line), for `lensjax train --help`."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize

from lensjax.config.sections import Config


def field_comments(cls: type) -> dict[str, str]:
  """{field name: the comment on its line} of a dataclass, from its source."""
  comments, line_field = {}, {}
  tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
  previous = None
  for token in tokens:
    if token.type == tokenize.OP and token.string == ":" and previous is not None and previous.type == tokenize.NAME \
        and previous.start[1] == 2:  # `  name: type = default` in the class body
      line_field[token.start[0]] = previous.string
    elif token.type == tokenize.COMMENT and token.start[0] in line_field:
      comments[line_field[token.start[0]]] = token.string.lstrip("#").strip()
    if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
      previous = token
  return comments


def as_override(value) -> str:
  """A default as it is written after --config.KEY= (true, relu, [0.001,0.003], "")."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, tuple):
    return "[" + ",".join(str(v) for v in value) + "]"
  return str(value) if value != "" else '""'


def key_reference() -> list[tuple[str, str, str]]:
  """`(section.key, default, meaning)` of every config key, in the order the sections declare them."""
  rows = []
  for section in dataclasses.fields(Config):
    cls = section.default_factory  # each section is a dataclass built by its default factory
    comments = field_comments(cls)
    for field in dataclasses.fields(cls):
      default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
      rows.append((f"{section.name}.{field.name}", as_override(default), comments.get(field.name, "")))
  return rows


def key_reference_text(width: int = 30) -> str:
  """The reference as plain text lines, `  --config.KEY=DEFAULT  meaning`, for an argparse epilog."""
  lines = ["config keys (override with --config.KEY=VALUE; the default follows =):"]
  for key, default, meaning in key_reference():
    flag = f"{key}={default}"
    lines.append(f"  {flag:<{width}}  {meaning}" if len(flag) <= width else f"  {flag}\n  {'':<{width}}  {meaning}")
  return "\n".join(lines)
