"""Host tests of the bpftrace output parser and the trace lifecycle, on output captured in real guests.

The captures are `bpftrace -f json` standard output from Debian's bpftrace 0.17
in TCG guests (6.1.0-56 and 6.12.117), unedited.
"""

from __future__ import annotations

import base64
import gzip
import re
from pathlib import Path

import pytest

from harness.config import HarnessConfig, resolve
from harness.errors import BpfOutputError, BpfProcessError, ConfigError, EbpfError, EbpfUnavailable
from harness.guest import ebpf
from harness.guest.console import CommandResult
from harness.guest.ebpf import READY_MARKER, BpfRunner, resolve_program
from harness.kernel_log.bpftrace import Bucket, Histogram, Stats, parse_output
from harness.knetlink import ebpf as knetlink_ebpf
from harness.knetlink.ebpf import KnetlinkCounts, LatencyReport
from harness.pytest_plugin import ebpf_fixtures

# knetlink.bt on 6.1: 4 single messages, one datagram of 3, one frame whose nlmsg_len (100) exceeds the datagram.
KNETLINK_61 = """\
{"type": "attached_probes", "data": {"probes": 6}}
{"type": "printf", "data": "KNH-BPF-READY\\n"}


{"type": "map", "data": {"@ack": {"22": 1, "0": 7}}}
{"type": "map", "data": {"@handle_msg": 7}}
{"type": "map", "data": {"@rcv": 6}}
"""

# The same run against a copy of the module that skips every other ack (still prints every link: line).
KNETLINK_61_BROKEN = """\
{"type": "attached_probes", "data": {"probes": 6}}
{"type": "printf", "data": "KNH-BPF-READY\\n"}


{"type": "map", "data": {"@ack": {"0": 4}}}
{"type": "map", "data": {"@handle_msg": 7}}
{"type": "map", "data": {"@rcv": 6}}
"""

# An exploration program on 6.12: two-key map, keyed hist and stats, lhist with overflow, a hist of a
# negative value, avg/sum/min/max, a count() map that never fired, printf lines (gzip + base64: the
# lhist line is 1.2 kB long).
CAPTURE_612 = gzip.decompress(
    base64.b64decode(
        "H4sIAAAAAAACA9WVS4+bMBCA7/srEOdEwp4B4z21VVtVqlRVvVXtCnlZJ6CGh8CJGiH+e52QJsNWQ8494cdnzzAf2EPojq0NH4PQ"
        "OGfywr5kbdc82z5cBeGLccZPDeFl6DFQ4/gwXJe0XVm7DSHDz18+rd99/bj+9uHt++8/63CZrvptIHX6X3APhKxMOyvPG5P/ymzX"
        "1c25K6V/CA9E/hmPs5L1zrj+1eLD1jfkDPsnwvMxy5uqyvJ2Pxk5uqKpV8J3knmEouzdfG1BVvjmjyGsylNDRlqJWK5O4X77PgqN"
        "EIHv582+dn4ExlXwl55m8UqnkKZJpAgtCT3NpldaJEopKWKCi/HpXua7YpaviKLrhlJoPdvsFltKyskZF1EOKAc8h5RDnospF/Nc"
        "QrmE5xTlFM+llEt5TlNOs5wvy42DiOeoDxA8R30A7wOoD+B9APUBvA+gPoD3AdQHJOx3BdQH8D6A+gDeB1AfoNm4SH0g7wOpD+R9"
        "IPWBvA+kPpD3gdQH8j6Q+kDeB1IfyP8fSH0g7wOpD+R9IPWB/P8RTz5uh+TT8tl92fAONH0Sdw7E2m4vJ+J5z7UgeST38qjtwXbZ"
        "puz8JV9usrrJ+p217fntFhd2+WG6Z5Yvst7NL5rhlprnjA9utvZcv0QrfSqha5zZnQ8ZFKlCX6LlRPp9dUnkD4ZVo5u4CAAA"
    )
).decode()

