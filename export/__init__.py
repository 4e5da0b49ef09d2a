"""Export: from a train/ checkpoint to a tinymm bundle (torch, onnx and onnxruntime.quantization).

``python -m export CHECKPOINT --out BUNDLE [--precision fp32,fp16,int8] [--data DIR] [--force]``
(see ``export.__main__``). The bundle layout the runtime relies on is documented in
export/LAYOUT.md.

Module map:

- onnx_common: one component to ONNX (exporter call, dynamic axes, opset, checks: no If nodes,
  onnx.checker), ComponentGraph and ExportError;
- onnx_vlm, onnx_speech: each family's components (wrapper modules, specs, example inputs), its
  manifest ``model`` object, and the real and random inputs that check it;
- parity: torch vs ONNX fp32 and KV-cache vs no-cache greedy decoding; ParityError;
- golden: golden pairs, their tolerances per precision, and checking a variant against them;
- bundle_build: the whole export, from checkpoint to a verified bundle;
- quantize, fp16, accuracy_gate, sensitivity: int8 and fp16 variants and the int8 gate;
- trt_rules, tensorrt_build: TensorRT engines on the device.

Nothing is imported here, so that ``import export`` stays cheap.
"""
