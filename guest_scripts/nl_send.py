#!/usr/bin/env python3
"""Send messages to the knetlink module from inside a guest.

    nl_send.py [--proto N] send MSG...
        one JSON line per message: {"seq": n, "error": e, "len": payload_len}
        exit 0 if every error is 0, 1 otherwise, 2 if the socket cannot be
        opened.

    nl_send.py [--proto N] persistent
        prints "NLSEND READY", then answers JSON requests read from stdin,
        one per line, with exactly one JSON line each (see docs/module.md).

"error" values in acks are errno numbers made non-negative (0 = success,
1 = EPERM, 22 = EINVAL, 110 = no ack before the timeout).  Standard output
carries only ASCII JSON (plus the READY line); diagnostics go to stderr.
"""

import argparse
import errno
import json
import os
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _light_pyroute2():
    """Make ``import pyroute2.netlink`` skip pyroute2's package __init__.

    That __init__ imports the whole API (IPRoute, NDB, conntrack, ...:
    ~370 modules).  In a TCG guest reading the venv over 9p this took 60 s
    cold and 10 s warm, against well under a second for pyroute2.netlink
    alone, which is all nlframes needs.  Only done in this entry script (its
    own process), never in nlframes, so host code importing the full
    pyroute2 is unaffected.
    """
    import importlib.util
    import types

    if 'pyroute2' in sys.modules:
        return
    spec = importlib.util.find_spec('pyroute2')
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import below reports it
    pkg = types.ModuleType('pyroute2')
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    sys.modules['pyroute2'] = pkg


_light_pyroute2()

import nlframes  # noqa: E402  (needs the path and loader above)
from nlframes import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR  # noqa: E402

RECV_TIMEOUT_S = 2.0
RECV_BUF = 256 * 1024          # error acks echo the request (up to ~64 KiB)
SO_RCVBUF_WANT = 1 << 20
DEFAULT_FLAGS = NLM_F_REQUEST | NLM_F_ACK


class SocketError(Exception):
    pass


class RequestError(Exception):
    pass


def emit(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=True, separators=(',', ':')) + '\n')
    sys.stdout.flush()