# knetlink_latency.bt on 6.1 around py_sender.bench(100) (40 kB: the 10 us lhist prints every bucket
# between the first and last non-empty one), gzip + base64.
LATENCY_61 = gzip.decompress(
    base64.b64decode(
        "H4sIAAAAAAACA33dXatd13WH8Xt/CqPrBPZ8Gy+5SktbCoVSelfSYNTEaQyJY+KT0mD03asoTfRM2mfdWWdPby39xzpb+p255hg/"
        "vHv743dfv/vJl+/ev729/8Wvv/7lV9/9/nf/8fX373705btfvn97//GlH97975d+8uX+8OGLH/76v3z3+2++ffsVVr77p3/+xx//"
        "7b/8w4//9e//5u/+7d+/fffhiy+w/tfffP92ve9Pf/P+7atv//TGP/vh3W+/+fbjf8Q5Kz6u+e37//74q7HGK8fHX/7id3/49u3j"
        "F86HH335l6WfXpx/XTtjjr2wdk8s/vTq/uviM/esxOLBxZ9erc9X8dp18nD1dR2fXv580fPVOQ6veixeyaeXP1/3Hr3XixdeWP3n"
        "Vz9feK2qePHK+d5/fhVXHpk5x3XpvPI/v/z50tc6Z+91XfuHn19F//7t/dv3/7eKn77851r+8Pn/fb0+Lnz/X1///v1/fv0p5Kq9"
        "//RHf/vd2/vffP7KeH24fpP//075w3WnjPH6/OccLYmMiVWTq+Z1K2HV4qrmqo1Vu6Vi42DV4ap9RY9VwVUvrkqsSq4KriqsqrZv"
        "l8aqbrkl5uvFG9lWIfs5dBWyn1NXIfu5LK+J7Oe2Ok5kP4+lOpH91Ownsp+pV4/sZ+l7IfvZtmoh+/WyP+NC9mvoeyH7pdkvZL+W"
        "rkL2a+vviOyXZr+Q/dLsF7JfqauQ/Sq9emS/9L7fyH6/7NNkI/ut2W9kv6euQvZ76Spkv7dePbLfR1ch+63Zb2S/NfuN7Lfe9xvZ"
        "b73vD7I/L12F7I9mf5D90ewPsj+a/UH2R+/7g+yP3vcH2R/N/iD7o9kfZH80+4Psj2YfyD40+0D2odkHsg/NPpB9aPaB7EPv+0D2"
        "odkHsg/NPpB96Od9IPvQz5xA9qHZJ7JPzT6RfWr2iexTs09kn/p5n8g+9b5PZJ/6mZPIPjX7RPap930i+9T7PpF9avaF7Ev/ri1k"
        "X5p9IfvS7AvZl973hexLsy9kX5p9IfvS7AvZl2ZfyL40+0L2pdk3sm+97xvZt2bfyL713zmN7Fuzb2Tf+pnTyL71M6eRfYfdX43s"
        "W7NvZN+afSP71uw/kgwMeOm/8MeLvHoNX0dgvaavI7Fey6+PyHptX0dmvY6vI7Re4ddHar3S34/YepWvI7deXo/BeoyXr7u4O1Sy"
        "F3jH9PdjPYbX40Lv8Hpc7B1ejwu+D/K96Du8Hhd+h/6NPC7+Dq8HATym14MEHm7gMa8fQHg9yOAxvR6E8JheD1J4zOPXx3q4hgc5"
        "PKbXgyAeLuJBEg838SCKx/J6kMXDXTwI47G8Huv6kZDXgzgeruNBHg/38SCQhwt5kMjDjTyI5LG8HmTyWF4PQnlsrwepPNzKg1ge"
        "ruVBLg/38tjXD+n0b/FBMo/t9SCah6t5kM3D3TwI5+FyHqTzcDsP4nm4ngf5PNzPg4AeLuhBQg839CCihyt6nOvHpl4PQnq4pAcp"
        "PdzSg5gerulBTg/39CCoh4t6kNTDTT2I6uGqHmT1cFcPwnqE14O0Hm7rEdcPsr0e5PUIrweBPcLrQWKP0J/rDSJ7uLIHmT3c2YPQ"
        "Hi7tQWqP9HoQ2yP984rcHun1ILhHPuwsXFsLXg+ie6T/+4rsHun1ILxHeT1I7+H2HsT3cH0P8nu4vwcBPlzggwQf5fUgwocrfJDh"
        "wx0+6trs8e8PUny4xQcxPlzjgxwf7vFBkI/2epDkw00+iPLRXg+yfLjLB2E+2j1Img+3+SDOh+t89L39pjtFr2sDznfg6PP5Gv5+"
        "3IR7TV/HbTj3+aTPp/t80ufTfT7p8/ny3Tj6fLrPJ30+3eeTPp/u80mfT/f5HNeWqNeDPp/u80mfT/f5pM+n+3zS59N9Punz6T6f"
        "9Pl0n0/6fA6vB30+3efz2qB2n89ri3p6Pe5Naq/HtU3tPp/XRrX7fF5b1Q971ddm9cNu9bVd7T6f14b1w471tWXtPp/0+XSfT/p8"
        "us8nfT7d53Ndjw14Pejz6T6f9Pl0n0/6fLrPJ30+3eeTPp/u80mfT/f5pM+n+3zS59N9Punz6T6f9Pl0n899Pcjh9aDPp/t80ufT"
        "fT7p8+k+n/T5dJ9P+ny6zyd9Pt3nkz6f7vNJn0/3+aTPp/t80ufTfT7P9WiN14M+n+7zSZ9P9/mkz6f7fNLn030+6fPpPp/0+XSf"
        "T/p8hj/lRJ9P9/mkz6f7fNLnMx6edboedvJ60OfTfT7p8+k+n/T59D3wSZ9P9/mkz6f7fNLn030+6fPpPp/0+fTd8EmfT/f5pM9n"
        "Pjx9dj1+5vWgz6fvik/6fPq++KTPp/t80uez/BlA+ny6zyd9Pt3nkz6f7vNJn0/3+aTPZ4X/OVgP9/ms64FArwd9Pt3nkz6f7vNJ"
        "n0/3+aTPp/t80ufTfT7p8+k+n/T5dJ9P+ny2f3/Q59N9Punz2Q9PaN6PaD48o8mHNF++jo9pus8Xfb7c54s+X+7zRZ8v9/miz5f7"
        "fNHny32+6PPlPl/0+XKfL/p8uc8Xfb7c52tcj816Pejz5T5f9Plyny/6fLnPF32+3OeLPl/u80WfL/f5os+X+3zR58t9vujz5T5f"
        "9PmaD88xXw8yez3o8+U+X/T5cp8v+ny5zxd9vtzniz5f7vNFny/3+aLP18Mz5ddD5e7zdT1WvoY/Mc56uM/X/Wi51+N6uPzh6fLr"
        "8fJ1/PpYj4cnzK9HzB+eMb8eMnefr+sxc/f5os+X+3zR58t9vujz5T5f9Plyn699Pezv9aDPl/t80efLfb7o8+U+X/T5cp8v+ny5"
        "zxd9vtzniz5f7vNFny/3+aLPl/t80efrPJy+uI5feD3o8+U+X/T5cp8v+ny5zxd9vtzniz5f7vNFny/3+aLPl++fL/p8uc8Xfb7c"
        "54s+X/FwHuY6EOP1oM+X+3zR58t9vujz5T5f9Plyny/6fLnPF32+3OeLPl/u80WfL/f5os+X+3zR5ysfTihdR5S8HvT5cp8v+ny5"
        "zxd9vtzniz5fvn++6PPlPl/0+XKfL/p8uc8Xfb7c54s+X75/vujzVQ9nxq5DY14P+ny5zxd9vtzniz5f7f++os+X+3zR58t9vujz"
        "5T5f9Plyny/6fLnPF32+3OeLPl/u89X3MT49cfa6DvK9fB2P8rnPN32+3eebPt/u802fb/f5ps+3+3zT59t9vunz7T7f9Pl2n2/6"
        "fLvPN32+3ed7XEcr9ftj0+fbfb7p8z2Wvx/r4T7f9Pl2n2/6fLvPN32+3eebPt/u802fb/f5ps+3+3zT53s+nHW9Drt6PejzPb0e"
        "9Pl2n2/6fLvPN32+3eebPt/u802fb/f5ps+3+3zT59t9vunz7fvnmz7f6+H08XX82D+v6PPtPt/0+fb9802fb/f5ps+3+3zT59t9"
        "vunz7T7f10Fw9/m+joI/nAW/DoM/nAa/joM/nQe/DoR7Pa4j4e7zfR0KfzgVfh0LfzgXfh0MfzgZfh0Nd59v+ny7zzd9vt3nmz7f"
        "7vNNn2/3+abPt/t8n+uIvteDPt/u802fb/f5ps+3+3zT59t9vunz7T7f9Pl2n2/6fLvPN32+3eebPt/u802fb/f5jqtpgteDPt/u"
        "802fb/f5ps+3+3zT59t9vunz7T7f9Pl2n2/6fLvPN32+3eebPt/u802f73zoYnG1sfB60Ofbfb7p8+0+3/T5dp9v+ny7zzd9vt3n"
        "mz7f7vNNn2/3+abPt/t80+fbfb7p810PfUWuxiJeD/p8u883fb7d55s+375/vunz7T7f9Pl2n2/6fLvPN32+3eebPt/u802fb/f5"
        "ps93P3R6uVu9PPR6YbMX7/ZCnx/3+aHPj/v80OfHfX7o8+M+P/T5cZ8f+vy4zw99ftznhz4/7vNDnx/3+aHPz3jovnO13/F60OfH"
        "fX7o8+P754c+P+7zQ58f9/mhz4/7/NDnx31+6PPjPj/0+XGfH/r8uM8PfX7mQz+kqyGS14M+P75/fujz4z4/9Plxnx/6/LjPD31+"
        "3OeHPj/u80OfH/f5oc+P+/zQ58d9fujzsx46VF0tqrwe9Plxnx/6/LjPD31+3OeHPj/u80OfH/f5oc+P+/zQ58d9fujz4z4/9Plx"
        "nx/6/OyHnmFX0zCvB31+3OeHPj/u80OfH/f5oc+P+/zQ5+ehd9vVvO2he9vVvu2hf9vVwO2hg9vVwu2hh9vVxO2pi9vVxs3rcTVy"
        "e+jkdrVye+jldjVze+jmdrVzc58f+vy4zw99ftznhz4/7vNDnx/3+aHPj/v80OcnHvrqXY31vB70+XGfH/r8uM8PfX7c54c+P+7z"
        "Q58f9/mhz4/7/NDnx31+6PPjPj/0+XGfH/r85EOnw6vVodeDPj/u80OfH/f5oc+P+/zQ58d9fujz4z4/9Plxnx/6/LjPD31+3OeH"
        "Pj/u80Ofn3roPXk1n/R60OfHfX7o8+M+P/T5cZ8f+vy4zw99ftznhz4/7vNDnx/3+aHPj/v80OfHfX7o89MP3UDvdqAP/UDZENQ7"
        "gtLn4T4P+jzc50Gfh/s86PNwnwd9Hu7zoM/DfR70ebjPgz4P93nQ5+E+D/o8xkOH1qtFq9eDPg/3edDn4T4P+jzc50Gfh/s86PNw"
        "nwd9Hu7zoM/DfR70ebjPgz4P93nQ5zEfeuZeTXO9HvR5uM+DPg/3edDn4T4P+jzc50Gfh/s86PNwnwd9Hu7zoM/DfR70ebjPgz6P"
        "9dDF+Gpj7PWgz8N9HvR5uM+DPg/3edDn4T4P+jzc50Gfh/s86PNwnwd9Hu7zoM/DfR70eeyHvtJXY2mvB30e7vOgz8N9HvR5uM+D"
        "Pg/3edDn4T4P+jzc50Gfh/s86PNwnwd9Hu7zoM/DfR7navXt9aDPw30e9Hm4z4M+D/d50Ofx0G/9arj+0HH9arn+0HP9arr+0HX9"
        "arv+0Hf9arzuPo+r9fpT7/Wr+brX42q/7j6PqwG7+zyuFuzu86DPw30e9Hm4z4M+D/d50OfhPg/6PNznQZ+H+zzo88iHbvhXO3yv"
        "B30e7vOgz8N9HvR5uM+DPg/3edDn4T4P+jzc50Gfh/s86PNwnwd9Hu7zoM/DfR51DSjwetDn4T4P+jzc50Gfh/s86PNwnwd9Hu7z"
        "oM/DfR70ebjPgz4P93nQ5+E+D/o83OfR98iIh5kRHBrhUyPo83SfJ32e7vOkz9N9nvR5us+TPk/3edLn6T5P+jzd50mfp/s86fN0"
        "nyd9nuNhisc1xsPrQZ+n+zzp83SfJ32e7vOkz9N9nvR5us+TPk/3edLn6T5P+jzd50mfp/s86fOcD3NVrsEqXg/6PN3nSZ+n+zzp"
        "83SfJ32e7vOkz9N9nvR5us+TPk/3edLn6T5P+jzd50mf53qYdHONuvF60OfpPk/6PN3nSZ+n+zzp83SfJ32e7vOkz9N9nvR5us+T"
        "Pk/3edLn6T5P+jzd57mv4UNeD/o83edJn6f7POnzdJ8nfZ7u86TP032e9Hm6z5M+T/d50ufpPk/6PN3nSZ/neZgGdY2D8nrQ5+k+"
        "T/o83edJn6f7POnzdJ8nfZ7u86TP032e9Hm6z5M+T/d50ufpPk/6PN3nGdeALq8HfZ7u86TP032e9Hk+zEi7hqQ9TEm7xqQ9zEm7"
        "BqWl9uvLa1Sa+zyvYWkP09KucWnu87wGpj1NTLtGpnk9rqFpD1PTrrFp7vOkz9N9nvR5us+TPk/3edLn6T5P+jzd50mfp/s86fN0"
        "nyd9nvUww+4aYuf1oM/TfZ70ebrPkz5P93nS5+k+T/o83edJn6f7POnzdJ8nfZ7u86TP032e9Hn2w1TBe6zgw1xBDhZ8+TqOFnSf"
        "F31e7vOiz8t9XvR5uc+LPi/3edHn5T4v+rzc50Wfl/u86PNynxd9Xu7zGteoR68HfV7u86LPy31e9Hm5z4s+L/d50eflPi/6vNzn"
        "RZ+X+7zo83KfF31e7vOiz2s+zN68hm/q3+dFn5f7vOjzcp8XfV7u86LPy31e9Hm5z4s+L/d50eflPi/6vNznRZ+X+7zo81oP01Cv"
        "caheD/q83OdFn5f7vOjzcp8XfV7u86LPy31e9Hm5z4s+L/d50eflPi/6vNznRZ/XfphPew2o9XrQ5+U+L/q83OdFn5f7vOjzcp8X"
        "fV7u86LPy31e9Hm5z4s+L/d50eflPi/6vM7DxOBrZLDXgz4v93nR5+U+L/q83OdFn5f7vOjzcp8XfV7u86LPy31e9Hm5z4s+L/d5"
        "0eflPq+4hjh7Pejzcp8XfV7u86LPy31e9Hm5z4s+L/d50efl++dFn5f7vOjzcp8XfV7u86LPKx+mal9jtb0e9Hm5z4s+r4e55tdg"
        "c/d5XaPNH2abX8PNH6abX+PNH+abXwPOHyacXyPO3ed1DTl/mHJ+jTl/mnN+DTr3elyjzt3nRZ+X+7zo83KfF31e7vOiz8t9XvR5"
        "uc+LPi/3edHn5T4v+rzc50WfVz9Mnr9Hzz/MnufweZ8+T5+3+7zp83afN33e7vOmz9t93vR5u8+bPm/3edPn7T5v+rzd502ft/u8"
        "6fN2nzd93u7zps/bfd70ebvPmz5v93nT5+0+b/q83edNn7f7vOnzdp83fd7u86bP233e9Hm7z5s+b98/b/q83edNn7f7vOnzdp83"
        "fd7u86bP233e9Hm7z5s+b/d50+ftPm/6vN3nTZ+3+7zp83afN33e7vOmz9t93vR5u8+bPm/3edPn7T5v+rzd502ft/u86fN2nzd9"
        "3u7zps/bfd70ebvPmz5v93nT5+0+b/q83edNn7f7vOnzdp83fd7u86bP233e9Hm7z5s+b/d50+ftPm/6vN3nTZ+3+7zp83afN33e"
        "7vOmz9t93vR5u8+bPm/3edPn7T5v+rzd502ft/u86fN2nzd93u7zps/bfd70ebvPmz5v93nT5+0+b/q83edNn7f7vOnzdp83fd7u"
        "86bP233e9Hm7z5s+b/d50+ftPm/6vN3nTZ+3+7zp83afN33e7vOmz9t93vR5u8+bPm/3edPn7T5v+rzd502ft/u86fN2nzd93u7z"
        "ps/bfd70ebvPmz5v93nT5+0+b/q83edNn7f7vOnzdp83fd7u86bP233+kYOfCvKX1+aHn3/48MUP797++N3XH3/57tfffP/27uPr"
        "v3z/9v7jr39499PfvH/76g/ff/Wrb77904Kf4Y24Ffh6fXqj/wFGOyoa8JwAAA=="
    )
).decode()


