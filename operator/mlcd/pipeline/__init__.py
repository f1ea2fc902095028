"""The training pipeline: KFP v2 components and the stage logic they call."""
