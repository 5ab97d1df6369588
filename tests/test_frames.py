"""Host unit tests for the guest scripts: nlframes.py, payload.py, nlsocket.py, nl_send.py, fuzz_frames.py
(no guest)."""

import json
import os
import re
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

GUEST_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             'guest_scripts')
if GUEST_SCRIPTS not in sys.path:
    sys.path.insert(0, GUEST_SCRIPTS)

import nlframes as nf  # noqa: E402

HDR = struct.Struct('=IHHII')

# The 2009 sender's frame for "hello world!": nlmsg_len = NLMSG_SPACE(12) = 28,
# type 0, flags 0, seq 0, pid 0, payload without NUL.
SEED_FRAME = bytes.fromhex('1c000000' '0000' '0000' '00000000' '00000000') + b'hello world!'


def ack_bytes(err, orig, seq=None, flags=0, pid=4242, echo_payload=False):
    """Build an NLMSG_ERROR message the way the kernel does."""
    olen, _otype, _oflags, oseq, _opid = HDR.unpack_from(orig, 0)
    echoed = orig[:olen] if echo_payload else orig[:16]
    body = struct.pack('=i', err) + echoed
    length = 16 + len(body)
    msg = HDR.pack(length, nf.NLMSG_ERROR, flags, oseq if seq is None else seq, pid) + body
    return msg + b'\0' * (nf.nlmsg_align(length) - length)


# ---- sizes -----------------------------------------------------------------

@pytest.mark.parametrize('n,align,length,space', [
    (0, 0, 16, 16), (1, 4, 17, 20), (3, 4, 19, 20), (4, 4, 20, 20),
    (12, 12, 28, 28), (13, 16, 29, 32), (60000, 60000, 60016, 60016),
])
def test_sizes(n, align, length, space):
    assert nf.nlmsg_align(n) == align
    assert nf.nlmsg_length(n) == length
    assert nf.nlmsg_space(n) == space


# ---- encoding --------------------------------------------------------------

def test_seed_frame_exact():
    frame = nf.encode_message('hello world!', type=0, flags=0, seq=0, seed_len=True)
    assert frame == SEED_FRAME


def test_default_frame_is_kernel_style():
    frame = nf.encode_message(b'hello world!', seq=7)
    length, mtype, flags, seq, pid = HDR.unpack_from(frame, 0)
    assert (length, mtype, flags, seq, pid) == (28, 0, nf.NLM_F_REQUEST | nf.NLM_F_ACK, 7, 0)
    frame = nf.encode_message(b'hello', seq=1)
    assert HDR.unpack_from(frame, 0)[0] == 21          # NLMSG_LENGTH, unpadded
    assert len(frame) == 24 and frame[21:] == b'\0\0\0'  # datagram padded


def test_nul_is_counted():
    frame = nf.encode_message(b'abc', nul=True, flags=0)
    assert HDR.unpack_from(frame, 0)[0] == 20
    assert frame[16:20] == b'abc\0'


def test_empty_payload():
    assert nf.encode_message(b'', flags=0) == HDR.pack(16, 0, 0, 0, 0)


def _native_header(length, mtype, flags, seq, pid):
    """struct nlmsghdr in host byte order, written out field by field."""
    order = sys.byteorder
    return (length.to_bytes(4, order) + mtype.to_bytes(2, order) + flags.to_bytes(2, order)
            + seq.to_bytes(4, order) + pid.to_bytes(4, order))


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=300), mtype=st.integers(0, 0xFFFF),
       flags=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFFFFFF),
       pid=st.integers(0, 0xFFFFFFFF), seed_len=st.booleans())
def test_encoding_is_the_kernels_layout(payload, mtype, flags, seq, pid, seed_len):
    """nlmsghdr fields in host byte order, the payload, zero padding to 4 bytes."""
    frame = nf.encode_message(payload, type=mtype, flags=flags, seq=seq, pid=pid,
                              seed_len=seed_len)
    length = 16 + len(payload)
    if seed_len:
        length = (length + 3) & ~3
    expect = _native_header(length, mtype, flags, seq, pid) + payload
    expect += b'\0' * (-len(expect) % 4)
    assert frame == expect
    assert nf.encode_header(length, mtype, flags, seq, pid) == expect[:16]


