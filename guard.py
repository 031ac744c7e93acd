"""litejobs guard: checks on what a request brings, before any route trusts it.

- Strict JSON: no NaN or Infinity (JavaScript's JSON.parse refuses them and a
  NaN passes every range check), nesting at most MAX_DEPTH levels, at most
  MAX_KEYS keys, strings of at most MAX_STRING characters, no duplicate keys.
- Bodies: a cap per route, checked from Content-Length before reading and
  while reading a chunked body; multipart forms parsed with every parser
  error turned into a 400; temporary files closed when the request ends.
- Text: control characters refused where they would reach a mail header,
  a PDF, a log line or a file name.
- `next` targets after login: only a plain path on this site.

Nothing here knows about routes or answers: it raises Refused, and web.py
turns that into its JSON error shape or an HTML page.
"""

import io
import json
import math
import re
import tempfile
from urllib.parse import unquote

from bottle import BaseRequest, HTTPError, MultipartError

MAX_DEPTH = 32  # nesting levels of arrays and objects in one JSON body
MAX_KEYS = 10_000  # object keys in one JSON body, all levels together
MAX_STRING = 256 * 1024  # characters in one JSON string (keys included)
FORM_MAX_BYTES = 64 * 1024  # dashboard forms and the login: nothing there needs more


class Refused(Exception):
    """Input refused: an HTTP status, an error code of the API's table, a message and the field."""

    def __init__(self, status, code, message, field=None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


# -- JSON ---------------------------------------------------------------------------
class _NonFinite:
    """Stands in for NaN or ±Infinity while parsing, so the check can name the field."""

    def __init__(self, text):
        self.text = text


class _DuplicateKey(Exception):
    pass


def _parse_float(text):
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)  # 1e999 overflows to inf


def _object(pairs):
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return value


# Built once: json.loads with hooks builds a new decoder for every call.
_DECODER = json.JSONDecoder(parse_constant=_NonFinite, parse_float=_parse_float, object_pairs_hook=_object)


def loads(text):
    """Strict JSON from `text` (str or bytes); raises Refused for what JSON or our limits do not allow.

    Plain syntax errors raise ValueError, as json.loads does.
    """
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads reads bytes
    elif text.startswith("\ufeff"):  # json.loads' own error for it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise Refused(400, "bad_json", f"JSON nested deeper than {MAX_DEPTH} levels (the limit)") from None
    except _DuplicateKey as exc:
        key = str(exc.args[0])[:50]
        raise Refused(400, "bad_json", f"{key}: the key appears twice in one JSON object", key) from None
    check(value)
    return value


def check(value):
    """Raise Refused when `value` (parsed JSON) is too deep, has too many keys or strings too long, or a non-finite number."""
    keys = 0
    stack = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise Refused(400, "bad_json", f"JSON nested deeper than {MAX_DEPTH} levels (the limit)", _top(path))
            if isinstance(item, dict):
                keys += len(item)
                if keys > MAX_KEYS:
                    raise Refused(413, "too_large", f"JSON body has more than {MAX_KEYS} keys (the limit)")
                for key, child in item.items():
                    if len(key) > MAX_STRING:
                        raise Refused(413, "too_large", f"a key is longer than {MAX_STRING} characters (the limit)")
                    stack.append((child, f"{path}.{key}" if path else key, depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            if len(item) > MAX_STRING:
                field = path or None
                raise Refused(413, "too_large", f"{path or 'body'}: a string longer than {MAX_STRING} characters (the limit)", field)
        elif isinstance(item, _NonFinite) or (isinstance(item, float) and not math.isfinite(item)):
            field = path or None
            shown = item.text if isinstance(item, _NonFinite) else repr(item)
            raise Refused(422, "invalid_argument", f"{path or 'body'}: {shown} is not a finite number", field)


def _top(path):
    return re.split(r"[.\[]", path, maxsplit=1)[0] or None


def nonfinite_path(value, path=""):
    """Where `value` holds a NaN or an infinity ("" for itself, "a[2]" inside), or None."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def finite(value):
    """`value` with every NaN or infinity replaced by None: what we write is always JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# The API's answers: built once, as json.dumps builds an encoder for every call with options.
_API_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def dumps(value, **options):
    """json.dumps that never writes NaN or Infinity (they become null)."""
    try:
        if options == {"ensure_ascii": False}:
            return _API_ENCODER.encode(value)
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False, **options)


# -- Text -------------------------------------------------------------------------------
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def control_character(text, multiline=False):
    """The first control character in `text` (tab, CR and LF allowed when `multiline`), or None."""
    match = (_CONTROL_BUT_LINES if multiline else _CONTROL).search(text)
    return match.group() if match else None


def check_text(text, field, multiline=False):
    """`text`, or Refused (422) naming the field when it holds a control character."""
    char = control_character(text, multiline)
    if char is not None:
        raise Refused(422, "invalid_argument", f"{field}: control character {char!r} not allowed", field)
    return text


def strip_control(text):
    """`text` without control characters: for values already stored that reach a header, PDF or file name."""
    return _CONTROL.sub("", text)


# -- Where to go after login ------------------------------------------------------------
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:%/?]*")


