"""Programs that run inside the guest, installed as ``harness.guest_scripts``.

Each ``.py`` file here is a script the guest runs with the host's Python
(``python3 guest_scripts/nl_send.py ...``); as a script its own directory is
``sys.path[0]``, so the scripts import one another as top-level modules
(``import nlframes``). The harness imports only :mod:`payload` from here, as
``harness.guest_scripts.payload``: it imports nothing, so both names work.
"""
