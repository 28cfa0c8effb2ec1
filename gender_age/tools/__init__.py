"""Tools over trained models: export to ONNX and torch.export (export), and ensembles of
networks (ensemble). Imports predict and the layers below, never train."""
