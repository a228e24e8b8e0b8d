"""Experiments labd may run. Only packages listed in the daemon's ``allowed_packages``
(default: this one) can be imported by a job."""