@pytest.mark.parametrize('kwargs', [
    {'type': -1}, {'type': 0x10000}, {'flags': 0x10000}, {'seq': 1 << 32},
    {'pid': -5}, {'type': True}, {'seq': 1.5},
])
def test_encode_rejects_out_of_range(kwargs):
    with pytest.raises(nf.FrameError):
        nf.encode_message(b'x', **kwargs)


def test_encode_header_allows_lying_length():
    hdr = nf.encode_header(0xFFFFFFFF, 5, 1, 2, 3)
    assert HDR.unpack(hdr) == (0xFFFFFFFF, 5, 1, 2, 3)
    with pytest.raises(nf.FrameError):
        nf.encode_header(1 << 32)


# ---- payload specs ---------------------------------------------------------

def test_build_payload_variants():
    assert nf.build_payload({'text': 'h\u00e9'}) == b'h\xc3\xa9'
    assert nf.build_payload({'hex': '00ff41'}) == b'\x00\xffA'
    assert nf.build_payload({'fill': 'AB', 'len': 5}) == b'ABABA'
    assert len(nf.build_payload({'fill': 'A', 'len': 60000})) == 60000
    assert nf.build_payload({'fill': 'A', 'len': 0}) == b''
    assert nf.build_payload({}) == b''
    # precedence: hex > fill > text
    assert nf.build_payload({'hex': '41', 'fill': 'B', 'len': 2, 'text': 'C'}) == b'A'
    assert nf.build_payload({'fill': 'B', 'len': 2, 'text': 'C'}) == b'BB'


@pytest.mark.parametrize('spec', [
    {'hex': 'zz'}, {'hex': '123'}, {'fill': 'A'}, {'fill': 'A', 'len': -1},
    {'fill': '', 'len': 3}, {'text': 5}, {'fill': 'A', 'len': True},
])
def test_build_payload_errors(spec):
    with pytest.raises(nf.FrameError):
        nf.build_payload(spec)


def test_batch_layout_and_seq_numbering():
    data, seqs = nf.encode_batch([{'text': 'a'}, {'text': 'bb', 'seq': 99, 'type': 16},
                                  {'fill': 'x', 'len': 5, 'nul': True}], first_seq=10)
    assert seqs == [10, 99, 11]
    msgs, rest = nf.split_messages(data)
    assert rest is None
    assert [(m[0], m[1], m[2], m[4]) for m in msgs] == [
        (0, 17, 0, 10), (20, 18, 16, 99), (40, 22, 0, 11)]
    assert len(data) == 64


def test_batch_rejects_non_dicts():
    with pytest.raises(nf.FrameError):
        nf.encode_batch(['text'])


# ---- walking datagrams like the module ---------------------------------------

@pytest.mark.parametrize('data,count,rest', [
    (b'', 0, 'empty'),
    (b'\x01\x02\x03', 0, 'short'),
    (HDR.pack(8, 0, 0, 0, 0) + b'AAAA', 0, 'bad_len'),          # below header size
    (HDR.pack(255, 0, 0, 0, 0) + b'AAAA', 0, 'bad_len'),        # beyond datagram
    (HDR.pack(20, 0, 0, 0, 0) + b'AAAA' + b'\xff' * 6, 1, None),  # short tail ignored
    (HDR.pack(20, 0, 0, 0, 0) + b'AAAA' + HDR.pack(32, 0, 0, 1, 0) + b'BBBB', 1, 'bad_len'),
    (HDR.pack(21, 0, 0, 0, 0) + b'AAAAA', 1, None),              # unpadded last message
])
def test_split_messages(data, count, rest):
    msgs, why = nf.split_messages(data)
    assert len(msgs) == count
    assert why == rest


# ---- acks ------------------------------------------------------------------

def test_decode_success_ack():
    orig = nf.encode_message(b'hello world!', seq=5)
    acks = nf.decode_acks(ack_bytes(0, orig, flags=nf.NLM_F_CAPPED))
    assert acks == [{'type': nf.NLMSG_ERROR, 'seq': 5, 'flags': nf.NLM_F_CAPPED,
                     'pid': 4242, 'len': 36, 'error': 0, 'orig_len': 28,
                     'orig_type': 0, 'orig_flags': 5, 'orig_seq': 5, 'orig_pid': 0}]


