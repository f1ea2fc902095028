"""Where the pipeline runs: ``local`` (this machine, kfp.local) or, later, ``kubeflow``."""
