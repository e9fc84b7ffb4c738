"""``[core] hostname_callable`` of the Celery test's processes: each worker records its own name on the task
instances it runs (both workers share this machine, so the real hostname would not tell them apart)."""

import os
import socket


def hostname() -> str:
    return os.environ.get("SYNPREF_IT_HOSTNAME") or socket.getfqdn()
