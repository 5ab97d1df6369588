"""Netlink frame helpers for talking to the knetlink module.

Pure functions only: nothing here opens sockets or touches the system, so
the module imports cleanly on the host (unit tests) and in the guest
(nl_send.py).  Well-formed messages are encoded with pyroute2's ``nlmsg``
class and acks are decoded with it; deliberately malformed frames are built
from raw bytes with :func:`encode_header`.

It also carries a Python model of what the module prints for a payload
(:func:`expected_link_line`), so tests can predict the kernel log.
"""

import struct

from pyroute2.netlink import nlmsg

__all__ = [
    'DEFAULT_PRINT_MAX',
    'DEFAULT_PROTO',
    'NLMSG_ALIGNTO',
    'NLMSG_DONE',
    'NLMSG_ERROR',
    'NLMSG_HDRLEN',
    'NLMSG_MIN_TYPE',
    'NLMSG_NOOP',
    'NLMSG_OVERRUN',
    'NLM_F_ACK',
    'NLM_F_ACK_TLVS',
    'NLM_F_CAPPED',
    'NLM_F_ECHO',
    'NLM_F_MULTI',
    'NLM_F_REQUEST',
    'PRINT_MAX_LIMIT',
    'FrameError',
    'build_payload',
    'decode_acks',
    'encode_batch',
    'encode_header',
    'encode_message',
    'escape_payload',
    'expected_link_line',
    'nlmsg_align',
    'nlmsg_length',
    'nlmsg_space',
    'split_messages',
    'visible_payload',
]

# <linux/netlink.h>
NLMSG_ALIGNTO = 4
NLMSG_HDRLEN = 16
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4
NLMSG_MIN_TYPE = 0x10

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_CAPPED = 0x100     # on acks: original payload not echoed
NLM_F_ACK_TLVS = 0x200   # on acks: extended ack TLVs follow

# knetlink module defaults (module/knetlink.c)
DEFAULT_PROTO = 21
DEFAULT_PRINT_MAX = 128
PRINT_MAX_LIMIT = 200

_HDR = struct.Struct('=IHHII')          # nlmsghdr, native byte order
_ERR = struct.Struct('=i')              # struct nlmsgerr.error
_U32_MAX = 0xFFFFFFFF
_U16_MAX = 0xFFFF


class FrameError(ValueError):
    """Raised for arguments that cannot be encoded."""


def nlmsg_align(n):
    """NLMSG_ALIGN(): round up to a multiple of 4."""
    return (n + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)


def nlmsg_length(n):
    """NLMSG_LENGTH(): header plus n payload bytes, unpadded."""
    return n + NLMSG_HDRLEN


def nlmsg_space(n):
    """NLMSG_SPACE(): header plus n payload bytes, padded."""
    return nlmsg_align(nlmsg_length(n))


def _check_range(name, value, maximum):
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameError(f'{name} must be an integer, got {value!r}')
    if not 0 <= value <= maximum:
        raise FrameError(f'{name}={value} out of range 0..{maximum}')


def encode_header(length, type=0, flags=0, seq=0, pid=0):
    """Raw 16-byte nlmsghdr with arbitrary (possibly lying) length.

    For malformed test frames; well-formed messages use encode_message().
    """
    _check_range('length', length, _U32_MAX)
    _check_range('type', type, _U16_MAX)
    _check_range('flags', flags, _U16_MAX)
    _check_range('seq', seq, _U32_MAX)
    _check_range('pid', pid, _U32_MAX)
    return _HDR.pack(length, type, flags, seq, pid)


class _knl_msg(nlmsg):
    """A netlink message whose body is an opaque byte string."""

    __slots__ = ()
    fields = (('payload', 's'),)


class _knl_ack(nlmsg):
    """NLMSG_ERROR body: error code plus the echoed request header.

    The echoed payload (present for error acks unless NLM_F_CAPPED) is not
    decoded; pyroute2's own nlmsgerr would try to parse it as attributes.
    """

    __slots__ = ()
    fields = (
        ('error', 'i'),
        ('orig_len', 'I'),
        ('orig_type', 'H'),
        ('orig_flags', 'H'),
        ('orig_seq', 'I'),
        ('orig_pid', 'I'),
    )


def encode_message(payload, type=0, flags=NLM_F_REQUEST | NLM_F_ACK, seq=0,
                   pid=0, nul=False, seed_len=False):
    """Encode one well-formed netlink message carrying ``payload``.

    ``nul`` appends a NUL byte to the payload (counted in nlmsg_len).
    nlmsg_len is NLMSG_LENGTH(len) like the kernel's own helpers, or
    NLMSG_SPACE(len) with ``seed_len`` (what the classic 2009 sender did).
    The result is always zero-padded to a multiple of 4 bytes.
    """
    if isinstance(payload, str):
        payload = payload.encode('utf-8')
    payload = bytes(payload)
    if nul:
        payload += b'\0'
    _check_range('type', type, _U16_MAX)
    _check_range('flags', flags, _U16_MAX)
    _check_range('seq', seq, _U32_MAX)
    _check_range('pid', pid, _U32_MAX)
    if nlmsg_space(len(payload)) > _U32_MAX:
        raise FrameError('payload too long')

    msg = _knl_msg()
    msg['header']['type'] = type
    msg['header']['flags'] = flags
    msg['header']['sequence_number'] = seq
    msg['header']['pid'] = pid
    msg['payload'] = payload
    msg.encode()
    data = bytearray(msg.data)
    # pyroute2 pads to 4 bytes and writes NLMSG_LENGTH; make both explicit.
    data.extend(b'\0' * (nlmsg_space(len(payload)) - len(data)))
    length = nlmsg_space(len(payload)) if seed_len else nlmsg_length(len(payload))
    struct.pack_into('=I', data, 0, length)
    return bytes(data)