# ---- parsing real output ------------------------------------------------------------


def test_knetlink_counts_from_real_output() -> None:
    results = parse_output(KNETLINK_61)
    assert results.attached_probes == 6
    assert results.printfs == (READY_MARKER + "\n",)
    assert KnetlinkCounts.from_results(results) == KnetlinkCounts(datagrams=6, messages=7, acks={0: 7, 22: 1})
    assert results.summary() == "@ack: {'22': 1, '0': 7}; @handle_msg: 7; @rcv: 6"


def test_broken_module_output_shows_missing_acks() -> None:
    seen = KnetlinkCounts.from_results(parse_output(KNETLINK_61_BROKEN))
    assert seen.messages == 7
    assert seen.acks == {0: 4}
    assert seen.acks_total < seen.messages


def test_every_record_kind_from_real_output() -> None:
    r = parse_output(CAPTURE_612)
    assert r.attached_probes == 7
    assert r.printfs[1:] == ("msg 298\n",) * 5
    assert r.int_keyed("ack_errno") == {0: 5, 22: 1}
    assert r.count("ack_errno") == 6
    assert r.count("ack_errno", 22) == 1
    assert r.keyed("by_comm_cpu") == {"python,1": 6}  # several keys are joined with ','
    assert (r.count("sum"), r.count("min"), r.count("max")) == (6, 3, 4)
    assert r.count("avg") == 2  # printed as a "stats" record holding a plain number
    assert r.count("never_fired_if_no_sleep", default=None) == 0
    assert r.stats["st"] == {"python": Stats(count=6, average=5069790, total=30418744)}

    keyed = r.hist("h", key="python")
    assert keyed.buckets[0] == Bucket(2097152, 4194303, 3)
    assert keyed.total == 6
    with pytest.raises(TypeError, match="keyed"):
        r.hist("h")

    lh = r.hist("lh")
    assert lh.buckets[0] == Bucket(2100, 2199, 1)
    assert lh.buckets[-1] == Bucket(5000, None, 3)  # overflow bucket: no upper bound
    assert lh.total == 6
    assert lh.count_above(4999) == 3
    assert lh.max_bound() is None
    assert lh.quantile(0.5) == pytest.approx(4000.0)  # 3rd of 6 samples: top of bucket [3900, 3999]
    assert lh.quantile(0.9) is None  # in the overflow bucket

    assert r.hist("neg").buckets == (Bucket(None, -1, 6),)  # the negative bucket has no lower bound


