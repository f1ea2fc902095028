"""The pipeline's cluster steps on Kubeflow: tuning as a Katib Experiment, training as a
Trainer TrainJob or a training-operator PyTorchJob, and the run's stage records kept in the
artifact store where the Kubeflow engine reads them.

The same components run on both engines (:mod:`mlcd.pipeline.steps` dispatches on the
``engine`` pipeline parameter); nothing here runs under the local engine."""