def build_payload(spec):
    """Payload bytes from a request dict: "hex", "fill"+"len" or "text".

    Precedence: hex, then fill, then text.  ``fill`` is repeated and cut to
    exactly ``len`` bytes.  Missing everything -> empty payload.
    """
    if spec.get('hex') is not None:
        try:
            return bytes.fromhex(spec['hex'])
        except (TypeError, ValueError) as exc:
            raise FrameError(f'bad hex: {exc}') from exc
    if spec.get('fill') is not None:
        fill = spec['fill']
        if isinstance(fill, str):
            fill = fill.encode('utf-8')
        length = spec.get('len')
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise FrameError('"fill" needs a non-negative integer "len"')
        if not fill:
            if length:
                raise FrameError('"fill" must not be empty')
            return b''
        reps = length // len(fill) + 1
        return (fill * reps)[:length]
    text = spec.get('text', '')
    if not isinstance(text, str):
        raise FrameError('"text" must be a string')
    return text.encode('utf-8')


def encode_batch(messages, first_seq=1):
    """Several messages (request dicts) in one datagram.

    Each dict is a payload spec (see build_payload) with optional "type",
    "flags", "seq", "nul", "seed_len".  Messages without "seq" are numbered
    from ``first_seq`` upwards.  Returns (datagram, [seq, ...]).
    """
    out = bytearray()
    seqs = []
    next_seq = first_seq
    for spec in messages:
        if not isinstance(spec, dict):
            raise FrameError('batch entries must be objects')
        seq = spec.get('seq')
        if seq is None:
            seq = next_seq
            next_seq += 1
        out += encode_message(
            build_payload(spec),
            type=spec.get('type', 0),
            flags=spec.get('flags', NLM_F_REQUEST | NLM_F_ACK),
            seq=seq,
            pid=spec.get('pid', 0),
            nul=bool(spec.get('nul', False)),
            seed_len=bool(spec.get('seed_len', False)),
        )
        seqs.append(seq)
    return bytes(out), seqs


def split_messages(datagram):
    """Walk a datagram like the kernel does.

    Returns (messages, rest) where messages is a list of
    (offset, length, type, flags, seq, pid) for every well-formed message and
    rest is None when the walk ended cleanly or a short string naming the
    problem ('short' datagram, 'bad_len').  Trailing bytes shorter than a
    header after at least one message are ignored, like the module does.
    """
    datagram = bytes(datagram)
    total = len(datagram)
    msgs = []
    if total == 0:
        return msgs, 'empty'
    if total < NLMSG_HDRLEN:
        return msgs, 'short'
    off = 0
    while total - off >= NLMSG_HDRLEN:
        length, mtype, flags, seq, pid = _HDR.unpack_from(datagram, off)
        left = total - off
        if length < NLMSG_HDRLEN or length > left:
            return msgs, 'bad_len'
        msgs.append((off, length, mtype, flags, seq, pid))
        off += min(nlmsg_align(length), left)
    return msgs, None


def decode_acks(datagram):
    """Decode every message of a received datagram.

    NLMSG_ERROR messages become dicts with "type", "seq", "error" (the errno
    as a NON-NEGATIVE number, 0 = success), "flags", "pid", "len" and the
    echoed request header as "orig_len", "orig_type", "orig_flags",
    "orig_seq", "orig_pid".  Other message types only carry "type", "seq",
    "flags", "pid", "len".  A truncated trailing message is reported as
    {"type": None, "truncated": True}.
    """
    datagram = bytes(datagram)
    out = []
    off = 0
    total = len(datagram)
    while total - off >= NLMSG_HDRLEN:
        length, mtype, flags, seq, pid = _HDR.unpack_from(datagram, off)
        if length < NLMSG_HDRLEN or length > total - off:
            out.append({'type': None, 'truncated': True, 'offset': off})
            break
        item = {'type': mtype, 'seq': seq, 'flags': flags, 'pid': pid,
                'len': length}
        if mtype == NLMSG_ERROR:
            if length >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN:
                ack = _knl_ack(datagram[off:off + length])
                ack.decode()
                item['error'] = abs(ack['error'])
                for key in ('orig_len', 'orig_type', 'orig_flags',
                            'orig_seq', 'orig_pid'):
                    item[key] = ack[key]
            elif length >= NLMSG_HDRLEN + 4:
                (err,) = _ERR.unpack_from(datagram, off + NLMSG_HDRLEN)
                item['error'] = abs(err)
            else:
                item['error'] = None
        out.append(item)
        off += nlmsg_align(length)
    return out


def visible_payload(body):
    """The part of a message body the module prints: up to the first NUL."""
    body = bytes(body)
    cut = body.find(b'\0')
    return body if cut < 0 else body[:cut]


def escape_payload(data):
    """The module's escaping: printable ASCII except backslash as is,
    backslash doubled, every other byte as \\xHH (lowercase)."""
    out = []
    for c in bytes(data):
        if c == 0x5C:
            out.append('\\\\')
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
        else:
            out.append(f'\\x{c:02x}')
    return ''.join(out)


def expected_link_line(body, print_max=DEFAULT_PRINT_MAX):
    """The exact log line knetlink writes for a message body (the bytes
    after the header up to nlmsg_len), e.g. 'link:hello world!'."""
    if not 0 <= print_max <= PRINT_MAX_LIMIT:
        raise FrameError(f'print_max out of range 0..{PRINT_MAX_LIMIT}')
    shown = visible_payload(body)
    line = 'link:' + escape_payload(shown[:print_max])
    if len(shown) > print_max:
        line += f'...[+{len(shown) - print_max} bytes]'
    return line
