#!/usr/bin/env python3
"""Talk to the KNH_ECHO generic netlink family from inside a guest.

    genl_echo_send.py [--family NAME] [--no-attr] MSG...

Resolves the family through the generic netlink controller, then sends one
GENL_ECHO_CMD_ECHO request per MSG (with NLM_F_ACK) and prints one JSON line
per request:

    {"msg": "hi", "reply": "hi"}             the family answered
    {"msg": "hi", "error": 22}               it answered with an error (errno)

--no-attr sends requests without the message attribute (the module must answer
EINVAL). Exit status: 0 when every request got a reply, 1 when one got an
error, 2 when the family is not registered (the module is not loaded; the one
JSON line is then {"family": NAME, "error": errno}).

    genl_echo_send.py persistent

prints "GENL_ECHO READY", then reads one JSON request per line from stdin,

    {"messages": ["hi", ...], "family": "KNH_ECHO", "no_attr": false}

("family" and "no_attr" optional), and answers each with one JSON line,

    {"status": 0, "replies": [{"msg": "hi", "reply": "hi"}, ...]}

where status and replies are the exit status and the lines the command form
would give for the same arguments. Each request opens its own socket and
resolves the family anew, so the module may come and go between requests.
This saves a Python start per request (seconds in a TCG guest). It stops at
the end of its input. (To send the one message "persistent" in the command
form, write `genl_echo_send.py -- persistent`.)

Standard output carries only ASCII JSON (plus the READY line); diagnostics go
to stderr.
"""

import argparse
import json
import sys

READY = "GENL_ECHO READY"
DEFAULT_FAMILY = "KNH_ECHO"


def _light_pyroute2() -> None:
    """Import pyroute2's netlink layer without its package __init__, which
    loads the whole API (hundreds of modules: many seconds in a TCG guest
    reading the interpreter's files over 9p)."""
    import importlib.util
    import types

    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import below says so
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    sys.modules["pyroute2"] = pkg


_light_pyroute2()

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.generic import GenericNetlinkSocket  # noqa: E402

GENL_ECHO_CMD_ECHO = 1
GENL_ECHO_VERSION = 1


class echomsg(genlmsg):
    """GENL_ECHO_ATTR_MSG (1) is a NUL-terminated string."""

    nla_map = (
        ("GENL_ECHO_ATTR_UNSPEC", "none"),
        ("GENL_ECHO_ATTR_MSG", "asciiz"),
    )


def echo(sock: GenericNetlinkSocket, text: "str | None") -> "dict[str, object]":
    msg = echomsg()
    msg["cmd"] = GENL_ECHO_CMD_ECHO
    msg["version"] = GENL_ECHO_VERSION
    if text is not None:
        msg["attrs"].append(["GENL_ECHO_ATTR_MSG", text])
    try:
        replies = list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
    except NetlinkError as e:
        return {"msg": text, "error": abs(e.code)}
    answers = [r.get_attr("GENL_ECHO_ATTR_MSG") for r in replies if r.get_attr("GENL_ECHO_ATTR_MSG") is not None]
    if len(answers) != 1:
        return {"msg": text, "error": -1, "detail": f"{len(answers)} replies"}
    return {"msg": text, "reply": answers[0]}


def exchange(family: str, messages: "list[str]", no_attr: bool) -> "tuple[int, list[dict[str, object]]]":
    """Resolve `family`, send one request per message: (exit status, one reply per request)."""
    sock = GenericNetlinkSocket()
    try:
        try:
            sock.bind(family, echomsg)
        except NetlinkError as e:
            print(f"generic netlink family {family} not found: {e}", file=sys.stderr, flush=True)
            return 2, [{"family": family, "error": abs(e.code)}]
        replies = [echo(sock, None if no_attr else text) for text in messages]
        return (1 if any("error" in r for r in replies) else 0), replies
    finally:
        sock.close()


def serve() -> int:
    """The persistent mode: one exchange per JSON line of stdin."""
    print(READY, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            status, replies = exchange(
                request.get("family", DEFAULT_FAMILY), list(request["messages"]), bool(request.get("no_attr"))
            )
            answer = {"status": status, "replies": replies}
        except Exception as e:  # keep serving; the host reports it
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)
    return 0


def main() -> int:
    if sys.argv[1:] == ["persistent"]:
        return serve()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default=DEFAULT_FAMILY, help="generic netlink family name (default KNH_ECHO)")
    parser.add_argument("--no-attr", action="store_true", help="send requests without GENL_ECHO_ATTR_MSG")
    parser.add_argument("messages", nargs="+", metavar="MSG")
    args = parser.parse_args()
    status, replies = exchange(args.family, args.messages, args.no_attr)
    for reply in replies:
        print(json.dumps(reply), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