def test_latency_report_from_real_output() -> None:
    report = LatencyReport.from_results(parse_output(LATENCY_61))
    assert report.count == 100
    assert report.fine_us.buckets == (Bucket(100, None, 100),)  # all above the 1 us histogram's range
    assert report.coarse_us.total == 100
    assert report.stats_ns == Stats(count=100, average=1288442, total=128844210)
    assert report.mean_us == pytest.approx(1288.442)
    median = report.median_us
    assert median is not None
    # from the 10 us histogram: 48 samples below 300 us, 2 in [300, 309] -> the 50th ends that bucket
    assert report.coarse_us.quantile_bucket(0.5) == Bucket(300, 309, 2)
    assert median == pytest.approx(310.0)
    # the slowest two were above 10 ms (overflow of both linear histograms): from the log2 one
    assert report.coarse_us.quantile(1.0) is None
    assert report.quantile_us(1.0) == pytest.approx(33554.432)
    text = report.render()
    assert text.startswith("in-kernel knetlink_rcv latency (eBPF, 100 calls): median ")
    assert "[65536, 131071] ns" in text


def test_empty_output_gives_empty_results() -> None:
    r = parse_output("")
    assert r.count("rcv") == 0
    with pytest.raises(KeyError, match=r"no map @rcv .*maps printed: none"):
        r.count("rcv", default=None)
    assert r.hist("lat").total == 0
    assert LatencyReport.from_results(r).median_us is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Attaching 3 probes...", "line 1 is not JSON"),
        ('{"type": "map", "data": {"@x": "a"}}', "@x.*expected an integer"),
        ('{"data": 1}', "not a bpftrace JSON record"),
        ('{"type": "hist", "data": {"@h": [{"min": 1}]}}', "bad bucket"),
        ('{"type": "map", "data": [1, 2]}', "map record without a map"),
    ],
)
def test_malformed_output_is_a_clear_error(line: str, message: str) -> None:
    with pytest.raises(BpfOutputError, match=message):
        parse_output(line)


