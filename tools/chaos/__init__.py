"""``python -m tools.chaos``: a fault checker for wshub's delivery promises.

It starts real ``wshub serve`` processes (one on SQLite; three on a throwaway ``redis-server``
with ``appendfsync always``), drives them with concurrent publishers, direct messages, steady,
resuming and stalled subscribers (raw ``websockets`` clients and the ``wshub.client`` SDK), kills
nodes and Redis with SIGKILL, and then accounts for every acknowledged message: lost, duplicated,
reordered, acknowledged but not stored, and live gaps. See ``docs/guarantees.md``.

It lives in ``tools/``: not in ``src/wshub`` (nothing of it ships), and not only under
``tests/``, because it is a program with its own command line and a long run (``make chaos``);
``tests/chaos/`` runs its short version as part of ``make test``.

Everything is on 127.0.0.1, bounded in time and messages, and only processes the checker started
itself are signalled, by their PID.
"""