class Link:
    """One netlink socket to the kernel, reopened lazily after failures."""

    def __init__(self, proto):
        self.proto = proto
        self.sock = None
        self.buf = bytearray(RECV_BUF)
        self.view = memoryview(self.buf)
        self.next_seq = 1

    def open(self):
        if self.sock is not None:
            return self.sock
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.proto)
        except OSError as exc:
            raise SocketError(f'socket: {exc}') from exc
        try:
            sock.bind((0, 0))               # the kernel picks the port id
            sock.connect((0, 0))            # peer: the kernel, so send() works
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SO_RCVBUF_WANT)
            except OSError:
                pass
            tv = struct.pack('@ll', int(RECV_TIMEOUT_S), 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        except OSError as exc:
            sock.close()
            raise SocketError(f'socket: {exc}') from exc
        self.sock = sock
        return sock

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def take_seq(self, count=1):
        seq = self.next_seq
        self.next_seq = (self.next_seq + count) & 0xFFFFFFFF or 1
        return seq

    def drain(self):
        """Drop datagrams left over from an earlier request."""
        sock = self.sock
        while True:
            try:
                sock.recv_into(self.buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def send(self, datagram):
        sock = self.open()
        self.drain()
        try:
            sock.send(datagram)
        except OSError as exc:
            # e.g. ECONNREFUSED once the module is gone: start afresh next time
            self.close()
            raise SocketError(f'socket: send: {exc}') from exc

    def collect(self, expect, wait_ms):
        """Receive acks until ``expect`` arrived (expect > 0) or ``wait_ms``
        passed.  With expect == 0 it waits the full time."""
        acks = []
        deadline = time.monotonic() + wait_ms / 1000.0
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while expect <= 0 or len(acks) < expect:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not poller.poll(max(1, int(left * 1000))):
                continue
            try:
                n = self.sock.recv_into(self.buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # the kernel dropped acks: say so in place of them
                    acks.append({'type': None, 'overrun': True})
                    continue
                raise SocketError(f'socket: recv: {exc}') from exc
            acks.extend(nlframes.decode_acks(self.view[:n]))
        return acks


# ---- request handlers ---------------------------------------------------

def _int_field(req, name, default, maximum):
    value = req.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise RequestError(f'"{name}" must be an integer 0..{maximum}')
    return value


def _short_ack(ack):
    return {k: ack[k] for k in ('seq', 'error', 'type') if k in ack}


def op_send(link, req):
    payload = nlframes.build_payload(req)
    seq = req.get('seq')
    if seq is None:
        seq = link.take_seq()
    frame = nlframes.encode_message(
        payload, type=_int_field(req, 'type', 0, 0xFFFF),
        flags=_int_field(req, 'flags', DEFAULT_FLAGS, 0xFFFF),
        seq=_int_field({'seq': seq}, 'seq', 0, 0xFFFFFFFF),
        nul=bool(req.get('nul', False)), seed_len=bool(req.get('seed_len', False)))
    link.send(frame)
    acks = link.collect(_int_field(req, 'expect', 1, 1 << 20),
                        _int_field(req, 'wait_ms', int(RECV_TIMEOUT_S * 1000), 600000))
    resp = {'acks': [ack if req.get('full') else _short_ack(ack) for ack in acks],
            'seq': seq, 'len': len(payload)}
    if not acks:
        resp['timeout'] = True
    return resp


def op_batch(link, req):
    messages = req.get('messages')
    if not isinstance(messages, list) or not messages:
        raise RequestError('"messages" must be a non-empty list')
    datagram, seqs = nlframes.encode_batch(messages, first_seq=link.take_seq(len(messages)))
    link.send(datagram)
    acks = link.collect(_int_field(req, 'expect', len(messages), 1 << 20),
                        _int_field(req, 'wait_ms', int(RECV_TIMEOUT_S * 1000), 600000))
    return {'acks': [ack if req.get('full') else _short_ack(ack) for ack in acks],
            'seqs': seqs, 'bytes': len(datagram)}


def op_raw(link, req):
    try:
        datagram = bytes.fromhex(req.get('hex', ''))
    except (TypeError, ValueError) as exc:
        raise RequestError(f'bad hex: {exc}') from exc
    link.send(datagram)
    acks = link.collect(_int_field(req, 'expect', 1, 1 << 20),
                        _int_field(req, 'wait_ms', 200, 600000))
    return {'acks': acks, 'bytes': len(datagram)}


def op_bench(link, req):
    count = _int_field(req, 'count', 1000, 100000000)
    payload = nlframes.build_payload(req)
    # pyroute2's encoder costs several microseconds per message, too much
    # for the hot loop: encode once and only patch the sequence number.
    frame = bytearray(nlframes.encode_message(
        payload, type=_int_field(req, 'type', 0, 0xFFFF),
        flags=_int_field(req, 'flags', DEFAULT_FLAGS, 0xFFFF)))
    sock = link.open()
    link.drain()
    buf, view = link.buf, link.view
    pack_into, unpack_from = struct.pack_into, struct.unpack_from
    send, recv_into = sock.send, sock.recv_into
    seq = link.take_seq(count)
    errors = 0
    start = time.perf_counter()
    for i in range(count):
        cur = (seq + i) & 0xFFFFFFFF
        pack_into('=I', frame, 8, cur)
        try:
            send(frame)
        except OSError as exc:
            link.close()
            raise SocketError(f'socket: send: {exc}') from exc
        while True:
            try:
                n = recv_into(buf)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue        # receive queue overran; our ack may follow
                errors += 1         # EAGAIN: no ack within RECV_TIMEOUT_S
                break
            # fast path: a single NLMSG_ERROR ack for this sequence number
            if n >= 36:
                mtype, rseq, err = unpack_from('=4xH2xI4xi', buf, 0)
                if mtype == NLMSG_ERROR and rseq == cur:
                    if err:
                        errors += 1
                    break
            # anything else: decode properly, keep waiting for our ack
            mine = [a for a in nlframes.decode_acks(view[:n])
                    if a.get('type') == NLMSG_ERROR and a.get('seq') == cur]
            if mine:
                if mine[0].get('error'):
                    errors += 1
                break
    elapsed = time.perf_counter() - start
    return {'count': count, 'errors': errors, 'elapsed_s': round(elapsed, 6),
            'rate': round(count / elapsed, 1) if elapsed > 0 else None}


def op_close(link, req):
    """Close the netlink socket; the next request opens a new one.

    An open socket of the module's protocol holds a reference on the module,
    so a long-lived sender closes it before the module is unloaded.
    """
    link.close()
    return {'closed': True}


OPS = {'send': op_send, 'batch': op_batch, 'raw': op_raw, 'bench': op_bench, 'close': op_close}


def handle(link, line):
    try:
        req = json.loads(line)
    except ValueError as exc:
        return {'error': f'bad json: {exc}'}
    if not isinstance(req, dict):
        return {'error': 'request must be a JSON object'}
    op = req.get('op')
    if op == 'quit':
        return None
    func = OPS.get(op)
    if func is None:
        return {'error': f'unknown op: {op!r}'}
    try:
        return func(link, req)
    except SocketError as exc:
        return {'error': str(exc)}
    except (RequestError, nlframes.FrameError) as exc:
        return {'error': f'bad request: {exc}'}
    except Exception as exc:  # keep serving; report instead of dying
        return {'error': f'internal: {type(exc).__name__}: {exc}'}


def run_persistent(link):
    sys.stdout.write('NLSEND READY\n')
    sys.stdout.flush()
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0                        # EOF
        line = line.strip()
        if not line:
            continue                        # blank lines are not requests
        resp = handle(link, line)
        if resp is None:
            return 0                        # {"op": "quit"}
        emit(resp)


def run_send(link, messages):
    try:
        link.open()
    except SocketError as exc:
        sys.stderr.write(f'{exc}\n')
        return 2
    status = 0
    for text in messages:
        resp = handle(link, json.dumps({'op': 'send', 'text': text}))
        if 'error' in resp:
            sys.stderr.write('{}\n'.format(resp['error']))
            emit({'seq': None, 'error': errno.EIO, 'len': None})
            status = 1
            continue
        acks = [a for a in resp['acks'] if a.get('type') == NLMSG_ERROR
                and a.get('seq') == resp['seq']]
        err = acks[0]['error'] if acks else errno.ETIMEDOUT
        if err:
            status = 1
        emit({'seq': resp['seq'], 'error': err, 'len': resp['len']})
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description='knetlink test sender')
    parser.add_argument('--proto', type=int, default=nlframes.DEFAULT_PROTO,
                        help='netlink protocol (default %(default)s)')
    sub = parser.add_subparsers(dest='cmd', required=True)
    p_send = sub.add_parser('send', help='send each MSG, print one JSON line per ack')
    p_send.add_argument('messages', nargs='+', metavar='MSG')
    sub.add_parser('persistent', help='serve JSON requests from stdin')
    args = parser.parse_args(argv)
    if not 0 <= args.proto <= 31:
        parser.error('--proto must be 0..31')

    link = Link(args.proto)
    try:
        if args.cmd == 'send':
            return run_send(link, args.messages)
        return run_persistent(link)
    except KeyboardInterrupt:
        return 130
    finally:
        link.close()


if __name__ == '__main__':
    sys.exit(main())