def test_unknown_record_kinds_are_kept() -> None:
    r = parse_output('{"type": "lost_events", "data": {"events": 3}}\n{"type": "time", "data": "12:00:00\\n"}')
    assert r.lost_events == 3
    assert r.other == ({"type": "time", "data": "12:00:00\n"},)
    assert "lost events: 3" in r.summary()


# ---- histogram arithmetic -----------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket() -> None:
    h = Histogram((Bucket(0, 9, 10), Bucket(10, 19, 10), Bucket(20, None, 0)))
    assert h.total == 20
    assert h.quantile(0.5) == pytest.approx(10.0)  # end of the first bucket
    assert h.quantile(0.75) == pytest.approx(15.0)
    assert h.quantile(1.0) == pytest.approx(20.0)
    assert h.max_bound() == 19
    with pytest.raises(ValueError):
        h.quantile(0)


def test_latency_prefers_the_finest_bounded_histogram() -> None:
    fine = Histogram((Bucket(3, 3, 10), Bucket(100, None, 0)))
    coarse = Histogram((Bucket(0, 9, 10),))
    log2 = Histogram((Bucket(2048, 4095, 10),))
    assert LatencyReport(log2, fine, coarse, None).median_us == pytest.approx(3.5)
    overflow = Histogram((Bucket(100, None, 10),))
    assert LatencyReport(log2, overflow, coarse, None).median_us == pytest.approx(5.0)
    assert LatencyReport(log2, overflow, overflow, None).median_us == pytest.approx(3.072)