def safe_next(target):
    """`target` when it is a plain path on this site, else "/".

    Browsers strip tabs and newlines, read a backslash as a slash and decode
    %2F in some places: any of those, a scheme, credentials (`@`) or a path
    starting `//` could leave the site, so only printable ASCII path
    characters pass, and the decoded form is checked too.
    """
    if not isinstance(target, str) or not _PLAIN_PATH.fullmatch(target):
        return "/"
    decoded = target
    for _ in range(3):  # %252F decodes twice
        if decoded.startswith("//") or "\\" in decoded or "@" in decoded or _CONTROL.search(decoded):
            return "/"
        decoded = unquote(decoded)
    if decoded.startswith("//") or "\\" in decoded or "@" in decoded or _CONTROL.search(decoded) or "%" in decoded:
        return "/"
    return target


# -- Bodies -------------------------------------------------------------------------------
def cap_body(environ, limit):
    """Refuse a body over `limit` bytes: from Content-Length before reading a byte,
    and while reading a chunked body, which is then handed on with a Content-Length."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body, size = _read_chunked(environ, limit)
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(size)
        environ["litejobs.spooled_body"] = body
        del environ["HTTP_TRANSFER_ENCODING"]
        return
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Refused(400, "bad_json", "Content-Length is not a number") from None
    if length > limit:
        raise Refused(413, "too_large", f"body is {length} bytes; the limit here is {limit}")


def _read_chunked(environ, limit):
    source = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        read = source.read  # the server (gevent) decoded the chunks already
    else:
        read = _Chunks(BaseRequest._iter_chunked(source.read, 64 * 1024)).read
    body = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)
    size = 0
    try:
        while chunk := read(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise Refused(413, "too_large", f"chunked body is over the limit of {limit} bytes here")
            body.write(chunk)
    except HTTPError:  # bottle's chunk decoder
        body.close()
        raise Refused(400, "bad_json", "the chunked transfer encoding of the body is malformed") from None
    except (OSError, ValueError):  # gevent's chunk decoder
        body.close()
        raise Refused(400, "bad_json", "the chunked transfer encoding of the body is malformed") from None
    except BaseException:
        body.close()
        raise
    body.seek(0)
    return body, size


class _Chunks:
    """A read() over an iterator of byte strings."""

    def __init__(self, parts):
        self.parts, self.buffer = parts, b""

    def read(self, size):
        while len(self.buffer) < size:
            part = next(self.parts, None)
            if part is None:
                break
            self.buffer += part
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def parse_form(request):
    """Parse a form body now, so a malformed multipart body is a 400 (bottle raises ValueError for some)."""
    try:
        request.POST
    except (MultipartError, ValueError, IndexError, KeyError) as exc:
        message = getattr(exc, "body", None) or str(exc)
        raise Refused(400, "bad_json", f"the form body is malformed: {str(message)[:100]}") from None


def close_files(environ):
    """Close (and so remove) the temporary files holding this request's body and uploads."""
    files = [environ.get("litejobs.spooled_body"), environ.get("bottle.request.body")]
    post = environ.get("bottle.request.post")
    if post is not None:
        files += [getattr(value, "file", None) for _, value in post.allitems()]
    for file in files:
        if file is not None and not isinstance(file, io.BytesIO):
            try:
                file.close()
            except OSError:
                pass
