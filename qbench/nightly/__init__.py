"""Nightly benchmarking: a suite of jobs (``suite``), each run by a worker process
(``runner``; the process itself is ``qbench.worker``, which sits above the tuner and backends),
tonight's plans timed against the previous night's in one process (``previous_run``), and the
fixed drift workload timed beside every plan to cancel the machine's drift (``drift``)."""