# ---- programs ------------------------------------------------------------------------------


def test_shipped_programs_print_the_ready_marker() -> None:
    for name in ("knetlink", "knetlink_latency"):
        path = resolve_program(name)
        assert path.suffix == ".bt"
        assert READY_MARKER in path.read_text()


def test_program_errors(tmp_path: Path) -> None:
    with pytest.raises(EbpfError, match=r"not found.*programs in .*knetlink"):
        resolve_program("no_such_program")
    silent = tmp_path / "silent.bt"
    silent.write_text("kprobe:knetlink_rcv { @x = count(); }\n")
    with pytest.raises(EbpfError, match="cannot confirm attach"):
        resolve_program(silent)


# ---- lifecycle against a fake guest ----------------------------------------------------------

_START = re.compile(r"> (\S+\.out) 2> (\S+\.err) & echo \$! > (\S+\.pid); wait \$!; echo \$\? > (\S+\.rc)")


class FakeGuest:
    """Plays the guest shell: the bpftrace 'process' is a set of files in the shared directory."""

    def __init__(self, *, check_output: str = "RELEASE 6.1.0-56-amd64\n", attach: bool = True,
                 stdout_at_exit: str = KNETLINK_61, exit_status: int = 0, sigints_lost: int = 0,
                 clocksource: str = "tsc") -> None:  # fmt: skip
        self.alive = True
        self.sigints_lost = sigints_lost  # SIGINTs that set bpftrace's flag but interrupt nothing
        self.commands: list[str] = []
        self.check_output = check_output
        self.attach = attach
        self.stdout_at_exit = stdout_at_exit
        self.exit_status = exit_status
        self.files: dict[str, Path] = {}
        self.clocksource = clocksource

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        self.commands.append(command)
        if "command -v bpftrace" in command:
            return CommandResult(command, 0, self.check_output, 0.0)
        if command == f"cat {ebpf.CLOCKSOURCE}":
            return CommandResult(command, 0, self.clocksource + "\n", 0.0)
        m = _START.search(command)
        if m:
            out, err, pid, rc = (Path(g) for g in m.groups())
            self.files = {"out": out, "err": err, "rc": rc}
            pid.write_text("4242\n")
            if self.attach:
                out.write_text('{"type": "attached_probes", "data": {"probes": 6}}\n'
                               '{"type": "printf", "data": "KNH-BPF-READY\\n"}\n')  # fmt: skip
            else:
                err.write_text("ERROR: Error attaching probe: 'kprobe:knetlink_rcv'\n")
                rc.write_text("255\n")
        elif command.startswith("kill -INT 4242"):
            if self.sigints_lost > 0:
                self.sigints_lost -= 1
                return CommandResult(command, 0, "", 0.0)
            self.files["out"].write_text(self.stdout_at_exit)
            self.files["rc"].write_text(f"{self.exit_status}\n")
        elif command.startswith("kill -KILL 4242"):
            self.files["rc"].write_text("137\n")
        return CommandResult(command, 0, "", 0.0)


def _runner(guest: FakeGuest, tmp_path: Path, **kw: object) -> BpfRunner:
    return BpfRunner(guest, tmp_path, **kw)  # type: ignore[arg-type]


def test_start_waits_for_attach_and_stop_parses(tmp_path: Path) -> None:
    guest = FakeGuest()
    runner = _runner(guest, tmp_path)
    with runner.trace("knetlink") as t:
        assert t.pid == 4242 and t.running
        assert t.attach_s is not None
    assert t.results is not None
    assert KnetlinkCounts.from_results(t.results).acks == {0: 7, 22: 1}
    assert "command -v bpftrace" in guest.commands[0]
    assert "bpftrace -f json " in guest.commands[1] and guest.commands[1].startswith("( (")
    assert guest.commands[2] == "kill -INT 4242 2>/dev/null"
    assert list(tmp_path.iterdir()) == []  # files removed after a clean stop


def test_failure_to_attach_shows_bpftrace_stderr(tmp_path: Path) -> None:
    runner = _runner(FakeGuest(attach=False), tmp_path)
    with pytest.raises(BpfProcessError, match=r"(?s)exited with status 255 before attaching.*Error attaching probe"):
        runner.start("knetlink")


def test_attach_timeout_kills_the_program(tmp_path: Path) -> None:
    guest = FakeGuest()
    runner = _runner(guest, tmp_path, attach_timeout=0.3)
    original = guest.run

    def no_marker(command: str, **kw: object) -> CommandResult:
        result = original(command)
        if "bpftrace -f json" in command:
            guest.files["out"].write_text('{"type": "attached_probes", "data": {"probes": 6}}\n')
        return result

    guest.run = no_marker  # type: ignore[method-assign]
    with pytest.raises(BpfProcessError, match="not attached after 0 s"):
        runner.start("knetlink")
    assert any(c.startswith("kill -KILL 4242") for c in guest.commands)


