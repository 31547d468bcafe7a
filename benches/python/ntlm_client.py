#!/usr/bin/env python3
"""Python's NTLM client for benches/ntlm.rs: requests + requests-ntlm (which runs pyspnego) against
the NTLM peer. Prints the CPU seconds of this process (time.process_time: user + system, all
threads) spent on N requests, after a warm-up, and nothing else on stdout.

    python ntlm_client.py URL N fresh    one session closed after each request: a new connection
                                         and NTLM handshake per request
    python ntlm_client.py URL N session  one session: the connection authenticated once, reused
"""

import sys
import time

import requests
from requests_ntlm import HttpNtlmAuth

URL, N, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
AUTH = HttpNtlmAuth("TOWERAUTH\\alice", "Passw0rd!")


def fresh(n, s):
    for _ in range(n):
        r = s.get(URL)
        assert r.status_code == 200, r.status_code
        r.content
        s.close()  # its connections: the next request opens one and authenticates it


def session(n, s):
    for _ in range(n):
        r = s.get(URL)
        assert r.status_code == 200, r.status_code
        r.content


s = requests.Session()
s.auth = AUTH
run = fresh if MODE == "fresh" else session
run(5, s)
t0 = time.process_time()
run(N, s)
print(f"{time.process_time() - t0:.6f}")
