"""Correctness under load: concurrent clients checked against a model of the
namespace, and a chaos driver that kills server processes meanwhile.

* ``model``: the expected namespace (``Model``, ``Node``, ``Dir``) and the
  differences found;
* ``worker``: the clients (``Worker``), the operation mix, and ``CALLS``, the
  table of client calls one runner (``Worker.perform``) retries, settles and
  checks; ``Run``, what the clients of one run share;
* ``verify``: the tree compared with the model at the end;
* ``chaos``: kill -9 and restart of a launcher's processes (``Chaos``);
* ``linearizable``: a linearizability checker for recorded histories
  (``check``, the ``Register`` and ``Namespace`` models).

``dfs bench stress`` (dfs/bench/stress.py) runs them; the tests use the model
and the chaos driver directly (tests/unit/stress).

May import: dfs (the public client API) and dfs.common; never dfs.local, cli,
bench or testing (a cluster to kill is handed in).
"""
