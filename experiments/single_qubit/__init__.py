"""Single-qubit characterisation experiments (the predecessor's module paths)."""
