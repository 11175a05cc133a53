"""The clock: an APScheduler process that only enqueues periodic work (daily metrics, sweeps,
purges; A/B evaluation next). Workers do the work, so it is retried like any job.

`clock` holds the periodic tasks as plain functions of "now" (tested with a controllable clock),
`claims` makes each (task, period) run once whatever the number of scheduler processes, `cli`
wires them to APScheduler as `onnxq scheduler`.
"""