def test_lost_sigint_is_sent_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bpftrace 0.17 misses a SIGINT that arrives between two epoll_wait() calls."""
    monkeypatch.setattr(ebpf, "SIGINT_RESEND_S", 0.2)
    guest = FakeGuest(sigints_lost=2)
    t = _runner(guest, tmp_path).start("knetlink")
    with pytest.warns(ebpf.BpfStopWarning, match="knetlink.bt stopped only after 3 SIGINTs"):
        results = t.stop()
    assert KnetlinkCounts.from_results(results).acks == {0: 7, 22: 1}
    assert t.sigints == 3
    assert [c for c in guest.commands if c.startswith("kill")] == ["kill -INT 4242 2>/dev/null"] * 3


def test_program_that_never_stops_is_killed_with_its_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ebpf, "SIGINT_RESEND_S", 0.2)
    guest = FakeGuest(sigints_lost=1000)
    t = _runner(guest, tmp_path).start("knetlink")
    with pytest.raises(BpfProcessError, match=r"(?s)still running 1 s after the first of \d+ SIGINTs \(killed\)"
                       r".*bpftrace process 4242 before the kill"):  # fmt: skip
        t.stop(timeout=1.0)
    assert any(c.startswith("grep -E '^(State") and "/proc/4242/stack" in c for c in guest.commands)
    assert guest.commands[-1].startswith("kill -KILL 4242")


def test_program_that_died_during_the_test_is_an_error(tmp_path: Path) -> None:
    guest = FakeGuest()
    runner = _runner(guest, tmp_path)
    t = runner.start("knetlink")
    guest.files["rc"].write_text("139\n")
    with pytest.raises(BpfProcessError, match=r"died while the test ran.*139"):
        t.stop()


def test_garbage_at_exit_is_a_parse_error_with_the_output(tmp_path: Path) -> None:
    runner = _runner(FakeGuest(stdout_at_exit="@rcv: 3\n"), tmp_path)
    t = runner.start("knetlink")
    with pytest.raises(BpfOutputError, match=r"(?s)not JSON.*--- bpftrace stdout"):
        t.stop()


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("NO-BPFTRACE\nRELEASE 6.1.0-56-amd64\n",
         r"bpftrace not found in the guest \(6.1.0-56-amd64\).*apt-get install bpftrace"),
        ("RELEASE 6.12.117+deb12-amd64\n",
         r"(?s)bpftrace does not run for the guest \(6.12.117\+deb12-amd64\).*status 127: .*libLLVM-14.*--reinstall"),
        ("NO-BPF-SYSCALL\nRELEASE 6.1.0-56-amd64\n",
         r"6.1.0-56-amd64 has no bpf\(\) system call.*CONFIG_BPF_SYSCALL"),
    ],
)  # fmt: skip
def test_unavailable_guest_gives_the_reason(tmp_path: Path, output: str, reason: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    host = "BPFTRACE-FAILS 127\nbpftrace: error while loading shared libraries: libLLVM-14.so.1\n"
    monkeypatch.setattr(ebpf, "host_bpftrace_failure", lambda: host if "NO-" not in output else "")
    runner = _runner(FakeGuest(check_output=output), tmp_path)
    assert runner.unavailable_reason() is not None
    with pytest.raises(EbpfUnavailable, match=reason):
        runner.start("knetlink")


def test_kernel_btf_is_not_required(tmp_path: Path) -> None:
    """The programs use kprobes: a kernel without /sys/kernel/btf/vmlinux runs them."""
    guest = FakeGuest(check_output="RELEASE 5.10.0-custom\n")
    runner = _runner(guest, tmp_path)
    assert runner.unavailable_reason() is None
    assert "btf" not in guest.commands[0].lower()
    with runner.trace("knetlink") as t:
        pass
    assert t.results is not None


def _config(**env: str) -> HarnessConfig:
    return resolve({}, environ=env)


@pytest.mark.parametrize(
    ("options", "environ", "ini", "required", "source"),
    [
        ({}, {}, {}, False, "default"),
        ({}, {"KNH_REQUIRE_EBPF": "1"}, {}, True, "environment variable KNH_REQUIRE_EBPF"),
        ({}, {}, {"knh_require_ebpf": "yes"}, True, "ini key knh_require_ebpf"),
        ({}, {"KNH_REQUIRE_EBPF": "0"}, {"knh_require_ebpf": "1"}, False, "environment variable KNH_REQUIRE_EBPF"),
        ({"require_ebpf": "1"}, {"KNH_REQUIRE_EBPF": "0"}, {}, True, "option --require-ebpf"),
    ],
)  # fmt: skip
def test_require_ebpf_setting_precedence(
    options: dict[str, str], environ: dict[str, str], ini: dict[str, str], required: bool, source: str
) -> None:
    cfg = resolve(options, environ=environ, ini=ini)
    assert cfg.require_ebpf is required
    assert cfg.sources["require_ebpf"] == source


def test_require_ebpf_bad_value_names_its_place() -> None:
    with pytest.raises(ConfigError, match=r"invalid require ebpf 'maybe' from environment variable KNH_REQUIRE_EBPF"):
        _config(KNH_REQUIRE_EBPF="maybe")


# Both outcomes are caught and the type checked afterwards: a skip escaping pytest.raises(fail.Exception)
# would turn the test itself into a skip instead of a failure.
OUTCOMES = (pytest.skip.Exception, pytest.fail.Exception)


def test_unavailable_guest_skips_the_test_by_default(tmp_path: Path) -> None:
    guest = FakeGuest(check_output="NO-BPFTRACE\nRELEASE 6.1.0-56-amd64\n")
    with pytest.raises(OUTCOMES) as outcome:
        ebpf_fixtures.available_runner(guest, tmp_path, _config())  # type: ignore[arg-type]
    assert outcome.type is pytest.skip.Exception, outcome.value
    assert re.match(r"eBPF observation unavailable: bpftrace not found.*with KNH_REQUIRE_EBPF=1 this is a failure",
                    str(outcome.value.msg))  # fmt: skip


def test_unavailable_guest_fails_the_test_when_ebpf_is_required(tmp_path: Path) -> None:
    guest = FakeGuest(check_output="NO-BPFTRACE\nRELEASE 6.1.0-56-amd64\n")
    with pytest.raises(OUTCOMES) as outcome:
        ebpf_fixtures.available_runner(guest, tmp_path, _config(KNH_REQUIRE_EBPF="1"))  # type: ignore[arg-type]
    assert outcome.type is pytest.fail.Exception, outcome.value
    assert outcome.value.pytrace is False  # the reason is the message, not a traceback into the harness
    assert re.match(r"eBPF observation is required \(KNH_REQUIRE_EBPF=1 from environment variable KNH_REQUIRE_EBPF\) "
                    r"but unavailable: bpftrace not found", str(outcome.value.msg))  # fmt: skip


@pytest.mark.parametrize("required", ["0", "1"])
def test_available_guest_gets_its_runner_either_way(tmp_path: Path, required: str) -> None:
    guest = FakeGuest()
    runner = ebpf_fixtures.available_runner(guest, tmp_path, _config(KNH_REQUIRE_EBPF=required))  # type: ignore[arg-type]
    assert runner.guest is guest
    assert ebpf_fixtures.available_runner(guest, tmp_path, _config()) is runner  # one runner (and one check) per guest
    assert sum("command -v bpftrace" in c for c in guest.commands) == 1


@pytest.mark.parametrize("clocksource", ["jiffies", "refined-jiffies"])
def test_tick_clock_cannot_time_the_handler(tmp_path: Path, clocksource: str) -> None:
    guest = FakeGuest(clocksource=clocksource)
    with pytest.raises(EbpfUnavailable, match=rf"clocksource is {clocksource} .*one timer tick"):
        knetlink_ebpf.measure_handler_latency(guest, tmp_path, lambda: None)  # type: ignore[arg-type]
    assert not any("bpftrace -f json" in c for c in guest.commands)  # nothing started


@pytest.mark.parametrize("clocksource", ["tsc", "kvm-clock", "hpet"])
def test_fine_clock_times_the_handler(tmp_path: Path, clocksource: str) -> None:
    latency = """\
{"type": "printf", "data": "KNH-BPF-READY\\n"}
{"type": "hist", "data": {"@lat_ns": [{"min": 4096, "max": 8191, "count": 3}]}}
{"type": "hist", "data": {"@lat_us_fine": [{"min": 7, "max": 7, "count": 3}]}}
"""
    guest = FakeGuest(clocksource=clocksource, stdout_at_exit=latency)
    report = knetlink_ebpf.measure_handler_latency(guest, tmp_path, lambda: None)  # type: ignore[arg-type]
    assert report.count == 3 and report.median_us == pytest.approx(7.5)


# ---- CI requires eBPF ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_ci_entry_points_require_ebpf() -> None:
    """tox -e kernel, .ci/run and the GitHub kernel job make an eBPF test that cannot run a failure."""
    import configparser

    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    setenv = dict(
        (k.strip(), v.strip()) for k, _, v in
        (ln.partition("=") for ln in tox["testenv:kernel"]["setenv"].splitlines() if "=" in ln)
    )  # fmt: skip
    assert setenv.get("KNH_REQUIRE_EBPF") == "{env:KNH_REQUIRE_EBPF:1}", setenv
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export KNH_REQUIRE_EBPF=1$", ci_run, re.M), ci_run
    workflow = (ROOT / ".github" / "workflows" / "kernel.yml").read_text()
    kernel_job = workflow[workflow.index("\n  kernel:") :]
    env_block = kernel_job[kernel_job.index("\n    env:") : kernel_job.index("\n    steps:")]
    assert re.search(r'^      KNH_REQUIRE_EBPF: "1"$', env_block, re.M), env_block


def test_bpftrace_runs_once_on_the_host_not_in_the_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest runs the host's bpftrace: its --version (3-5 s under TCG in the guest) is asked on the host."""
    fake = tmp_path / "bin" / "bpftrace"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'error while loading shared libraries: libLLVM-14.so.1' >&2\nexit 127\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    ebpf.host_bpftrace_failure.cache_clear()
    try:
        said = "error while loading shared libraries: libLLVM-14.so.1"
        assert ebpf.host_bpftrace_failure() == f"BPFTRACE-FAILS 127\n{said}\n"
        monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
        ebpf.host_bpftrace_failure.cache_clear()
        assert ebpf.host_bpftrace_failure() == ""  # the guest's `command -v bpftrace` says it is missing
    finally:
        ebpf.host_bpftrace_failure.cache_clear()
    guest = FakeGuest()
    _runner(guest, tmp_path).unavailable_reason()
    assert "--version" not in guest.commands[0]