def test_decode_error_ack_with_echo_is_positive_errno():
    orig = nf.encode_message(b'A' * 1000, seq=9)
    acks = nf.decode_acks(ack_bytes(-22, orig, echo_payload=True))
    assert len(acks) == 1
    assert acks[0]['error'] == 22
    assert acks[0]['orig_len'] == 1016
    assert acks[0]['len'] == 16 + 4 + 1016


def test_decode_several_acks_and_truncation():
    a = ack_bytes(0, nf.encode_message(b'a', seq=1))
    b = ack_bytes(-1, nf.encode_message(b'b', seq=2))
    acks = nf.decode_acks(a + b + HDR.pack(100, 2, 0, 3, 0))
    assert [x.get('seq') for x in acks] == [1, 2, None]
    assert [x.get('error') for x in acks] == [0, 1, None]
    assert acks[2]['truncated'] is True


def test_decode_short_error_and_other_types():
    short = HDR.pack(20, nf.NLMSG_ERROR, 0, 4, 0) + struct.pack('=i', -95)
    done = HDR.pack(16, nf.NLMSG_DONE, 0, 5, 0)
    acks = nf.decode_acks(short + done)
    assert acks[0]['error'] == 95 and 'orig_len' not in acks[0]
    assert acks[1] == {'type': nf.NLMSG_DONE, 'seq': 5, 'flags': 0, 'pid': 0, 'len': 16}


# ---- the module's log line ---------------------------------------------------

def test_expected_line_seed():
    assert nf.expected_link_line(SEED_FRAME[16:]) == 'link:hello world!'
    # the seed zero-pads: bytes after the first NUL never show up
    assert nf.expected_link_line(b'hello\0world') == 'link:hello'


def test_expected_line_escaping():
    body = b'a\\b\nc\r\x1b[31m\x7f\xff "%s"'
    assert nf.expected_link_line(body) == 'link:a\\\\b\\x0ac\\x0d\\x1b[31m\\x7f\\xff "%s"'


def test_expected_line_truncation():
    assert nf.expected_link_line(b'A' * 60000) == 'link:' + 'A' * 128 + '...[+59872 bytes]'
    assert nf.expected_link_line(b'abcdefgh', print_max=4) == 'link:abcd...[+4 bytes]'
    assert nf.expected_link_line(b'abc', print_max=0) == 'link:...[+3 bytes]'
    assert nf.expected_link_line(b'A' * 128) == 'link:' + 'A' * 128
    with pytest.raises(nf.FrameError):
        nf.expected_link_line(b'x', print_max=201)


def _unescape(text):
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == '\\':
            if text[i + 1] == '\\':
                out.append(0x5C)
                i += 2
            else:
                assert text[i + 1] == 'x'
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
        else:
            out.append(ord(text[i]))
            i += 1
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_escape_is_single_line_and_reversible(data):
    text = nf.escape_payload(data)
    assert re.fullmatch(r'[\x20-\x7e]*', text)
    assert _unescape(text) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(0, nf.PRINT_MAX_LIMIT))
def test_line_length_bound(data, print_max):
    line = nf.expected_link_line(data, print_max)
    # the module's bound: 5 + 4 * 200 + len("...[+4294967295 bytes]")
    assert len(line) <= 5 + 4 * print_max + 22
    assert '\n' not in line


# ---- nl_send.py, as a separate process (host has no knetlink) ---------------

