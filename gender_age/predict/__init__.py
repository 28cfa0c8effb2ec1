"""Prediction: one interface (base) with a torch (torch_backend) and an ONNX (onnx_backend)
backend picked by loading, inputs, the decode-and-detect pool (workers), units and regions,
batched prediction (pipeline), records (records), annotation (annotate), and predict.py's CLI
(cli). Imports core, faces, data and nets, never train."""
