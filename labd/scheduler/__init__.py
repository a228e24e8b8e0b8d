"""The scheduler, split along its seams: ``states`` (typed states and the one transition
setter), ``admission`` (what waits and why), ``dispatcher`` (claim -> run -> finish),
``estimates`` (ETAs), ``policy`` (who may do what) and ``core`` (the facade the RPC methods
use). Import ``labd.scheduler.core.Scheduler``; this package file stays empty so that
``states`` can be imported without the rest."""