def test_nl_send_persistent_errors_without_module():
    script = os.path.join(GUEST_SCRIPTS, 'nl_send.py')
    requests = '\n'.join([
        'not json',
        '{"op":"zap"}',
        '',
        '{"op":"send","text":"x"}',
        '{"op":"quit"}',
        '{"op":"send","text":"never read"}',
    ]) + '\n'
    proc = subprocess.run([sys.executable, script, '--proto', '31', 'persistent'],
                          input=requests, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == 'NLSEND READY'
    replies = [json.loads(line) for line in lines[1:]]
    assert len(replies) == 3
    assert replies[0]['error'].startswith('bad json')
    assert replies[1]['error'].startswith('unknown op')
    assert replies[2]['error'].startswith('socket: ')
    assert all(line.isascii() for line in lines)


def test_nl_send_send_exits_2_without_module():
    script = os.path.join(GUEST_SCRIPTS, 'nl_send.py')
    proc = subprocess.run([sys.executable, script, '--proto', '31', 'send', 'x'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert 'socket:' in proc.stderr


def test_one_escaping_for_guest_and_host():
    """The guest scripts and the host's link: line decoder run the same code: guest_scripts/payload.py."""
    from harness.knetlink import links

    source = os.path.join(GUEST_SCRIPTS, 'payload.py')
    for func in (nf.escape_payload, links.escape_payload, links.unescape_payload):
        assert os.path.samefile(func.__code__.co_filename, source), func


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_host_decoder_inverts_the_guests_escaping(data):
    from harness.knetlink.links import parse_link_text

    assert parse_link_text(nf.expected_link_line(data, nf.PRINT_MAX_LIMIT)).payload == nf.visible_payload(data)[:200]


def test_guest_sender_imports_only_the_standard_library():
    """nl_send.py starts with the standard library alone (and without typing): each module costs
    a guest that reads the interpreter's files over 9p."""
    code = ('import sys; sys.path.insert(0, sys.argv[1]); import nl_send; '
            'print(" ".join(sorted(sys.modules)))')
    proc = subprocess.run([sys.executable, '-I', '-S', '-c', code, GUEST_SCRIPTS],  # no site-packages
                          capture_output=True, text=True, timeout=60, check=True)
    modules = {name.partition('.')[0] for name in proc.stdout.split()}
    ours = {'__main__', 'nl_send', 'nlframes', 'nlsocket', 'payload'}
    assert modules - set(sys.stdlib_module_names) - ours == set()
    assert 'typing' not in modules


# ---- NetlinkSocket and nl_send.py against the host's rtnetlink (protocol 0) -----------
# rtnetlink acks a message of type 0 or a control type with NLM_F_ACK, like knetlink.

NETLINK_ROUTE = 0


def persistent_replies(requests):
    """nl_send.py's persistent mode on rtnetlink, `requests` sent as JSON lines: its replies, one a request."""
    script = os.path.join(GUEST_SCRIPTS, 'nl_send.py')
    proc = subprocess.run([sys.executable, script, '--proto', str(NETLINK_ROUTE), 'persistent'],
                          input=''.join(json.dumps(r) + '\n' for r in requests), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ready, *lines = proc.stdout.splitlines()
    assert ready == 'NLSEND READY'
    return [json.loads(line) for line in lines]


def test_receive_reads_every_queued_reply():
    import nlsocket

    sock = nlsocket.NetlinkSocket(NETLINK_ROUTE)
    try:
        data, seqs = nf.encode_batch([{'type': nf.NLMSG_NOOP, 'flags': nf.NLM_F_ACK}] * 3, first_seq=40)
        sock.send(data)
        acks = sock.receive(1, 2.0)
        assert [(a['type'], a['seq'], a['error']) for a in acks] == [(nf.NLMSG_ERROR, s, 0) for s in seqs]
        sock.send(nf.encode_message(b'', type=nf.NLMSG_NOOP, flags=0, seq=50))
        start = time.monotonic()
        assert sock.receive(0, 0.2) == []  # expect 0: waits the whole time for replies that never come
        assert time.monotonic() - start >= 0.2
    finally:
        sock.close()


def test_nl_send_round_trips_with_a_netlink_family():
    send, full, batch, raw, bench, close, again = persistent_replies([
        {'op': 'send', 'text': 'hello', 'seq': 7},
        {'op': 'send', 'text': 'full', 'full': True},
        {'op': 'batch', 'messages': [{'text': 'a'}, {'hex': '00ff'}, {'fill': 'x', 'len': 9}]},
        {'op': 'raw', 'hex': nf.encode_message(b'raw', seq=99).hex()},
        {'op': 'bench', 'count': 50},
        {'op': 'close'},
        {'op': 'send', 'text': 'after close'},
    ])
    assert send == {'acks': [{'seq': 7, 'error': 0, 'type': nf.NLMSG_ERROR}], 'seq': 7, 'len': 5}
    assert full['acks'][0]['orig_len'] == 20 and full['acks'][0]['orig_seq'] == full['seq']
    assert [a['seq'] for a in batch['acks']] == batch['seqs'] and len(batch['seqs']) == 3
    assert batch['bytes'] == 20 + 20 + 28
    assert [(a['seq'], a['error']) for a in raw['acks']] == [(99, 0)]
    assert bench['count'] == 50 and bench['errors'] == 0
    assert close == {'closed': True}
    assert [a['error'] for a in again['acks']] == [0]


def test_nl_send_send_mode_with_a_netlink_family():
    script = os.path.join(GUEST_SCRIPTS, 'nl_send.py')
    proc = subprocess.run([sys.executable, script, '--proto', str(NETLINK_ROUTE), 'send', 'one', 'two'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {'seq': 1, 'error': 0, 'len': 3}, {'seq': 2, 'error': 0, 'len': 3}]


# ---- fuzz_frames.py: the guest half of the fuzzer ----------------------------------------


def test_decode_replies_stops_at_the_fence_and_keeps_everything_else():
    import fuzz_frames

    fence = HDR.pack(16, nf.NLMSG_NOOP, nf.NLM_F_REQUEST | nf.NLM_F_ACK, 77, fuzz_frames.FENCE_PID)
    other = HDR.pack(16, nf.NLMSG_NOOP, nf.NLM_F_REQUEST | nf.NLM_F_ACK, 77, 1)  # the fence's seq, another pid
    data = nf.encode_message(b'x', seq=3) + HDR.pack(8, 0, 0, 4, 0)  # a message, then a lying header
    short = HDR.pack(20, nf.NLMSG_ERROR, 0, 6, 0) + struct.pack('=i', -95)
    replies = []
    for got in (ack_bytes(0, data), ack_bytes(-22, data[20:] + bytes(8)), ack_bytes(-1, fence) + ack_bytes(0, other),
                HDR.pack(16, nf.NLMSG_DONE, 0, 5, 0) + short + HDR.pack(99, 2, 0, 7, 0)):
        assert not fuzz_frames.decode_replies(memoryview(got), replies, fence)
    assert fuzz_frames.decode_replies(memoryview(ack_bytes(0, fence)), replies, fence)
    assert replies == [[nf.NLMSG_ERROR, 3, 0, 17], [nf.NLMSG_ERROR, 4, 22, 8], [nf.NLMSG_ERROR, 77, 1, 16],
                       [nf.NLMSG_ERROR, 77, 0, 16], [nf.NLMSG_DONE, 5, None, None], [nf.NLMSG_ERROR, 6, 95, None],
                       'truncated']


def test_the_fence_never_matches_a_header_inside_the_frame():
    import fuzz_frames
    import nlsocket

    sock = nlsocket.NetlinkSocket(NETLINK_ROUTE)
    flags = nf.NLM_F_REQUEST | nf.NLM_F_ACK
    frame = b''.join(HDR.pack(16, nf.NLMSG_NOOP, flags, seq, fuzz_frames.FENCE_PID) for seq in (1, 2, 3))
    assert fuzz_frames._fence_for(sock, frame) == HDR.pack(16, nf.NLMSG_NOOP, flags, 4, fuzz_frames.FENCE_PID)


def test_nl_send_frames_with_a_netlink_family():
    """rtnetlink acks a control message with NLM_F_ACK like knetlink does: the fence works there too."""
    noop = nf.NLMSG_NOOP
    req_ack = nf.NLM_F_REQUEST | nf.NLM_F_ACK
    frames = [
        nf.encode_message(b'', type=noop, flags=req_ack, seq=5),
        nf.encode_batch([{'type': noop, 'flags': req_ack, 'seq': 6}, {'type': noop, 'flags': 0, 'seq': 7}])[0],
        nf.encode_message(b'', type=noop, flags=nf.NLM_F_REQUEST, seq=8),  # no ack: the fence ends the wait
    ]
    reply, bad_hex, empty, not_a_list = persistent_replies([
        {'op': 'frames', 'hex': [f.hex() for f in frames], 'links': False},
        {'op': 'frames', 'hex': ['zz']},
        {'op': 'frames', 'hex': []},
        {'op': 'frames', 'hex': '00'},
    ])
    assert reply['frames'] == [[[nf.NLMSG_ERROR, 5, 0, 16]], [[nf.NLMSG_ERROR, 6, 0, 16]], []]
    assert reply['links'] == [] and reply['stopped'] is None
    assert reply['stats_before'] is None and reply['stats_after'] is None
    assert bad_hex['error'].startswith('bad request: bad hex')
    assert empty['frames'] == [] and empty['links'] == []
    assert not_a_list['error'].startswith('bad request: "hex" must be')


# ---- nl_send.py's bench loop against a scripted kernel ------------------------------------
# A SOCK_SEQPACKET pair keeps datagram boundaries like netlink; a thread plays the kernel.

class ScriptedNetlink:
    """The guest end of the pair, with the netlink socket's port id."""

    def __init__(self, sock, portid):
        self._sock, self.portid = sock, portid

    def getsockname(self):
        return (self.portid, 0)

    def fileno(self):
        return self._sock.fileno()

    def recv_into(self, *args):
        return self._sock.recv_into(*args)

    def close(self):
        self._sock.close()


def bench_against(replies_for, count, next_seq=1, **req):
    """Run op_bench for ``count`` messages; ``replies_for(frame, i)`` gives the kernel's datagrams for
    the i-th frame. Returns (the bench's reply, the frames the kernel got)."""
    import socket
    import threading

    import nl_send
    import nlsocket

    guest_end, kernel_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    guest_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack('@ll', 0, 200_000))
    frames = []

    def kernel():
        for i in range(count):
            frame = kernel_end.recv(65536)
            frames.append(frame)
            for datagram in replies_for(frame, i):
                kernel_end.send(datagram)

    sock = nlsocket.NetlinkSocket(30)
    sock.sock = ScriptedNetlink(guest_end, portid=4242)
    sock.next_seq = next_seq
    thread = threading.Thread(target=kernel, daemon=True)
    thread.start()
    try:
        reply = nl_send.op_bench(sock, {'count': count, 'text': 'bench', **req})
    finally:
        thread.join(5)
        sock.close()
        kernel_end.close()
    return reply, frames


def success_ack(frame):
    return ack_bytes(0, frame, flags=nf.NLM_F_CAPPED)


def test_bench_sends_the_c_senders_frame_and_accepts_exact_acks():
    reply, frames = bench_against(lambda frame, i: [success_ack(frame)], 50, seed_len=True)
    assert reply['count'] == 50 and reply['errors'] == 0 and reply['bytes'] == 24
    seqs = [HDR.unpack_from(f)[3] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + 50))
    # knl_send's frame: nlmsg_len NLMSG_SPACE(5) = 24, type 0, REQUEST|ACK, payload NUL-padded
    assert frames[0] == HDR.pack(24, 0, nf.NLM_F_REQUEST | nf.NLM_F_ACK, seqs[0], 0) + b'bench\0\0\0'


@pytest.mark.parametrize('wrong', [
    lambda frame: ack_bytes(-1, frame, flags=nf.NLM_F_CAPPED),  # as long as a success ack, errno EPERM
    lambda frame: ack_bytes(-22, frame, echo_payload=True),  # error ack with the request echoed
    lambda frame: ack_bytes(-95, frame) + success_ack(frame),  # the first of two acks for it counts
])
def test_bench_counts_every_message_whose_ack_is_not_success(wrong):
    reply, _ = bench_against(lambda frame, i: [wrong(frame)] if i % 2 else [success_ack(frame)], 10)
    assert reply['errors'] == 5


def test_bench_waits_past_replies_to_other_messages_and_counts_a_missing_ack():
    def replies(frame, i):
        stale = ack_bytes(0, frame, seq=HDR.unpack_from(frame)[3] - 1, flags=nf.NLM_F_CAPPED)
        noop = HDR.pack(16, nf.NLMSG_NOOP, 0, HDR.unpack_from(frame)[3], 0)
        return [[stale, success_ack(frame)], [noop, success_ack(frame)], []][i % 3]

    reply, _ = bench_against(replies, 6)
    assert reply['errors'] == 2  # messages 2 and 5 got no ack (the read timed out)


def test_bench_sequence_numbers_wrap_like_take_seq():
    import nl_send

    reply, frames = bench_against(lambda frame, i: [success_ack(frame)], 4, next_seq=2**32 - 2)
    assert reply['errors'] == 0 and [HDR.unpack_from(f)[3] for f in frames] == [2**32 - 2, 2**32 - 1, 0, 1]
    assert nl_send.ACK_LEN == 36
